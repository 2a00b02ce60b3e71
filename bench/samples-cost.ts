/**
 * n samples of one prompt in one request against the same samples as separate requests (issue 21,
 * item 4: "n = 4 faster than four separate requests"). One process, the default model or --model,
 * sampling at temperature 0.8 with seeds s..s+n-1, so both sides produce the same tokens (checked).
 * Modes, interleaved: one request with n samples; n requests at once; n requests one after another.
 *
 *   node dist/bench/samples-cost.js [--model NAME|FILE.gguf|DIR] [--n 4] [--runs 3] [--tokens 64]
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { DEFAULT_GRAPH_OPTIONS } from '../src/convert/decoder-graph.js';
import { createEngine } from '../src/engine/create-engine.js';
import { DEFAULT_SPECULATION, type GenerateRequest } from '../src/contract.js';
import { projectRoot } from '../src/paths.js';
import { ensureModelArgument } from '../src/registry/model-cache.js';
import { classifyModelArgument } from '../src/registry/model-registry.js';
import { exactnessPrompts } from '../test/support/prompt-set.js';

const { values } = parseArgs({
  options: {
    model: { type: 'string' },
    n: { type: 'string', default: '4' },
    runs: { type: 'string', default: '3' },
    tokens: { type: 'string', default: '64' },
    out: { type: 'string' },
  },
});
const dir = await ensureModelArgument(classifyModelArgument(values.model), DEFAULT_GRAPH_OPTIONS);
const engine = await createEngine(dir, {
  executionProvider: 'cpu',
  intraOpThreads: availableParallelism(),
  kvCapacity: 4096,
});
const n = Number(values.n);
const maxNewTokens = Number(values.tokens);

function request(prompt: string, seed: number, samples: number): GenerateRequest {
  return {
    prompt: { kind: 'text', text: prompt, chat: true },
    maxNewTokens,
    ignoreEos: true,
    sampling: { temperature: 0.8, topK: 0, topP: 1, repetitionPenalty: 1, seed },
    speculation: DEFAULT_SPECULATION,
    ...(samples > 1 ? { n: samples } : {}),
  };
}

/** Tokens per sample, in sample order, and prompt length. */
async function run(req: GenerateRequest): Promise<{ tokens: number[][]; promptTokens: number }> {
  const tokens = Array.from({ length: req.n ?? 1 }, () => [] as number[]);
  for await (const ev of engine.generate(req)) {
    if (ev.type === 'delta') tokens[ev.index ?? 0]!.push(...ev.tokenIds);
    else return { tokens, promptTokens: ev.promptTokens };
  }
  throw new Error('no final event');
}

const modes = {
  'one request, n samples': async (prompt: string) => (await run(request(prompt, 11, n))).tokens,
  'n requests at once': async (prompt: string) =>
    (await Promise.all(Array.from({ length: n }, (_, i) => run(request(prompt, 11 + i, 1))))).map((r) => r.tokens[0]!),
  'n requests in turn': async (prompt: string) => {
    const out: number[][] = [];
    for (let i = 0; i < n; i++) out.push((await run(request(prompt, 11 + i, 1))).tokens[0]!);
    return out;
  },
} as const;

// Long prompts (document QA, summarization): what a shared prefill saves grows with the prompt.
const prompts = exactnessPrompts()
  .filter((p) => /document-qa|summarization/.test(p.id))
  .slice(0, 4);
await run(request('Hello', 1, 2));
const times = Object.fromEntries(Object.keys(modes).map((k) => [k, [] as number[]])) as Record<
  keyof typeof modes,
  number[]
>;
const promptLengths: number[] = [];
for (let r = 0; r < Number(values.runs); r++) {
  for (const [i, p] of prompts.entries()) {
    const names = Object.keys(modes) as (keyof typeof modes)[];
    let reference: string | undefined;
    for (let k = 0; k < names.length; k++) {
      const name = names[(k + i + r) % names.length]!; // rotate the order: drift favours no mode
      const t0 = performance.now();
      const tokens = await modes[name](p.prompt);
      times[name].push(performance.now() - t0);
      const key = JSON.stringify(tokens);
      if (reference !== undefined && key !== reference) throw new Error(`${p.id}: ${name} produced other tokens`);
      reference = key;
    }
    if (r === 0) promptLengths.push((await engine.prepare(request(p.prompt, 0, 1))).promptTokens.length);
  }
}
await engine.dispose();
const median = (a: readonly number[]) => [...a].sort((x, y) => x - y)[a.length >> 1]!;
const ms = Object.fromEntries(Object.entries(times).map(([k, v]) => [k, +median(v).toFixed(1)]));
const base = ms['one request, n samples']!;
const report = {
  date: new Date().toISOString(),
  model: engine.info.name,
  cores: availableParallelism(),
  n,
  maxNewTokens,
  promptTokens: promptLengths,
  runs: Number(values.runs),
  medianMs: ms,
  ratioToOneRequest: Object.fromEntries(Object.entries(ms).map(([k, v]) => [k, +(v / base).toFixed(3)])),
  note: 'wall time per prompt for n samples of max_new_tokens each (ignore_eos), CPU engine without batch graphs; same tokens in every mode (checked)',
};
const out = values.out ?? join(projectRoot(), 'bench', 'results', 'samples-cost.json');
mkdirSync(join(out, '..'), { recursive: true });
writeFileSync(out, `${JSON.stringify(report, null, 1)}\n`);
process.stdout.write(`${JSON.stringify(report)}\n`);
