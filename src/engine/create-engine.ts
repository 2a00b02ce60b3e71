import { loadDecoderModel } from '../runtime/load-model.js';
import { type DecoderModel, DEFAULT_RUNTIME_OPTIONS, type RuntimeOptions } from '../runtime/types.js';
import { loadTokenizer } from '../tokenizer/tokenizer.js';
import { Engine } from './engine.js';

/**
 * Opens a model directory (ours or an Optimum export) with its tokenizer, and measures the cost
 * of verifying T tokens (the adaptive draft length needs it; ~1 s on 2 cores) unless told not to.
 * `decorateModel` wraps the loaded model before the Engine sees it (an engine worker's ForwardWatch).
 */
export async function createEngine(
  modelDir: string,
  runtime: RuntimeOptions = DEFAULT_RUNTIME_OPTIONS,
  options: { calibrate?: boolean; forwardCost?: readonly number[]; decorateModel?: (model: DecoderModel) => DecoderModel } = {},
): Promise<Engine> {
  const tokenizer = loadTokenizer(modelDir);
  const loaded = await loadDecoderModel(modelDir, runtime);
  const model = options.decorateModel?.(loaded) ?? loaded;
  const engine = new Engine(model, tokenizer, options.forwardCost);
  if ((options.calibrate ?? true) && options.forwardCost === undefined) await engine.forwardCost();
  return engine;
}
