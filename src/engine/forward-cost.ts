/**
 * The forward-cost table, with one owner: forwardCost[T] = time of one forward over T tokens
 * relative to T = 1, which the adaptive draft length needs. One plan says where an engine's table
 * comes from — measured now (before the engine is ready), deferred (measured on first need), or
 * fixed (given: from the cache, from another replica, or for a reproducible run) — and
 * ForwardCostTable carries it out. The table is derived data: a different one changes speed only,
 * never output (speculation is exact).
 *
 * The cache keeps it in the model cache between starts, so a restarted server does not measure it
 * again. The key names everything the table depends on: the model file (path, size, mtime), the
 * execution provider, the intra-op threads and replicas sharing the cores, the batch graph (if
 * any), the CPU model and count and the architecture. A table from another machine or model never
 * matches.
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { arch, availableParallelism, cpus } from 'node:os';
import { join, resolve } from 'node:path';
import { DRAFT_TOKENS_LIMIT } from '../contract.js';
import { InvalidRequestError } from '../errors.js';
import type { DecoderModel, RuntimeOptions } from '../runtime/types.js';

/** Where an engine's forward-cost table comes from: the one choice (in place of the old calibrate / forwardCost flags). */
export type ForwardCostPlan =
  /** Measured before the engine reports ready (~1 s on 2 cores). createEngine's default. */
  | { readonly mode: 'measure-now' }
  /** Measured on first need: calibrate() (a server after SERVING) or the first adaptive generation, which waits for it. */
  | { readonly mode: 'defer' }
  /** Given: a cached table, another replica's, or a fixed one for reproducible runs. */
  | { readonly mode: 'fixed'; readonly table: readonly number[] };

export const MEASURE_NOW: ForwardCostPlan = { mode: 'measure-now' };
export const DEFER_MEASUREMENT: ForwardCostPlan = { mode: 'defer' };

/** Rows the table is measured to where forwards are batched (extended by its last slope beyond). */
export const BATCH_COST_ROWS_MAX = 128;

/** One engine's table: carries out its plan, measures at most once (concurrent callers share the measurement). */
export class ForwardCostTable {
  readonly plan: ForwardCostPlan;
  private readonly model: DecoderModel;
  private table: Promise<number[]> | undefined;
  private measured: readonly number[] | undefined;

  constructor(model: DecoderModel, plan: ForwardCostPlan) {
    this.model = model;
    this.plan = plan;
    if (plan.mode === 'fixed') {
      if (plan.table.length < DRAFT_TOKENS_LIMIT + 2 || plan.table[1] !== 1) {
        throw new InvalidRequestError(
          `a forward cost table needs entries for T = 1..${DRAFT_TOKENS_LIMIT + 1} with cost[1] = 1`,
        );
      }
      this.measured = [...plan.table];
      this.table = Promise.resolve([...plan.table]);
    }
  }

  /** The table once known (given, or measured); undefined while deferred. */
  get known(): readonly number[] | undefined {
    return this.measured;
  }

  /** What the plan asks for at start: the given table, the measurement (now), or nothing yet (deferred). */
  async settle(): Promise<readonly number[] | undefined> {
    return this.plan.mode === 'defer' ? this.measured : this.get();
  }

  /**
   * The table for T = 1..maxT (the whole table when omitted: to DRAFT_TOKENS_LIMIT + 1, or to
   * BATCH_COST_ROWS_MAX rows where forwards are batched), measured now if it is not known yet:
   * once per engine on this model and device (median of interleaved repetitions, made monotone).
   */
  async get(maxT?: number): Promise<number[]> {
    this.table ??= measureForwardCost(
      this.model,
      this.model.info.batchSlots > 1 ? BATCH_COST_ROWS_MAX : DRAFT_TOKENS_LIMIT + 1,
    ).then((table) => {
      this.measured = table;
      return table;
    });
    const table = await this.table;
    return maxT === undefined ? table : table.slice(0, maxT + 1);
  }
}

/** Bump when the measurement or the file format changes: older tables stop matching. */
const FORWARD_COST_FORMAT = 2;
/** Model files whose identity keys the table (ours first, then Optimum's layout). */
const MODEL_FILES = [
  'model.onnx',
  'onnx/model.onnx',
  'onnx/decoder_with_past_model.onnx',
  'decoder_with_past_model.onnx',
];

export interface ForwardCostFile {
  readonly format: number;
  readonly key: Readonly<Record<string, string | number>>;
  readonly forwardCost: readonly number[];
}

/** What the table was measured with: provider, intra-op threads, and how many replicas share the cores. */
export type ForwardCostRuntime = Pick<RuntimeOptions, 'executionProvider' | 'intraOpThreads' | 'batchModelDir'> & {
  readonly replicas?: number;
};

function forwardCostKey(modelDir: string, runtime: ForwardCostRuntime): Record<string, string | number> {
  const dir = resolve(modelDir);
  const key: Record<string, string | number> = {
    format: FORWARD_COST_FORMAT,
    modelDir: dir,
    executionProvider: runtime.executionProvider,
    intraOpThreads: runtime.intraOpThreads,
    replicas: runtime.replicas ?? 1,
    // A batching engine's table runs to more rows (BATCH_COST_ROWS_MAX).
    batchModelDir:
      runtime.batchModelDir === undefined
        ? ''
        : (typeof runtime.batchModelDir === 'string' ? [runtime.batchModelDir] : runtime.batchModelDir)
            .map((d) => resolve(d))
            .join(','),
    cpu: cpus()[0]?.model ?? 'unknown',
    cores: availableParallelism(),
    arch: arch(),
  };
  const file = MODEL_FILES.find((f) => existsSync(join(dir, f)));
  if (file !== undefined) {
    const stat = statSync(join(dir, file));
    key['modelFile'] = `${file}:${stat.size}:${Math.round(stat.mtimeMs)}`;
  }
  return key;
}

