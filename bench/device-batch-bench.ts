/**
 * What one batched device step costs by width: W sequences (each with a short prefilled prompt)
 * decode one token each in one forward of the W-slot graph, timed over many steps; the
 * single-sequence forward for comparison. Counts, not a serving benchmark (bench/replicas-bench.ts).
 *   node dist/bench/device-batch-bench.js --execution-provider cuda --model /tmp/m16 --batch-model /tmp/m16-s2,...,/tmp/m16-s64 [--cuda-graphs off]
 */
import { writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import type { DeviceDecoderModel } from '../src/runtime/device-decoder.js';
import type { PagedDecoderModel } from '../src/runtime/device-paged.js';
import { loadDecoderModel } from '../src/runtime/load-model.js';
import type { DecoderSequence, ExecutionProviderName, StepForward } from '../src/runtime/types.js';

const { values } = parseArgs({
  options: {
    'execution-provider': { type: 'string', default: 'cuda' },
    model: { type: 'string' },
    'batch-model': { type: 'string' },
    'cuda-graphs': { type: 'string', default: 'on' },
    'device-run': { type: 'string', default: 'auto' },
    reps: { type: 'string', default: '50' },
    'batch-invariant': { type: 'string', default: 'off' },
    out: { type: 'string' },
  },
});
if (values.model === undefined)
  throw new Error('--model DIR is required (and --batch-model DIR,… unless it is the paged graph)');
const model = (await loadDecoderModel(values.model, {
  executionProvider: values['execution-provider'] as ExecutionProviderName,
  intraOpThreads: 0,
  kvCapacity: 1024,
  ...(values['batch-model'] !== undefined
    ? { batchModelDir: values['batch-model'].split(',') }
    : { batchSlots: 64, batchInvariant: values['batch-invariant'] === 'on' }),
  experimental: {
    cudaGraphs: values['cuda-graphs'] !== 'off',
    deviceRun: values['device-run'] as 'auto' | 'emulate',
  },
})) as DeviceDecoderModel | PagedDecoderModel;
const executor = model.batchExecutor!;
const reps = Number(values.reps);
const prompt = [1, 9690, 198, 2683, 359, 253, 5356];
const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const rows: Record<string, number>[] = [];
for (const width of [1, ...executor.widths]) {
  const sequences: DecoderSequence[] = Array.from({ length: width }, () => model.createSequence());
  for (const s of sequences) await s.forwardGreedy!(prompt, 1);
  const times: number[] = [];
  for (let r = 0; r < reps + 3; r++) {
    const forwards: StepForward[] = sequences.map((sequence) => ({
      sequence,
      tokens: [42],
      start: 0,
      count: 1,
      padded: model.rows,
      rows: 1,
      argmax: true,
    }));
    const t0 = performance.now();
    await executor.run(width, forwards);
    if (r >= 3) times.push(performance.now() - t0);
    for (const s of sequences) s.rewind(prompt.length);
  }
  for (const s of sequences) s.dispose();
  const ms = median(times);
  const row = { width, stepMsP50: +ms.toFixed(3), perSequenceMs: +(ms / width).toFixed(3) };
  rows.push(row);
  process.stderr.write(`${JSON.stringify(row)}\n`);
}
await model.dispose();
const report = { date: new Date().toISOString(), cudaGraphs: values['cuda-graphs'], reps, rows };
process.stdout.write(`${JSON.stringify(report)}\n`);
if (values.out !== undefined) writeFileSync(values.out, `${JSON.stringify(report, null, 2)}\n`);
