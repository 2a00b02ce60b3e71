/**
 * node-llama-cpp as a long-lived peer process for bench/peers.ts: the same JSON-lines protocol as
 * peer_server.py (one request per line on stdin, one reply per line on stdout; a "ready" line once
 * the model is loaded and warmed up). node-llama-cpp is installed by bench/peers/setup.sh into
 * <peers dir>/node-llama-cpp with its prebuilt linux-x64 CPU binary only.
 *
 *   node node-llama-cpp-peer.mjs --package DIR --gguf PATH --threads 2 --mode plain|lookup [--n-ctx 4096]
 *
 * Greedy (temperature 0) decoding of the given prompt ids through LlamaContextSequence.evaluate;
 * lookup mode gives the sequence an InputLookupTokenPredictor (node-llama-cpp's prompt lookup)
 * with its default settings.
 */
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: {
    package: { type: 'string' },
    gguf: { type: 'string' },
    threads: { type: 'string', default: '2' },
    mode: { type: 'string', default: 'plain' },
    'n-ctx': { type: 'string', default: '4096' },
  },
});
const log = (msg) => process.stderr.write(`[node-llama-cpp peer] ${msg}\n`);
if (!values.package || !values.gguf || !['plain', 'lookup'].includes(values.mode)) {
  log('usage: --package DIR --gguf PATH --threads N --mode plain|lookup');
  process.exit(2);
}
const pkgDir = join(values.package, 'node_modules', 'node-llama-cpp');
const { getLlama, InputLookupTokenPredictor } = await import(pathToFileURL(join(pkgDir, 'dist', 'index.js')).href);
const threads = Number(values.threads);

// The CPU prebuilt binary only: no GPU, no build from source, no download at run time.
const llama = await getLlama({
  gpu: false,
  build: 'never',
  usePrebuiltBinaries: true,
  skipDownload: true,
  maxThreads: threads,
  logLevel: 'error',
});
const model = await llama.loadModel({ modelPath: values.gguf, gpuLayers: 0 });
const context = await model.createContext({
  contextSize: Number(values['n-ctx']),
  sequences: 1,
  threads: { ideal: threads, min: threads },
});
const predictor = values.mode === 'lookup' ? new InputLookupTokenPredictor() : undefined;
const sequence = context.getSequence(predictor ? { tokenPredictor: predictor } : undefined);

async function generate(promptIds, maxNewTokens, eosIds) {
  await sequence.clearHistory();
  // The predictor looks drafts up in its "input" (LlamaChatSession gives it the user's message):
  // here the whole templated prompt, as prompt lookup does.
  predictor?.updateInputTokens(promptIds);
  const before = { ...sequence.tokenPredictions };
  const eos = new Set(eosIds);
  const tokens = [];
  const t0 = performance.now();
  let ttft;
  for await (const token of sequence.evaluate(promptIds, { temperature: 0 })) {
    ttft ??= performance.now() - t0;
    if (eos.has(token)) break;
    tokens.push(token);
    if (tokens.length >= maxNewTokens) break;
  }
  const totalMs = performance.now() - t0;
  const used = sequence.tokenPredictions.used - before.used;
  // Each model call yields one sampled token plus the predictions it validated and we consumed.
  return {
    tokens,
    ttftMs: ttft ?? totalMs,
    totalMs,
    firstChunkTokens: 1,
    modelCalls: Math.max(1, tokens.length - used),
    predictions: {
      used,
      validated: sequence.tokenPredictions.validated - before.validated,
      refuted: sequence.tokenPredictions.refuted - before.refuted,
    },
  };
}

const version = JSON.parse(readFileSync(join(pkgDir, 'package.json'), 'utf8')).version;
await generate(model.tokenize('Warm-up: the quick brown fox jumps over the lazy dog.'), 8, []);
process.stdout.write(
  `${JSON.stringify({
    ready: true,
    versions: {
      'node-llama-cpp': version,
      llamaCppRelease: llama.llamaCppRelease?.release ?? null,
      gpu: llama.gpu,
      buildType: llama.buildType ?? null,
    },
    settings: {
      mode: values.mode,
      threads,
      contextSize: context.contextSize,
      tokenPredictor: predictor ? 'InputLookupTokenPredictor (defaults)' : null,
      temperature: 0,
    },
  })}\n`,
);

const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  if (!line.trim()) continue;
  try {
    const req = JSON.parse(line);
    process.stdout.write(`${JSON.stringify(await generate(req.promptIds, req.maxNewTokens, req.eosIds ?? []))}\n`);
  } catch (e) {
    process.stdout.write(`${JSON.stringify({ error: String(e?.stack ?? e) })}\n`);
  }
}
await context.dispose();
await model.dispose();
await llama.dispose();
