/**
 * What log-probabilities (top 5) cost per token: the same prompts decoded with and without them,
 * interleaved, in one process (plain decoding and ANPD), on the default model or --model.
 * Reports decode ms per token for each and the ratio (issue 21: ≤ 5% of a decode step).
 *
 *   node dist/bench/logprobs-cost.js [--model NAME|FILE.gguf|DIR] [--runs 3] [--tokens 96]
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { DEFAULT_GRAPH_OPTIONS } from '../src/convert/decoder-graph.js';
import { createEngine } from '../src/engine/create-engine.js';
import { DEFAULT_SPECULATION, NO_SPECULATION, type SpeculationOptions } from '../src/contract.js';
import type { Engine } from '../src/engine/engine.js';
import { projectRoot } from '../src/paths.js';
import { ensureModelArgument } from '../src/registry/model-cache.js';
import { classifyModelArgument } from '../src/registry/model-registry.js';
import { exactnessPrompts } from '../test/support/prompt-set.js';

const { values } = parseArgs({
  options: {
    model: { type: 'string' },
    runs: { type: 'string', default: '3' },
    tokens: { type: 'string', default: '96' },
    out: { type: 'string' },
  },
});
const dir = await ensureModelArgument(classifyModelArgument(values.model), DEFAULT_GRAPH_OPTIONS);
const engine = await createEngine(dir, {
  executionProvider: 'cpu',
  intraOpThreads: availableParallelism(),
  kvCapacity: 2048,
});
const maxNewTokens = Number(values.tokens);

async function decodeMs(
  e: Engine,
  prompt: string,
  speculation: SpeculationOptions,
  top: number | undefined,
): Promise<{ ms: number; tokens: number }> {
  for await (const ev of e.generate({
    prompt: { kind: 'text', text: prompt, chat: true },
    maxNewTokens,
    speculation,
    ...(top === undefined ? {} : { logprobs: { top } }),
  })) {
    if (ev.type === 'final') return { ms: ev.totalMs - ev.prefillMs, tokens: ev.completionTokens };
  }
  throw new Error('no final event');
}

const prompts = exactnessPrompts().filter((_, i) => i % 6 === 0);
const result: Record<string, { without: number; with: number; ratio: number }> = {};
for (const [name, spec] of [
  ['plain', NO_SPECULATION],
  ['ANPD', DEFAULT_SPECULATION],
] as const) {
  await decodeMs(engine, 'Hello', spec, 5);
  const per = { without: [] as number[], with: [] as number[] };
  for (let r = 0; r < Number(values.runs); r++) {
    for (const [i, p] of prompts.entries()) {
      // Alternate which goes first, so drift favours neither.
      const order = (i + r) % 2 === 0 ? [undefined, 5] : [5, undefined];
      for (const top of order) {
        const { ms, tokens } = await decodeMs(engine, p.prompt, spec, top);
        (top === undefined ? per.without : per.with).push(ms / tokens);
      }
    }
  }
  const median = (a: number[]) => [...a].sort((x, y) => x - y)[a.length >> 1]!;
  const without = median(per.without);
  const withTop = median(per.with);
  result[name] = { without: +without.toFixed(3), with: +withTop.toFixed(3), ratio: +(withTop / without).toFixed(3) };
  process.stderr.write(
    `${name}: ${without.toFixed(3)} ms/token without, ${withTop.toFixed(3)} with top-5 logprobs (×${(withTop / without).toFixed(3)})\n`,
  );
}
await engine.dispose();
const report = {
  date: new Date().toISOString(),
  model: engine.info.name,
  vocab: engine.info.vocabSize,
  prompts: prompts.length,
  runs: Number(values.runs),
  maxNewTokens,
  msPerToken: result,
};
const out = values.out ?? join(projectRoot(), 'bench', 'results', 'logprobs-cost.json');
mkdirSync(join(out, '..'), { recursive: true });
writeFileSync(out, `${JSON.stringify(report, null, 1)}\n`);
process.stdout.write(`${JSON.stringify(report)}\n`);
