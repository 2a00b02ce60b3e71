/**
 * One decode step's cost on a device, alone (issue 33): a 64-token prefill, then `--steps` forwards
 * of one token (the device path runs them at its 4-row decode shape), the sequence rewound every
 * 256 positions. Prints the median and p10/p90 ms a forward. With ANPD_ORT_PROFILE=PREFIX and
 * `--cuda-graphs off`, ORT writes its per-node profile of (almost only) decode steps:
 * bench/gpu/profile-summary.mjs sums it by operator.
 *   node dist/bench/gpu/step-profile.js --model DIR [--cuda-graphs on|off] [--weight-gemm on|off] [--rows N]
 *     [--steps 300] [--out FILE]
 * `--weight-gemm` toggles ORT's fpA_intB kernels (RuntimeOptions.experimental.weightOnlyGemm, default off); `--rows`
 * the query rows of a short forward (the device path's default, 4, unless given).
 */
import { writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { loadDecoderModel } from '../../src/runtime/load-model.js';

const quantile = (xs: readonly number[], q: number): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))]!;
};

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      model: { type: 'string' },
      'cuda-graphs': { type: 'string', default: 'on' },
      'weight-gemm': { type: 'string' },
      rows: { type: 'string' },
      steps: { type: 'string', default: '300' },
      provider: { type: 'string', default: 'cuda' },
      out: { type: 'string' },
    },
  });
  if (values.model === undefined) throw new Error('--model DIR is required');
  const steps = Number(values.steps);
  const model = await loadDecoderModel(values.model, {
    executionProvider: values.provider as 'cuda',
    intraOpThreads: 4,
    kvCapacity: 1024,
    ...(values.rows !== undefined ? { forwardRowsMin: Number(values.rows) } : {}),
    experimental: { cudaGraphs: values['cuda-graphs'] !== 'off', weightOnlyGemm: values['weight-gemm'] === 'on' },
  });
  try {
    const seq = model.createSequence({ capacity: 512 });
    const prefix = 64;
    const vocab = model.info.vocabSize;
    const ids = Array.from({ length: prefix }, (_, i) => (i * 7919 + 13) % vocab);
    await seq.forward(ids, 1);
    const times: number[] = [];
    for (let i = 0; i < steps + 20; i++) {
      if (seq.length >= prefix + 256) seq.rewind(prefix);
      const started = performance.now();
      await seq.forward([(i * 104_729 + 7) % vocab], 1);
      if (i >= 20) times.push(performance.now() - started);
    }
    seq.dispose();
    const result = {
      model: values.model,
      cudaGraphs: values['cuda-graphs'],
      weightGemm: values['weight-gemm'] ?? 'off',
      runner: model.info.runner,
      rows: model.info.forwardRowsMin,
      steps,
      msMedian: +quantile(times, 0.5).toFixed(3),
      msP10: +quantile(times, 0.1).toFixed(3),
      msP90: +quantile(times, 0.9).toFixed(3),
    };
    process.stdout.write(`${JSON.stringify(result)}\n`);
    if (values.out !== undefined) writeFileSync(values.out, `${JSON.stringify(result, null, 2)}\n`);
  } finally {
    await model.dispose();
  }
}

await main();
