/**
 * Structured output (issue 31): extraction-to-JSON and classification-to-enum prompts
 * (bench/prompts/structured.json), time per request and decode tok/s, free text against a JSON
 * schema, plain against ANPD against ANPD with the grammar's forced text drafted; every constrained
 * output validated (ajv) and the constrained modes checked token for token against constrained plain;
 * the constraint's cost per token (mask + masked pick + accept) against a plain decode step; and,
 * with --llama-bin, llama.cpp's llama-server on the same prompts and schemas (`json_schema`), greedy,
 * on the same threads.
 *   npm run bench:structured -- [--reps 3] [--llama-bin DIR --gguf FILE] [--out bench/results/structured.json]
 */
import { spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { availableParallelism, cpus } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Ajv } from 'ajv';
import { grammarCompilerFor } from '../src/constrain/grammar.js';
import {
  DEFAULT_SPECULATION,
  type GenerationFinal,
  NO_SPECULATION,
  type ResponseFormat,
  type SpeculationOptions,
} from '../src/contract.js';
import { createEngine } from '../src/engine/create-engine.js';
import type { Engine } from '../src/engine/engine.js';
import { projectRoot } from '../src/paths.js';
import { ensureDefaultModel } from '../src/registry/model-cache.js';
import { maskedArgmax } from '../src/sampling/sampler.js';
import { loadTokenizer, type TextTokenizer } from '../src/tokenizer/tokenizer.js';

interface StructuredPrompt {
  readonly id: string;
  readonly prompt: string;
  readonly schema: Record<string, unknown>;
}

const MODES = ['free-plain', 'free-anpd', 'json-plain', 'json-anpd', 'json-anpd-forced'] as const;
type Mode = (typeof MODES)[number];

const SPEC: Record<Mode, SpeculationOptions> = {
  'free-plain': NO_SPECULATION,
  'free-anpd': DEFAULT_SPECULATION,
  'json-plain': NO_SPECULATION,
  'json-anpd': { ...DEFAULT_SPECULATION, forcedDrafts: false },
  'json-anpd-forced': DEFAULT_SPECULATION,
};

interface Run {
  tokens: number[];
  text: string;
  ms: number;
  final: GenerationFinal;
}

async function run(
  engine: Engine,
  prompt: string,
  speculation: SpeculationOptions,
  maxNewTokens: number,
  responseFormat?: ResponseFormat,
): Promise<Run> {
  const t0 = performance.now();
  const tokens: number[] = [];
  let text = '';
  let final: GenerationFinal | undefined;
  for await (const e of engine.generate({
    prompt: { kind: 'text', text: prompt, chat: true },
    maxNewTokens,
    speculation,
    ...(responseFormat !== undefined ? { responseFormat } : {}),
  })) {
    if (e.type === 'delta') {
      tokens.push(...e.tokenIds);
      text += e.text;
    } else final = e;
  }
  return { tokens, text, ms: performance.now() - t0, final: final! };
}

const median = (xs: readonly number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const percentile = (xs: readonly number[], q: number) =>
  [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(q * xs.length))]!;

/** The constraint's host cost per output token: mask, masked pick over a logits row, accept (replaying constrained plain's tokens). */
async function maskCostUs(
  tokenizer: TextTokenizer,
  vocabSize: number,
  eosTokenIds: readonly number[],
  format: ResponseFormat,
  tokens: readonly number[],
): Promise<number[]> {
  const compiler = await grammarCompilerFor(tokenizer, vocabSize, eosTokenIds);
  const matcher = await (await compiler.compile(format)).matcher();
  const logits = new Float32Array(vocabSize).map((_, i) => Math.sin(i * 12.9898) * 10);
  const us: number[] = [];
  try {
    for (const t of tokens) {
      const t0 = performance.now();
      const mask = await matcher.nextTokenMask();
      maskedArgmax(logits, 0, vocabSize, mask);
      matcher.accept(t);
      us.push((performance.now() - t0) * 1000);
    }
  } finally {
    matcher.dispose();
  }
  return us;
}

