/**
 * What one batched forward costs against one alone: N concurrent plain generations (N = 1, 2, 4,
 * 8, ...) on a batching engine, in process. Reports the wall time per decode step, the forwards
 * per step and the sequences each batched forward carried, so the batch graph's overhead (idle
 * slots, per-slot attention) reads apart from scheduling.
 *   node dist/bench/batch-step-bench.js --model DIR --batch-model DIRK [--execution-provider webgpu] [--streams 1,2,4,8]
 */
import { parseArgs } from 'node:util';
import { createEngine } from '../src/engine/create-engine.js';
import { NO_SPECULATION } from '../src/contract.js';
import { EXECUTION_PROVIDERS, type ExecutionProviderName } from '../src/runtime/types.js';
import { generateOnce } from '../tools/generate-once.js';

const { values } = parseArgs({
  options: {
    model: { type: 'string' },
    'batch-model': { type: 'string' },
    'execution-provider': { type: 'string', default: 'cpu' },
    threads: { type: 'string', default: '0' },
    streams: { type: 'string', default: '1,2,4,8' },
    tokens: { type: 'string', default: '48' },
  },
});
const provider = values['execution-provider'] as ExecutionProviderName;
if (!EXECUTION_PROVIDERS.includes(provider) || values.model === undefined || values['batch-model'] === undefined) {
  throw new Error('usage: batch-step-bench --model DIR --batch-model DIRK [--execution-provider cpu|webgpu|cuda]');
}
const flat = Array.from({ length: 18 }, (_, t) => (t === 0 ? 0 : 1));
const engine = await createEngine(
  values.model,
  {
    executionProvider: provider,
    intraOpThreads: Number(values.threads),
    kvCapacity: 512,
    batchModelDir: values['batch-model'].split(','),
  },
  { forwardCost: { mode: 'fixed', table: flat } },
);
const executor = engine.model.batchExecutor!;
const tokens = Number(values.tokens);
const prompt = 'Write a short poem about the sea.';
await generateOnce(engine, prompt, NO_SPECULATION, 8);
const rows = [];
for (const streams of values.streams!.split(',').map(Number)) {
  for (let rep = 0; rep < 2; rep++) {
    const before = { ...executor.counts, byWidth: { ...executor.counts.byWidth } };
    const t0 = performance.now();
    const outs = await Promise.all(
      Array.from({ length: streams }, () => generateOnce(engine, prompt, NO_SPECULATION, tokens)),
    );
    const ms = performance.now() - t0;
    const after = executor.counts;
    const decodeMs = outs.reduce((a, o) => a + o.final.totalMs - o.final.firstTokenMs, 0) / streams;
    const batched = after.batched - before.batched;
    const row = {
      streams,
      wallMs: +ms.toFixed(0),
      msPerStep: +(decodeMs / (tokens - 1)).toFixed(2),
      forwardsAlone: after.alone - before.alone,
      forwardsBatched: batched,
      sequencesPerBatch: +((after.batchedSequences - before.batchedSequences) / Math.max(1, batched)).toFixed(2),
      // (Key kept from the recorded results in bench/results.)
      bySlots: Object.fromEntries(
        Object.entries(after.byWidth).map(([k, n]) => [k, n - (before.byWidth[Number(k)] ?? 0)]),
      ),
    };
    if (rep === 1) rows.push(row);
    process.stderr.write(`${JSON.stringify(row)}\n`);
  }
}
process.stdout.write(`${JSON.stringify({ provider, batchSlots: engine.info.batchSlots, rows })}\n`);
await engine.dispose();
