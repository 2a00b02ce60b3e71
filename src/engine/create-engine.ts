import { loadDecoderModel } from '../runtime/load-model.js';
import { DEFAULT_RUNTIME_OPTIONS, type RuntimeOptions } from '../runtime/types.js';
import { loadTokenizer } from '../tokenizer/tokenizer.js';
import { Engine } from './engine.js';

/** Opens a model directory (ours or an Optimum export) with its tokenizer. */
export async function createEngine(modelDir: string, runtime: RuntimeOptions = DEFAULT_RUNTIME_OPTIONS): Promise<Engine> {
  const tokenizer = loadTokenizer(modelDir);
  const model = await loadDecoderModel(modelDir, runtime);
  return new Engine(model, tokenizer);
}
