/**
 * The engine's forward-cost table (index T = cost of a T-token forward relative to T = 1, which the
 * adaptive draft length needs) kept in the model cache between starts, so a restarted replica does
 * not measure it again. It is derived data: losing it costs one background measurement (~1 s on
 * 2 cores), never a different output (speculation changes speed only).
 *
 * The key names everything the table depends on: the model file (path, size, mtime), the execution
 * provider, the intra-op threads and replicas sharing the cores, the batch graph (if any), the CPU model and count and the
 * architecture. A table from another machine or model never matches.
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { arch, availableParallelism, cpus } from 'node:os';
import { join, resolve } from 'node:path';
import type { RuntimeOptions } from '../runtime/types.js';
import { DRAFT_TOKENS_LIMIT } from './engine.js';

/** Bump when the measurement or the file format changes: older tables stop matching. */
const FORWARD_COST_FORMAT = 2;
/** Model files whose identity keys the table (ours first, then Optimum's layout). */
const MODEL_FILES = ['model.onnx', 'onnx/model.onnx', 'onnx/decoder_with_past_model.onnx', 'decoder_with_past_model.onnx'];

export interface ForwardCostFile {
  readonly format: number;
  readonly key: Readonly<Record<string, string | number>>;
  readonly forwardCost: readonly number[];
}

/** What the table was measured with: provider, intra-op threads, and how many replicas share the cores. */
export type ForwardCostRuntime = Pick<RuntimeOptions, 'executionProvider' | 'intraOpThreads' | 'batchModelDir'> & { readonly replicas?: number };

function forwardCostKey(modelDir: string, runtime: ForwardCostRuntime): Record<string, string | number> {
  const dir = resolve(modelDir);
  const key: Record<string, string | number> = {
    format: FORWARD_COST_FORMAT,
    modelDir: dir,
    executionProvider: runtime.executionProvider,
    intraOpThreads: runtime.intraOpThreads,
    replicas: runtime.replicas ?? 1,
    // A batching engine's table runs to more rows (BATCH_COST_ROWS_MAX).
    batchModelDir: runtime.batchModelDir === undefined ? '' : (typeof runtime.batchModelDir === 'string' ? [runtime.batchModelDir] : runtime.batchModelDir).map((d) => resolve(d)).join(','),
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

/** Where the table for this model and runtime lives under `cacheRoot`. */
export function forwardCostPath(cacheRoot: string, modelDir: string, runtime: ForwardCostRuntime): { path: string; key: Record<string, string | number> } {
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
export function writeForwardCost(path: string, key: Readonly<Record<string, string | number>>, forwardCost: readonly number[]): boolean {
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
