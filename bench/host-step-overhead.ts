/**
 * Host work of one device-path decode step (issue 33): a random model with SmolLM2's tensor count
 * (30 layers) but hidden 64, so the forward itself is small and what the runner does per step
 * (values, bindings, copies) shows. Emulated device path on the CPU, greedy 1-token steps.
 *
 *   node dist/bench/host-step-overhead.js [--steps 3000] [--layers 30]
 *
 * Compare two builds by running each one's copy of this script in turns (docs/perf-notes.md,
 * "Decode steps bound once on the device path").
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { convertGguf } from '../src/convert/convert-gguf.js';
import { DEFAULT_GRAPH_OPTIONS } from '../src/convert/decoder-graph.js';
import { GgmlType, readGguf } from '../src/convert/gguf-reader.js';
import { ensureDefaultGguf } from '../src/registry/model-cache.js';
import { loadDecoderModel } from '../src/runtime/load-model.js';
import { randomLlamaGguf } from '../test/support/random-gguf.js';

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: { steps: { type: 'string', default: '3000' }, layers: { type: 'string', default: '30' } },
  });
  const steps = Number(values.steps);
  const dir = mkdtempSync(join(tmpdir(), 'anpd-host-step-'));
  try {
    const gguf = join(dir, 'tiny.gguf');
    const shape = { layers: Number(values.layers), hidden: 64, ffn: 128, heads: 2, kvHeads: 1 };
    writeFileSync(
      gguf,
      randomLlamaGguf(readGguf(await ensureDefaultGguf()), shape, () => GgmlType.Q4_0, 1),
    );
    convertGguf(gguf, join(dir, 'model'), { ...DEFAULT_GRAPH_OPTIONS, dtype: 'float16' });
    const model = await loadDecoderModel(join(dir, 'model'), {
      executionProvider: 'cpu',
      intraOpThreads: 1,
      kvCapacity: 1024,
      experimental: { deviceRun: 'emulate' },
    });
    const vocab = model.info.vocabSize;
    const seq = model.createSequence();
    await seq.forward(
      Array.from({ length: 16 }, (_, i) => (i * 7919 + 13) % vocab),
      1,
    );
    const times: number[] = [];
    for (let i = 0; i < steps + 200; i++) {
      if (seq.length >= 600) seq.rewind(16);
      const started = performance.now();
      await seq.forwardGreedy!([(i * 104_729 + 7) % vocab], 1);
      if (i >= 200) times.push(performance.now() - started);
    }
    seq.dispose();
    await model.dispose();
    times.sort((a, b) => a - b);
    const at = (q: number) => +times[Math.floor(q * (times.length - 1))]!.toFixed(4);
    process.stdout.write(`${JSON.stringify({ layers: shape.layers, steps, msMedian: at(0.5), msP10: at(0.1) })}\n`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
