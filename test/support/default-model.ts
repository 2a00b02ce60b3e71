import { DEFAULT_GRAPH_OPTIONS, type GraphOptions } from '../../src/convert/llama-graph.js';
import { createEngine } from '../../src/engine/create-engine.js';
import type { Engine } from '../../src/engine/engine.js';
import { DEFAULT_MODEL, ensureConverted, ensureDefaultGguf, ensureDefaultModel } from '../../src/model/default-model.js';

/** The default model's GGUF path (downloaded by `npm test`'s fetch-model step, or here). */
export function defaultGguf(): Promise<string> {
  return ensureDefaultGguf();
}

export function defaultModelDir(): Promise<string> {
  return ensureDefaultModel();
}

export async function convertedVariant(options: Partial<GraphOptions>): Promise<string> {
  return ensureConverted(await defaultGguf(), DEFAULT_MODEL.ggufSha256, { ...DEFAULT_GRAPH_OPTIONS, ...options });
}

let shared: Promise<Engine> | undefined;
/** One engine per test file (ava runs files in separate processes). */
export function defaultEngine(): Promise<Engine> {
  shared ??= defaultModelDir().then((dir) => createEngine(dir, { executionProvider: 'cpu', intraOpThreads: 0, kvCapacity: 2048 }));
  return shared;
}
