import { DEFAULT_GRAPH_OPTIONS, type GraphOptions } from '../../src/convert/decoder-graph.js';
import { createEngine } from '../../src/engine/create-engine.js';
import type { Engine } from '../../src/engine/engine.js';
import { ensureConverted, ensureDefaultGguf, ensureDefaultModel } from '../../src/registry/model-cache.js';
import { DEFAULT_MODEL } from '../../src/registry/model-registry.js';

/** The default model's GGUF path (downloaded by `npm test`'s fetch-model step, or here). */
export function defaultGguf(): Promise<string> {
  return ensureDefaultGguf();
}

export function defaultModelDir(): Promise<string> {
  return ensureDefaultModel();
}

export async function convertedVariant(options: Partial<GraphOptions>): Promise<string> {
  return ensureConverted(
    await defaultGguf(),
    DEFAULT_MODEL.ggufSha256,
    { ...DEFAULT_GRAPH_OPTIONS, ...options },
    undefined,
    DEFAULT_MODEL.name,
  );
}

/**
 * A fixed forward-cost table (index T; shaped like the 2-core measurements in docs/perf-notes.md)
 * so the adaptive draft length, and so τ, do not depend on how busy the test machine is.
 */
export const TEST_FORWARD_COST = [
  0, 1, 1.02, 1.15, 1.3, 1.42, 1.55, 1.68, 1.8, 1.93, 2.05, 2.2, 2.35, 2.5, 2.65, 2.8, 2.95, 3.1,
];

let shared: Promise<Engine> | undefined;
/** One engine per test file (ava runs files in separate processes). */
export function defaultEngine(): Promise<Engine> {
  shared ??= defaultModelDir().then((dir) =>
    createEngine(
      dir,
      { executionProvider: 'cpu', intraOpThreads: 0, kvCapacity: 2048 },
      { forwardCost: { mode: 'fixed', table: TEST_FORWARD_COST } },
    ),
  );
  return shared;
}

let ortAttention: Promise<Engine> | undefined;
/**
 * The tests' engine with a given attention kernel: 'native' is the default engine where the
 * native runner is built (else the same onnxruntime one); 'onnxruntime' runs ORT's kernel.
 */
export function cpuEngine(attention: 'onnxruntime' | 'native'): Promise<Engine> {
  if (attention === 'native') return defaultEngine();
  ortAttention ??= defaultModelDir().then((dir) =>
    createEngine(
      dir,
      { executionProvider: 'cpu', intraOpThreads: 0, kvCapacity: 2048, experimental: { nativeAttention: 'off' } },
      { forwardCost: { mode: 'fixed', table: TEST_FORWARD_COST } },
    ),
  );
  return ortAttention;
}
