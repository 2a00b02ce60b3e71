/**
 * Device benchmark: one execution provider (cpu, webgpu, cuda) on this machine.
 *   1. The T-ratio table: one forward over T tokens (after a 64-token prefix) vs T = 1.
 *   2. Decode tok/s plain vs ANPD on the bench prompts, with the outputs checked identical.
 *   3. Host↔device bytes per decode step, counted from the tensors each forward binds on the host.
 * Runs where there is no network and no package cache: --model names a converted model directory.
 *   node dist/bench/device-bench.js --execution-provider webgpu --model DIR --out results.json
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { availableParallelism, cpus } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { createEngine } from '../src/engine/create-engine.js';
import { DEFAULT_SPECULATION, NO_SPECULATION } from '../src/contract.js';
import { projectRoot } from '../src/paths.js';
import { generateOnce, type Sample } from '../tools/generate-once.js';
import { loadDecoderModel } from '../src/runtime/load-model.js';
import {
  DEVICE_RUN_MODES,
  type DeviceRunMode,
  EXECUTION_PROVIDERS,
  type ExecutionProviderName,
  type RuntimeOptions,
} from '../src/runtime/types.js';

const T_SIZES = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32];

function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

async function forwardTable(
  modelDir: string,
  options: RuntimeOptions,
  reps: number,
): Promise<{ t: number; ms: number; ratio: number }[]> {
  const model = await loadDecoderModel(modelDir, { ...options, kvCapacity: 1024 });
  try {
    const seq = model.createSequence({ capacity: 256 });
    const prefix = 64;
    const ids = Array.from({ length: prefix + 32 }, (_, i) => (i * 7919 + 13) % model.info.vocabSize);
    await seq.forward(ids.slice(0, prefix), 1);
    const times = new Map<number, number[]>(T_SIZES.map((t) => [t, []]));
    for (let warm = 0; warm < 3; warm++)
      for (const t of T_SIZES) await seq.forward(ids.slice(prefix, prefix + t), 1), seq.rewind(prefix);
    for (let r = 0; r < reps; r++) {
      for (const t of T_SIZES) {
        const started = performance.now();
        await seq.forward(ids.slice(prefix, prefix + t), Math.min(t, 8));
        times.get(t)!.push(performance.now() - started);
        seq.rewind(prefix);
      }
    }
    seq.dispose();
    const base = median(times.get(1)!);
    return T_SIZES.map((t) => ({
      t,
      ms: +median(times.get(t)!).toFixed(3),
      ratio: +(median(times.get(t)!) / base).toFixed(2),
    }));
  } finally {
    await model.dispose();
  }
}

/**
 * What one decode step moves between host and device when every tensor a forward binds lives on
 * the host (ORT copies inputs up and outputs down): the KV buffers both ways, the ids, the logits.
 * At 256 KV slots (a sequence under 256 tokens), for 1 and 8 logits rows.
 */
