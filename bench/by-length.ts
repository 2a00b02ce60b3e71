/**
 * Plain decoding and prefill by prompt length, side by side in one run (issue 19): our engine
 * (the default: the native runner with its own attention kernel; the native runner with ONNX
 * Runtime's kernel; onnxruntime-node's run, the starting point), llama.cpp's own
 * llama-bench (prefill: pp N; decode: tg 128 at depth N) and node-llama-cpp on the same prompt
 * ids. Same GGUF weights, 2 threads each, greedy, the engines rotated per repetition, medians.
 *
 *   npm run bench:by-length [-- --lengths 64,256,1024,2048 --reps 3 --tokens 128 --skip-setup]
 *
 * Prompts are real text (the bench prompts, concatenated, no chat template) cut to each length:
 * plain decoding's cost does not depend on what the tokens say. Writes
 * bench/results/cpu<threads>-by-length.json and prints a table.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus, release } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { createEngine } from '../src/engine/create-engine.js';
import type { Engine } from '../src/engine/engine.js';
import { type GenerationFinal, NO_SPECULATION } from '../src/contract.js';
import { projectRoot } from '../src/paths.js';
import { ensureDefaultGguf, ensureDefaultModel } from '../src/registry/model-cache.js';
import { startPeerProcess } from './peer-process.js';

const { values } = parseArgs({
  options: {
    threads: { type: 'string', default: '2' },
    lengths: { type: 'string', default: '64,256,1024,2048' },
    reps: { type: 'string', default: '3' },
    tokens: { type: 'string', default: '128' },
    'skip-setup': { type: 'boolean', default: false },
  },
});
const threads = Number(values.threads);
const newTokens = Number(values.tokens);
const reps = Number(values.reps);
const lengths = values.lengths.split(',').map(Number);
const root = projectRoot();
const peersDir = join(root, '.cache', 'peers');
if (!values['skip-setup'])
  execFileSync('bash', [join(root, 'bench', 'peers', 'setup.sh'), peersDir], { stdio: 'inherit', cwd: root });
const llamaBench = join(peersDir, 'llama.cpp-build', 'bin', 'llama-bench');

interface Measure {
  prefillTokPerS: number;
  decodeTokPerS: number;
  ttftMs?: number;
}
type Runner = (prompt: readonly number[]) => Promise<Measure>;

const dir = await ensureDefaultModel();
const gguf = await ensureDefaultGguf();
const kvCapacity = Math.max(...lengths) + newTokens + 64;
const ours = {
  native: await createEngine(
    dir,
    { executionProvider: 'cpu', intraOpThreads: threads, kvCapacity },
    { forwardCost: { mode: 'defer' } },
  ),
  nativeOrtAttention: await createEngine(
    dir,
    { executionProvider: 'cpu', intraOpThreads: threads, kvCapacity, experimental: { nativeAttention: 'off' } },
    { forwardCost: { mode: 'defer' } },
  ),
  onnxruntimeNode: await createEngine(
    dir,
    { executionProvider: 'cpu', intraOpThreads: threads, kvCapacity, nativeRun: 'off' },
    { forwardCost: { mode: 'defer' } },
  ),
};
if (ours.native.info.attention !== 'native')
  throw new Error('the native runner is not built (npm run build; scripts/build-native.mjs says why)');

// Outputs must agree between runs that share numerics: ORT's attention kernel (the native runner
// with it and onnxruntime-node's run, bitwise equal), and each engine with itself.
const outputs = new Map<string, string>();
function ourRunner(name: string, engine: Engine): Runner {
  return async (prompt) => {
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
    const key = `${engine.info.attention}:${prompt.length}`;
    const text = tokens.join();
    if (outputs.has(key) && outputs.get(key) !== text)
      throw new Error(`${name}: output differs from the other runner's at ${prompt.length} prompt tokens`);
    outputs.set(key, text);
    return {
      ttftMs: final!.firstTokenMs,
      prefillTokPerS: (prompt.length / final!.firstTokenMs) * 1000,
      decodeTokPerS: ((tokens.length - 1) / (final!.totalMs - final!.firstTokenMs)) * 1000,
    };
  };
}

const env = { ...process.env, OMP_NUM_THREADS: String(threads) };
const nodeLlamaCpp = await startPeerProcess(
  'node-llama-cpp',
  process.execPath,
  [
    join(root, 'bench', 'peers', 'node-llama-cpp-peer.mjs'),
    '--package',
    join(peersDir, 'node-llama-cpp'),
    '--gguf',
    gguf,
    '--threads',
    String(threads),
    '--mode',
    'plain',
    '--n-ctx',
    String(kvCapacity),
  ],
  env,
);

/** llama-bench's own figures: pp N (prefill) and tg at depth N (decode after an N-token context). */
function llamaBenchRun(args: string[]): number {
  const out = execFileSync(llamaBench, ['-m', gguf, '-t', String(threads), '-r', '1', '-o', 'json', ...args], {
    env,
    maxBuffer: 1 << 24,
  }).toString();
  const rows = JSON.parse(out) as { avg_ts: number }[];
  return rows[0]!.avg_ts;
}

