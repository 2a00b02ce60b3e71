/**
 * Plain greedy decode tok/s and time to first token by prompt length, onnxruntime-node's run
 * (every fetched output copied back, the KV cache included) against the native runner (outputs in
 * place), in one process, interleaved, median of 3; outputs must be identical.
 *
 *   npm run build && node dist/bench/native-run-bench.js [--threads 2] [--lengths 64,256,1024,2048] [--tokens 64]
 *
 * Writes bench/results/cpu<threads>-native-run.json.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { createEngine } from '../src/engine/create-engine.js';
import type { Engine } from '../src/engine/engine.js';
import { type GenerationFinal, NO_SPECULATION } from '../src/contract.js';
import { projectRoot } from '../src/paths.js';
import { ensureDefaultModel } from '../src/registry/model-cache.js';

const { values } = parseArgs({
  options: {
    threads: { type: 'string', default: '2' },
    lengths: { type: 'string', default: '64,256,1024,2048' },
    tokens: { type: 'string', default: '64' },
  },
});
const threads = Number(values.threads);
const newTokens = Number(values.tokens);
const root = projectRoot();
const dir = await ensureDefaultModel();
const engines = {
  'onnxruntime-node': await createEngine(
    dir,
    { executionProvider: 'cpu', intraOpThreads: threads, kvCapacity: 4096, nativeRun: 'off' },
    { forwardCost: { mode: 'defer' } },
  ),
  native: await createEngine(
    dir,
    { executionProvider: 'cpu', intraOpThreads: threads, kvCapacity: 4096 },
    { forwardCost: { mode: 'defer' } },
  ),
};
if (engines.native.info.runner !== 'native')
  throw new Error('the native runner is not built (npm run build; scripts/build-native.mjs says why)');
// A long text from the bench prompts, cut to each length (no chat template: lengths exact).
const text = ['summarization', 'document-qa', 'code-editing']
  .flatMap((c) =>
    (JSON.parse(readFileSync(join(root, 'bench', 'prompts', `${c}.json`), 'utf8')) as { prompt: string }[]).map(
      (p) => p.prompt,
    ),
  )
  .join('\n\n');
const allTokens = engines.native.tokenizePrompt({ kind: 'text', text, chat: false });

async function decode(engine: Engine, prompt: number[]): Promise<{ tokens: number[]; final: GenerationFinal }> {
  const tokens: number[] = [];
  let final: GenerationFinal | undefined;
  for await (const e of engine.generate({
    prompt: { kind: 'tokens', tokenIds: prompt },
    maxNewTokens: newTokens,
    ignoreEos: true,
    speculation: NO_SPECULATION,
  })) {
    if (e.type === 'delta') tokens.push(...e.tokenIds);
    else final = e;
  }
  return { tokens, final: final! };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const rows = [];
for (const length of values.lengths.split(',').map(Number)) {
  const prompt = allTokens.slice(0, length);
  const runs: Record<string, { decodeTokS: number[]; ttftMs: number[] }> = {
    'onnxruntime-node': { decodeTokS: [], ttftMs: [] },
    native: { decodeTokS: [], ttftMs: [] },
  };
  let reference: string | undefined;
  let identical = true;
  for (let rep = 0; rep < 3; rep++) {
    for (const [name, engine] of Object.entries(engines)) {
      const { tokens, final } = await decode(engine, prompt);
      runs[name]!.decodeTokS.push((newTokens - 1) / ((final.totalMs - final.firstTokenMs) / 1000));
      runs[name]!.ttftMs.push(final.firstTokenMs);
      reference ??= tokens.join();
      identical &&= reference === tokens.join();
    }
  }
  const js = median(runs['onnxruntime-node']!.decodeTokS);
  const native = median(runs['native']!.decodeTokS);
  const row = {
    promptTokens: prompt.length,
    decodeTokS: { onnxruntimeNode: +js.toFixed(1), native: +native.toFixed(1), ratio: +(native / js).toFixed(2) },
    ttftMs: {
      onnxruntimeNode: Math.round(median(runs['onnxruntime-node']!.ttftMs)),
      native: Math.round(median(runs['native']!.ttftMs)),
    },
    identicalOutputs: identical,
    runs,
  };
  rows.push(row);
  process.stderr.write(`${length} tokens: ${JSON.stringify({ ...row, runs: undefined })}\n`);
}
for (const e of Object.values(engines)) await e.dispose();
const out = join(root, 'bench', 'results', `cpu${threads}-native-run.json`);
writeFileSync(
  out,
  `${JSON.stringify({ benchmark: 'native-run', date: new Date().toISOString(), threads, newTokens, command: `node dist/bench/native-run-bench.js --threads ${threads} --lengths ${values.lengths} --tokens ${newTokens}`, rows }, null, 1)}\n`,
);
process.stderr.write(`wrote ${out}\n`);