function hostDeviceBytes(modelDir: string): Record<string, number> {
  const m = JSON.parse(readFileSync(join(modelDir, 'anpd-model.json'), 'utf8')) as {
    layers: number;
    kvHeads: number;
    headDim: number;
    vocab: number;
  };
  const slots = 256;
  const kv = m.layers * 2 * m.kvHeads * slots * m.headDim * 4;
  return {
    kvUpBytes: kv,
    kvDownBytes: kv,
    idsBytes: 2 * 8,
    logits1RowBytes: m.vocab * 4,
    logits8RowsBytes: 8 * m.vocab * 4,
  };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      'execution-provider': { type: 'string', default: 'cpu' },
      model: { type: 'string' },
      threads: { type: 'string' },
      'rows-min': { type: 'string' },
      categories: { type: 'string', default: 'code-editing,summarization' },
      'max-new-tokens': { type: 'string', default: '128' },
      reps: { type: 'string', default: '20' },
      'skip-decode': { type: 'boolean', default: false },
      'skip-table': { type: 'boolean', default: false },
      'draft-max': { type: 'string' },
      out: { type: 'string' },
      'device-run': { type: 'string' },
      'cuda-graphs': { type: 'string', default: 'on' },
      'weight-gemm': { type: 'string' },
      'tokens-out': { type: 'string' },
      prompts: { type: 'string' },
    },
  });
  const provider = values['execution-provider'] as ExecutionProviderName;
  if (!EXECUTION_PROVIDERS.includes(provider))
    throw new Error(`--execution-provider must be one of ${EXECUTION_PROVIDERS.join(', ')}`);
  if (values.model === undefined) throw new Error('--model DIR (a converted model directory) is required');
  const threads = Number(values.threads ?? availableParallelism());
  const deviceRun = values['device-run'] as DeviceRunMode | undefined;
  if (deviceRun !== undefined && !DEVICE_RUN_MODES.includes(deviceRun))
    throw new Error(`--device-run must be one of ${DEVICE_RUN_MODES.join(', ')}`);
  const rowsMin = {
    ...(values['rows-min'] !== undefined ? { forwardRowsMin: Number(values['rows-min']) } : {}),
    experimental: {
      ...(deviceRun !== undefined ? { deviceRun } : {}),
      cudaGraphs: values['cuda-graphs'] !== 'off',
      weightOnlyGemm: values['weight-gemm'] === 'on',
    },
  };
  const tokensOut: Record<string, number[]> = {};
  const promptsMax = values.prompts !== undefined ? Number(values.prompts) : Infinity;
  const log = (line: string) => process.stderr.write(`[${provider}] ${line}\n`);

  const loadStarted = performance.now();
  const table = values['skip-table']
    ? []
    : await forwardTable(
        values.model,
        { executionProvider: provider, intraOpThreads: threads, kvCapacity: 1024, ...rowsMin },
        Number(values.reps),
      );
  if (table.length > 0)
    log(
      `T-ratio: ${table.map((r) => `T=${r.t} ${r.ms} ms (${r.ratio}×)`).join(', ')} [incl. load ${((performance.now() - loadStarted) / 1000).toFixed(1)} s]`,
    );

  const decode: Record<string, unknown>[] = [];
  let runnerInfo = 'not loaded';
  let identical = true;
  if (!values['skip-decode']) {
    const engine = await createEngine(values.model, {
      executionProvider: provider,
      intraOpThreads: threads,
      kvCapacity: 2048,
      ...rowsMin,
    });
    runnerInfo = `${engine.info.runner}, rows ${engine.info.forwardRowsMin}`;
    log(`engine: ${runnerInfo}`);
    await generateOnce(engine, 'Hello', NO_SPECULATION, 8);
    await generateOnce(engine, 'Hello', DEFAULT_SPECULATION, 8);
    const maxNewTokens = Number(values['max-new-tokens']);
    const anpd =
      values['draft-max'] !== undefined
        ? { ...DEFAULT_SPECULATION, draftTokensMax: Number(values['draft-max']) }
        : DEFAULT_SPECULATION;
    for (const category of values.categories!.split(',')) {
      const prompts = JSON.parse(readFileSync(join(projectRoot(), 'bench', 'prompts', `${category}.json`), 'utf8')) as {
        id: string;
        prompt: string;
      }[];
      const totals = { plain: { tokens: 0, ms: 0 }, anpd: { tokens: 0, ms: 0, rounds: 0, accepted: 0, drafted: 0 } };
      const prefillMs: number[] = [];
      for (const [i, p] of prompts.slice(0, promptsMax).entries()) {
        const order = i % 2 === 0 ? (['plain', 'anpd'] as const) : (['anpd', 'plain'] as const);
        const runs: Record<string, Sample> = {};
        for (const mode of order)
          runs[mode] = await generateOnce(engine, p.prompt, mode === 'plain' ? NO_SPECULATION : anpd, maxNewTokens);
        tokensOut[p.id] = runs['plain']!.tokens;
        if (runs['plain']!.tokens.join() !== runs['anpd']!.tokens.join()) {
          identical = false;
          log(`MISMATCH ${p.id}`);
        }
        for (const mode of ['plain', 'anpd'] as const) {
          const f = runs[mode]!.final;
          totals[mode].tokens += f.completionTokens;
          totals[mode].ms += f.totalMs - f.prefillMs;
        }
        prefillMs.push(runs['plain']!.final.prefillMs, runs['anpd']!.final.prefillMs);
        totals.anpd.rounds += runs['anpd']!.final.stats.rounds;
        totals.anpd.drafted += runs['anpd']!.final.stats.draftTokensProposed;
        totals.anpd.accepted += runs['anpd']!.final.stats.draftTokensAccepted;
      }
      const plainTokS = (totals.plain.tokens / totals.plain.ms) * 1000;
      const anpdTokS = (totals.anpd.tokens / totals.anpd.ms) * 1000;
      const row = {
        category,
        prompts: Math.min(prompts.length, promptsMax),
        plainTokPerS: +plainTokS.toFixed(1),
        anpdTokPerS: +anpdTokS.toFixed(1),
        speedup: +(anpdTokS / plainTokS).toFixed(2),
        tokensPerStep: +(totals.anpd.tokens / totals.anpd.rounds).toFixed(2),
        acceptance: +(totals.anpd.accepted / Math.max(1, totals.anpd.drafted)).toFixed(3),
        /** Sequence creation (KV allocation, on a GPU its upload) + prompt forward: the engine's part of TTFT. */
        prefillMsMedian: +median(prefillMs).toFixed(1),
      };
      decode.push(row);
      log(JSON.stringify(row));
    }
    await engine.dispose();
  }
  const report = {
    date: new Date().toISOString(),
    hostDeviceBytesPerStep: hostDeviceBytes(values.model),
    provider,
    deviceRun: deviceRun ?? 'auto',
    cudaGraphs: values['cuda-graphs'] !== 'off',
    weightOnlyGemm: values['weight-gemm'] === 'on',
    runner: runnerInfo,
    threads,
    forwardRowsMin: values['rows-min'] ?? 'default',
    draftTokensMax:
      values['draft-max'] !== undefined ? Number(values['draft-max']) : DEFAULT_SPECULATION.draftTokensMax,
    cpu: `${cpus().length} × ${cpus()[0]?.model ?? 'unknown'}`,
    forwardTable: table,
    decode,
    outputsIdentical: identical,
  };
  process.stdout.write(`${JSON.stringify(report)}\n`);
  if (values.out !== undefined) writeFileSync(values.out, `${JSON.stringify(report, null, 2)}\n`);
  if (values['tokens-out'] !== undefined) writeFileSync(values['tokens-out'], `${JSON.stringify(tokensOut)}\n`);
}

await main();