const runners: Record<string, Runner> = {
  'anpd-serve plain (native runner, own attention)': ourRunner('native', ours.native),
  'anpd-serve plain (native runner, ORT attention)': ourRunner('native, ORT attention', ours.nativeOrtAttention),
  'anpd-serve plain (onnxruntime-node run)': ourRunner('onnxruntime-node', ours.onnxruntimeNode),
  'llama.cpp (llama-bench)': async (prompt) => ({
    prefillTokPerS: llamaBenchRun(['-p', String(prompt.length), '-n', '0']),
    decodeTokPerS: llamaBenchRun(['-p', '0', '-n', String(newTokens), '-d', String(prompt.length)]),
  }),
  'node-llama-cpp plain': async (prompt) => {
    const s = await nodeLlamaCpp.generate({ promptIds: prompt, maxNewTokens: newTokens, eosIds: [] });
    return {
      ttftMs: s.ttftMs,
      prefillTokPerS: (prompt.length / s.ttftMs) * 1000,
      decodeTokPerS: ((s.tokenCount - 1) / (s.totalMs - s.ttftMs)) * 1000,
    };
  },
};
const names = Object.keys(runners);

const text = ['summarization', 'document-qa', 'code-editing', 'open-chat']
  .flatMap((c) =>
    (JSON.parse(readFileSync(join(root, 'bench', 'prompts', `${c}.json`), 'utf8')) as { prompt: string }[]).map(
      (p) => p.prompt,
    ),
  )
  .join('\n\n');
const allTokens = ours.native.tokenizePrompt({ kind: 'text', text, chat: false });
if (allTokens.length < Math.max(...lengths)) throw new Error(`the bench prompts give only ${allTokens.length} tokens`);

// Warm-up (first-call allocations of the long shapes), not timed.
for (const name of names) await runners[name]!(allTokens.slice(0, Math.min(512, Math.max(...lengths))));
outputs.clear();

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};
const rows: Record<string, unknown>[] = [];
let turn = 0;
for (const length of lengths) {
  const prompt = allTokens.slice(0, length);
  const got = new Map<string, Measure[]>(names.map((n) => [n, []]));
  for (let rep = 0; rep < reps; rep++) {
    const order = names.map((_, i) => names[(i + turn) % names.length]!);
    turn++;
    for (const name of order) got.get(name)!.push(await runners[name]!(prompt));
  }
  const row: Record<string, unknown> = { promptTokens: length };
  for (const [name, ms] of got) {
    row[name] = {
      prefillTokPerS: +median(ms.map((m) => m.prefillTokPerS)).toFixed(1),
      decodeTokPerS: +median(ms.map((m) => m.decodeTokPerS)).toFixed(1),
      ...(ms[0]!.ttftMs !== undefined ? { ttftMs: +median(ms.map((m) => m.ttftMs!)).toFixed(1) } : {}),
      runs: ms.map((m) => ({ prefill: +m.prefillTokPerS.toFixed(1), decode: +m.decodeTokPerS.toFixed(1) })),
    };
  }
  rows.push(row);
  process.stderr.write(`${length} prompt tokens done\n`);
}
await nodeLlamaCpp.close();

