/** Public surface of the package: explicit named exports only. */
export { convertGguf } from './convert/convert-gguf.js';
export { DEFAULT_GRAPH_OPTIONS, type GraphOptions } from './convert/decoder-graph.js';
export { createEngine } from './engine/create-engine.js';
export {
  DEFAULT_SPECULATION,
  type FinishReason,
  type GenerateRequest,
  type GenerationBackend,
  type GenerationEvent,
  type GenerationStats,
  NO_SPECULATION,
  PAPER_SPECULATION,
  type Prompt,
  type SpeculationOptions,
} from './contract.js';
export { Engine } from './engine/engine.js';
export { InferenceService, type InferenceServiceOptions, type ServiceLimits } from './engine/inference-service.js';
export { AdmissionQueue, type AdmissionQueueOptions, type AdmissionQueueState } from './engine/admission-queue.js';
export { WorkerEngine } from './engine/worker-engine.js';
export { parseServerConfig, type ServerConfig } from './config/server-config.js';
export { loadTransportSecurity, type TransportSecurity } from './config/transport-security.js';
export {
  AnpdError,
  CancelledError,
  ConfigError,
  ContextOverflowError,
  DeadlineExceededError,
  DuplicateRequestError,
  type ErrorCode,
  InvalidRequestError,
  ModelFormatError,
  ModelNotFoundError,
  OverloadedError,
  UnauthenticatedError,
  UnavailableError,
  UnknownModelError,
} from './errors.js';
export { createLogger, type Logger, type LogLevel } from './log.js';
export { GenerationTelemetry } from './telemetry/generation-telemetry.js';
export { startTelemetry } from './telemetry/telemetry.js';
export { type ClientSecurity, TextGenerationClient } from './transport/grpc/client.js';
export {
  DEFAULT_GRPC_SERVER_OPTIONS,
  type GrpcServerOptions,
  type RunningGrpcServer,
  startGrpcServer,
} from './transport/grpc/server.js';
export { ensureDefaultModel } from './registry/model-cache.js';
export { DEFAULT_MODEL } from './registry/model-registry.js';
export type { DecoderModel, DecoderSequence, ModelInfo, RuntimeOptions } from './runtime/types.js';
export type { SamplingParams } from './sampling/sampler.js';