/** Where the cached table for this model and runtime lives under `cacheRoot`. */
export function forwardCostPath(
  cacheRoot: string,
  modelDir: string,
  runtime: ForwardCostRuntime,
): { path: string; key: Record<string, string | number> } {
  const key = forwardCostKey(modelDir, runtime);
  const digest = createHash('sha256').update(JSON.stringify(key)).digest('hex').slice(0, 24);
  return { path: join(cacheRoot, 'forward-cost', `${digest}.json`), key };
}

function isTable(value: unknown): value is number[] {
  return (
    Array.isArray(value) &&
    value.length >= DRAFT_TOKENS_LIMIT + 2 &&
    value[1] === 1 &&
    value.every((c, t) => typeof c === 'number' && Number.isFinite(c) && (t < 2 || c >= (value[t - 1] as number)))
  );
}

/** The cached table if one exists for exactly this key and is well formed; else undefined. */
export function readForwardCost(path: string, key: Readonly<Record<string, string | number>>): number[] | undefined {
  try {
    const file = JSON.parse(readFileSync(path, 'utf8')) as Partial<ForwardCostFile>;
    if (file.format !== FORWARD_COST_FORMAT || JSON.stringify(file.key) !== JSON.stringify(key)) return undefined;
    return isTable(file.forwardCost) ? [...file.forwardCost] : undefined;
  } catch {
    return undefined;
  }
}

/** Writes the table atomically; false (never a throw) where the cache is read-only or missing. */
export function writeForwardCost(
  path: string,
  key: Readonly<Record<string, string | number>>,
  forwardCost: readonly number[],
): boolean {
  const file: ForwardCostFile = { format: FORWARD_COST_FORMAT, key, forwardCost };
  try {
    mkdirSync(join(path, '..'), { recursive: true });
    const tmp = `${path}.${process.pid}.tmp`;
    writeFileSync(tmp, `${JSON.stringify(file)}\n`);
    renameSync(tmp, path);
    return true;
  } catch {
    return false;
  }
}

async function measureForwardCost(model: DecoderModel, maxT: number): Promise<number[]> {
  const draftT = Math.min(maxT, DRAFT_TOKENS_LIMIT + 1);
  // Draft sizes: every T up to 9, then 12 and 17 (the rest interpolated), interleaved among
  // themselves only: a 128-row forward just before disturbs the timing of a 2-row one.
  const small = [
    ...new Set([...Array.from({ length: Math.min(9, draftT) }, (_, i) => i + 1), Math.min(12, draftT), draftT]),
  ];
  // Batch sizes, where forwards are batched: a second pass anchored on the largest draft size.
  const large = maxT > draftT ? [draftT, ...[24, 32, 48, 64, 96].filter((t) => t > draftT && t < maxT), maxT] : [];
  const past = 48;
  const seq = model.createSequence({ capacity: past + maxT + 1 });
  try {
    const ids = Array.from({ length: past + maxT }, (_, i) => (i * 7919) % model.info.vocabSize);
    await seq.forward(ids.slice(0, past), 1);
    const measured = await timeForwards(seq, ids, past, small);
    const base = measured.get(1)!;
    const points: (readonly [number, number])[] = small.map((t) => [t, measured.get(t)! / base]);
    if (large.length > 0) {
      const batch = await timeForwards(seq, ids, past, large);
      const anchor = batch.get(draftT)!;
      const scale = measured.get(draftT)! / base;
      for (const t of large.slice(1)) points.push([t, (batch.get(t)! / anchor) * scale]);
    }
    const cost = [0];
    for (let t = 1; t <= maxT; t++) {
      const hi = points.findIndex(([s]) => s >= t);
      const [t1, c1] = points[hi]!;
      const [t0, c0] = points[Math.max(0, hi - 1)]!;
      const interpolated = t1 === t ? c1 : c0 + ((c1 - c0) * (t - t0)) / (t1 - t0);
      // Cost never falls with more tokens; noise below T=1 is clamped.
      cost.push(Math.max(t === 1 ? 1 : cost[t - 1]!, interpolated));
    }
    return cost;
  } finally {
    seq.dispose();
  }
}

/** Median time of a forward over each of `sizes` tokens on top of `past`, sizes interleaved in rotating order. */
async function timeForwards(
  seq: ReturnType<DecoderModel['createSequence']>,
  ids: readonly number[],
  past: number,
  sizes: readonly number[],
): Promise<Map<number, number>> {
  const rounds = 5;
  const samples = new Map<number, number[]>(sizes.map((t) => [t, []]));
  for (let r = 0; r <= rounds; r++) {
    // Rotate the order each round so drift (frequency, caches) does not favour any size.
    for (let i = 0; i < sizes.length; i++) {
      const t = sizes[(i + r) % sizes.length]!;
      const t0 = performance.now();
      await seq.forward(ids.slice(past, past + t), t);
      if (r > 0) samples.get(t)!.push(performance.now() - t0); // round 0 warms up
      seq.rewind(past);
    }
  }
  const median = (a: number[]) => a.sort((x, y) => x - y)[a.length >> 1]!;
  return new Map(sizes.map((t) => [t, median(samples.get(t)!)]));
}
