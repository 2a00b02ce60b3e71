import { loadDecoderModel } from '../runtime/load-model.js';
import { type DecoderModel, DEFAULT_RUNTIME_OPTIONS, type RuntimeOptions } from '../runtime/types.js';
import { loadTokenizer } from '../tokenizer/tokenizer.js';
import { Engine } from './engine.js';
import { type ForwardCostPlan, MEASURE_NOW } from './forward-cost.js';

/** Wraps a loaded model before the Engine sees it. */
export type ModelDecorator = (model: DecoderModel) => DecoderModel;

/**
 * Opens a model directory (ours or an Optimum export) with its tokenizer and carries out the
 * forward-cost plan: by default it measures the cost of verifying T tokens now (the adaptive draft
 * length needs it; ~1 s on 2 cores). `decorateModel` wraps the loaded model before the Engine sees
 * it (an engine worker's ForwardWatch).
 */
export async function createEngine(
  modelDir: string,
  runtime: RuntimeOptions = DEFAULT_RUNTIME_OPTIONS,
  options: { forwardCost?: ForwardCostPlan; decorateModel?: ModelDecorator; prefixCacheBytes?: number } = {},
): Promise<Engine> {
  const engine = await loadEngine(
    modelDir,
    runtime,
    options.forwardCost ?? MEASURE_NOW,
    options.decorateModel,
    options.prefixCacheBytes,
  );
  await engine.forwardCosts.settle();
  return engine;
}

/** As createEngine, but returns once the model is loaded: the plan's measurement is then `engine.forwardCosts.settle()`'s. */
export async function loadEngine(
  modelDir: string,
  runtime: RuntimeOptions,
  forwardCost: ForwardCostPlan,
  decorateModel?: ModelDecorator,
  prefixCacheBytes?: number,
): Promise<Engine> {
  const tokenizer = loadTokenizer(modelDir);
  const loaded = await loadDecoderModel(modelDir, runtime);
  return new Engine(decorateModel?.(loaded) ?? loaded, tokenizer, forwardCost, prefixCacheBytes);
}