interface LlamaResult {
  ms: number;
  tokens: number;
  decodeTokPerS: number;
  text: string;
}

async function startLlamaServer(bin: string, gguf: string, threads: number, port: number): Promise<() => void> {
  const child = spawn(
    join(bin, 'llama-server'),
    ['-m', gguf, '-t', String(threads), '--port', String(port), '-c', '4096', '-np', '1', '--no-webui'],
    { stdio: 'ignore' },
  );
  const deadline = Date.now() + 120_000;
  for (;;) {
    try {
      if ((await fetch(`http://127.0.0.1:${port}/health`)).ok) break;
    } catch {
      // not up yet
    }
    if (child.exitCode !== null) throw new Error(`llama-server exited with ${child.exitCode}`);
    if (Date.now() > deadline) throw new Error('llama-server not healthy in 120 s');
    await new Promise((r) => setTimeout(r, 200));
  }
  return () => child.kill('SIGTERM');
}

async function llamaCompletion(
  port: number,
  prompt: string,
  maxNewTokens: number,
  schema: Record<string, unknown> | undefined,
): Promise<LlamaResult> {
  const t0 = performance.now();
  const response = await fetch(`http://127.0.0.1:${port}/completion`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      prompt,
      n_predict: maxNewTokens,
      temperature: 0,
      top_k: 1,
      cache_prompt: false,
      ...(schema !== undefined ? { json_schema: schema } : {}),
    }),
  });
  const body = (await response.json()) as {
    content: string;
    timings: { predicted_n: number; predicted_per_second: number };
  };
  return {
    ms: performance.now() - t0,
    tokens: body.timings.predicted_n,
    decodeTokPerS: body.timings.predicted_per_second,
    text: body.content,
  };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      reps: { type: 'string', default: '3' },
      'max-new-tokens': { type: 'string', default: '384' },
      'llama-bin': { type: 'string' },
      gguf: { type: 'string' },
      port: { type: 'string', default: '8399' },
      // Also the constraint's cost at another model's vocabulary (e.g. Gemma 3's 262k): its tokenizer re-encodes constrained plain's outputs.
      'mask-model': { type: 'string', multiple: true },
      out: { type: 'string' },
    },
  });
  const reps = Number(values.reps);
  const maxNewTokens = Number(values['max-new-tokens']);
  const threads = availableParallelism();
  const sets = JSON.parse(readFileSync(join(projectRoot(), 'bench', 'prompts', 'structured.json'), 'utf8')) as Record<
    string,
    StructuredPrompt[]
  >;
  const engine = await createEngine(await ensureDefaultModel(), {
    executionProvider: 'cpu',
    intraOpThreads: threads,
    kvCapacity: 4096,
  });
  const log = (line: string) => process.stderr.write(`[structured] ${line}\n`);
  const ajv = new Ajv({ strict: false });
  // Warm-up: lazy allocations, the grammar compiler (its first compile is slower).
  await run(engine, 'Hello', NO_SPECULATION, 8);
  await run(engine, 'Hello', DEFAULT_SPECULATION, 8, { type: 'json_object' });

  const rows: Record<string, unknown>[] = [];
  const summary: Record<string, Record<string, unknown>> = {};
  const speedupOverConstrainedPlain: Record<string, unknown> = {};
  let invalid = 0;
  let mismatches = 0;
  const maskUs: number[] = [];
  const replays: { format: ResponseFormat; text: string }[] = [];
  const plainStepMs: number[] = [];
  for (const [category, prompts] of Object.entries(sets)) {
    const perMode: Record<Mode, { ms: number[]; tokens: number; decodeMs: number; rounds: number }> =
      Object.fromEntries(MODES.map((m) => [m, { ms: [], tokens: 0, decodeMs: 0, rounds: 0 }])) as never;
    for (const p of prompts) {
      const format: ResponseFormat = { type: 'json_schema', schema: JSON.stringify(p.schema) };
      const validate = ajv.compile(p.schema);
      let reference: string | undefined;
      for (const mode of MODES) {
        const constrained = mode.startsWith('json');
        const times: number[] = [];
        let last: Run | undefined;
        for (let r = 0; r < reps; r++) {
          last = await run(engine, p.prompt, SPEC[mode], maxNewTokens, constrained ? format : undefined);
          times.push(last.ms);
        }
        const out = last!;
        const key = out.tokens.join(',');
        let valid: boolean | undefined;
        if (constrained) {
          reference ??= key;
          if (key !== reference) {
            mismatches++;
            log(`MISMATCH ${p.id} ${mode}`);
          }
          try {
            valid = out.final.finishReason === 'eos_token' && validate(JSON.parse(out.text)) === true;
          } catch {
            valid = false;
          }
          if (!valid) {
            invalid++;
            log(`INVALID ${p.id} ${mode} (${out.final.finishReason}): ${out.text}`);
          }
        }
        const decodeMs = out.final.totalMs - out.final.prefillMs;
        if (mode === 'free-plain') plainStepMs.push(decodeMs / Math.max(1, out.tokens.length));
        if (mode === 'json-plain') {
          const info = engine.info;
          maskUs.push(...(await maskCostUs(engine.tokenizer, info.vocabSize, info.eosTokenIds, format, out.tokens)));
          if (out.final.finishReason === 'eos_token') replays.push({ format, text: out.text });
        }
        const m = perMode[mode];
        m.ms.push(median(times));
        m.tokens += out.tokens.length;
        m.decodeMs += decodeMs;
        m.rounds += out.final.stats.rounds;
        rows.push({
          id: p.id,
          mode,
          msMedian: +median(times).toFixed(1),
          tokens: out.tokens.length,
          rounds: out.final.stats.rounds,
          draftTokens: out.final.stats.draftTokensProposed,
          accepted: out.final.stats.draftTokensAccepted,
          finishReason: out.final.finishReason,
          ...(valid !== undefined ? { valid } : {}),
        });
      }
      log(`${p.id}: ${MODES.map((m) => `${m} ${perMode[m].ms.at(-1)!.toFixed(0)} ms`).join(', ')}`);
    }
    // Per prompt, constrained plain's time over each constrained ANPD mode's (medians of the reps), then their median and geometric mean.
    const speedups = (mode: Mode) => {
      const ratios = perMode['json-plain'].ms.map((ms, i) => ms / perMode[mode].ms[i]!);
      return {
        median: +median(ratios).toFixed(2),
        geometricMean: +Math.exp(ratios.reduce((a, r) => a + Math.log(r), 0) / ratios.length).toFixed(2),
      };
    };
    speedupOverConstrainedPlain[category] = {
      'json-anpd': speedups('json-anpd'),
      'json-anpd-forced': speedups('json-anpd-forced'),
    };
    summary[category] = Object.fromEntries(
      MODES.map((m) => {
        const x = perMode[m];
        return [
          m,
          {
            msPerRequestMedian: +median(x.ms).toFixed(1),
            msPerRequestMean: +(x.ms.reduce((a, b) => a + b, 0) / x.ms.length).toFixed(1),
            decodeTokPerS: +((1000 * x.tokens) / x.decodeMs).toFixed(1),
            tokensPerRound: +(x.tokens / x.rounds).toFixed(2),
          },
        ];
      }),
    );
  }
  const mask = {
    medianUs: +median(maskUs).toFixed(1),
    p90Us: +percentile(maskUs, 0.9).toFixed(1),
    samples: maskUs.length,
  };
  const stepMs = median(plainStepMs);
  log(
    `constraint cost per token: median ${mask.medianUs} µs, p90 ${mask.p90Us} µs; plain decode step ${stepMs.toFixed(2)} ms`,
  );

  const otherVocabularies: Record<string, unknown> = {};
  for (const dir of values['mask-model'] ?? []) {
    const tokenizer = loadTokenizer(dir);
    const manifest = JSON.parse(readFileSync(join(dir, 'anpd-model.json'), 'utf8')) as {
      vocab: number;
      eosTokenIds?: number[];
      eosTokenId?: number;
    };
    const eos = manifest.eosTokenIds ?? (manifest.eosTokenId !== undefined ? [manifest.eosTokenId] : []);
    const us: number[] = [];
    for (const r of replays)
      us.push(
        ...(await maskCostUs(
          tokenizer,
          manifest.vocab,
          eos,
          r.format,
          tokenizer.encode(r.text, { addSpecialTokens: false }),
        )),
      );
    otherVocabularies[dir] = {
      vocab: manifest.vocab,
      medianUs: +median(us).toFixed(1),
      p90Us: +percentile(us, 0.9).toFixed(1),
      samples: us.length,
    };
    log(`constraint cost per token at ${manifest.vocab} tokens (${dir}): ${JSON.stringify(otherVocabularies[dir])}`);
  }

  let llama: Record<string, unknown> | undefined;
  if (values['llama-bin'] !== undefined) {
    if (values.gguf === undefined) throw new Error('--llama-bin needs --gguf');
    const port = Number(values.port);
    const stop = await startLlamaServer(values['llama-bin'], values.gguf, threads, port);
    try {
      llama = {};
      let llamaInvalid = 0;
      for (const [category, prompts] of Object.entries(sets)) {
        const free: number[] = [];
        const json: number[] = [];
        let jsonTokens = 0;
        let jsonDecodeS = 0;
        for (const p of prompts) {
          const rendered = engine.tokenizer.applyChatTemplate([{ role: 'user', content: p.prompt }]);
          await llamaCompletion(port, rendered, 8, undefined); // warm
          const validate = ajv.compile(p.schema);
          const ft: number[] = [];
          const jt: number[] = [];
          let last: LlamaResult | undefined;
          for (let r = 0; r < reps; r++) {
            ft.push((await llamaCompletion(port, rendered, maxNewTokens, undefined)).ms);
            last = await llamaCompletion(port, rendered, maxNewTokens, p.schema);
            jt.push(last.ms);
          }
          free.push(median(ft));
          json.push(median(jt));
          jsonTokens += last!.tokens;
          jsonDecodeS += last!.tokens / last!.decodeTokPerS;
          let ok = false;
          try {
            ok = validate(JSON.parse(last!.text)) === true;
          } catch {
            ok = false;
          }
          if (!ok) {
            llamaInvalid++;
            log(`llama-server INVALID ${p.id}: ${last!.text}`);
          }
        }
        llama[category] = {
          freeMsPerRequestMedian: +median(free).toFixed(1),
          jsonMsPerRequestMedian: +median(json).toFixed(1),
          jsonMsPerRequestMean: +(json.reduce((a, b) => a + b, 0) / json.length).toFixed(1),
          jsonDecodeTokPerS: +(jsonTokens / jsonDecodeS).toFixed(1),
        };
        log(`llama-server ${category}: ${JSON.stringify(llama[category])}`);
      }
      llama['invalid'] = llamaInvalid;
    } finally {
      stop();
    }
  }

  const result = {
    date: new Date().toISOString(),
    cpu: cpus()[0]?.model,
    threads,
    reps,
    maxNewTokens,
    invalid,
    mismatches,
    constraintCostPerToken: mask,
    plainDecodeStepMs: +stepMs.toFixed(3),
    constraintShareOfPlainStep: +((mask.medianUs / 1000 / stepMs) * 100).toFixed(1),
    otherVocabularies,
    summary,
    speedupOverConstrainedPlain,
    ...(llama !== undefined ? { llamaServer: llama } : {}),
    rows,
  };
  log(JSON.stringify({ ...result, rows: undefined }, null, 1));
  if (values.out !== undefined) writeFileSync(values.out, `${JSON.stringify(result, null, 1)}\n`);
  await engine.dispose();
}

await main();
