import { loadDecoderModel } from '../runtime/load-model.js';
import { DEFAULT_RUNTIME_OPTIONS, type RuntimeOptions } from '../runtime/types.js';
import { loadTokenizer } from '../tokenizer/tokenizer.js';
import { Engine } from './engine.js';

/**
 * Opens a model directory (ours or an Optimum export) with its tokenizer, and measures the cost
 * of verifying T tokens (the adaptive draft length needs it; ~1 s on 2 cores) unless told not to.
 */
export async function createEngine(
  modelDir: string,
  runtime: RuntimeOptions = DEFAULT_RUNTIME_OPTIONS,
  options: { calibrate?: boolean; forwardCost?: readonly number[] } = {},
): Promise<Engine> {
  const tokenizer = loadTokenizer(modelDir);
  const model = await loadDecoderModel(modelDir, runtime);
  const engine = new Engine(model, tokenizer, options.forwardCost);
  if ((options.calibrate ?? true) && options.forwardCost === undefined) await engine.forwardCost();
  return engine;
}
