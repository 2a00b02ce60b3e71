/** Public surface of the package: explicit named exports only. */
export { convertGguf } from './convert/convert-gguf.js';
export { DEFAULT_GRAPH_OPTIONS, type GraphOptions } from './convert/llama-graph.js';
export { createEngine } from './engine/create-engine.js';
export {
  CancelledError,
  DEFAULT_SPECULATION,
  Engine,
  type FinishReason,
  type GenerateRequest,
  type GenerationEvent,
  type GenerationStats,
  NO_SPECULATION,
  PAPER_SPECULATION,
  type Prompt,
  type SpeculationOptions,
} from './engine/engine.js';
export { AnpdError, ContextOverflowError, type ErrorCode, InvalidRequestError, ModelFormatError, ModelNotFoundError } from './errors.js';
export { DEFAULT_MODEL, ensureDefaultModel } from './model/default-model.js';
export type { DecoderModel, DecoderSequence, ModelInfo, RuntimeOptions } from './runtime/types.js';
export type { SamplingParams } from './sampling/sampler.js';