type Cell = { prefillTokPerS: number; decodeTokPerS: number; ttftMs?: number };
const cell = (row: Record<string, unknown>, name: string) => row[name] as Cell;
const ratios = rows.map((row) => {
  const ourCell = cell(row, names[0]!);
  const llama = cell(row, 'llama.cpp (llama-bench)');
  const nlc = cell(row, 'node-llama-cpp plain');
  const before = cell(row, names[2]!);
  const ortAttention = cell(row, names[1]!);
  return {
    promptTokens: row['promptTokens'],
    decodeOverLlamaCpp: +(ourCell.decodeTokPerS / llama.decodeTokPerS).toFixed(2),
    prefillOverLlamaCpp: +(ourCell.prefillTokPerS / llama.prefillTokPerS).toFixed(2),
    decodeOverNodeLlamaCpp: +(ourCell.decodeTokPerS / nlc.decodeTokPerS).toFixed(2),
    ttftOverOnnxruntimeNodeRun: before.ttftMs ? +(ourCell.ttftMs! / before.ttftMs).toFixed(2) : null,
    decodeOverOnnxruntimeNodeRun: +(ourCell.decodeTokPerS / before.decodeTokPerS).toFixed(2),
    decodeOwnOverOrtAttention: +(ourCell.decodeTokPerS / ortAttention.decodeTokPerS).toFixed(2),
    prefillOwnOverOrtAttention: +(ourCell.prefillTokPerS / ortAttention.prefillTokPerS).toFixed(2),
  };
});
const lines = ['| prompt tokens | engine | decode tok/s | prefill tok/s | TTFT ms |', '|---:|---|---:|---:|---:|'];
for (const row of rows)
  for (const name of names) {
    const c = cell(row, name);
    lines.push(`| ${row['promptTokens']} | ${name} | ${c.decodeTokPerS} | ${c.prefillTokPerS} | ${c.ttftMs ?? '–'} |`);
  }
process.stdout.write(`${lines.join('\n')}\n\nratios (ours native / peer): ${JSON.stringify(ratios, null, 1)}\n`);

let revision = 'unknown';
try {
  revision = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: root }).toString().trim();
} catch {}
const out = join(root, 'bench', 'results', `cpu${threads}-by-length.json`);
mkdirSync(join(root, 'bench', 'results'), { recursive: true });
writeFileSync(
  out,
  `${JSON.stringify(
    {
      benchmark: 'by-length',
      date: new Date().toISOString(),
      revision,
      command: `npm run bench:by-length --${process.argv.slice(2).length ? ` ${process.argv.slice(2).join(' ')}` : ''}`,
      machine: { cpu: cpus()[0]?.model, cores: cpus().length, kernel: release(), node: process.version },
      settings: {
        threads,
        newTokens,
        reps,
        greedy: true,
        order: 'engines rotated per repetition',
        gguf: gguf.replace(root, '.'),
        kvCapacity,
      },
      versions: {
        'node-llama-cpp': nodeLlamaCpp.ready,
        'llama-bench':
          execFileSync(llamaBench, ['--version'], { stdio: ['ignore', 'pipe', 'pipe'] })
            .toString()
            .trim() || 'see stderr',
      },
      definitions: {
        decodeTokPerS:
          'ours and node-llama-cpp: (new tokens − 1) / time after the first token; llama-bench: its tg test at depth N (the context prefilled untimed)',
        prefillTokPerS: 'ours and node-llama-cpp: prompt tokens / time to the first token; llama-bench: its pp N test',
        ttftMs: 'request to the first generated token',
      },
      ratios,
      rows,
    },
    null,
    2,
  )}\n`,
);
process.stderr.write(`wrote ${out}\n`);
for (const engine of Object.values(ours)) await engine.dispose();
