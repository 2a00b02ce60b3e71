/**
 * Error classes with stable codes. No transport types here: the gRPC edge owns the one mapping table.
 */

export type ErrorCode =
  | 'INVALID_REQUEST'
  | 'MODEL_INVALID'
  | 'MODEL_NOT_FOUND'
  | 'CONTEXT_OVERFLOW'
  | 'OVERLOADED'
  | 'UNAVAILABLE'
  | 'EXECUTION_PROVIDER'
  | 'DUPLICATE_REQUEST'
  | 'CANCELLED'
  | 'DEADLINE_EXCEEDED'
  | 'UNAUTHENTICATED'
  | 'REPLICA_FAILED'
  | 'INTERNAL';

export class AnpdError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
  }
}

/** A bad setting (flag, variable or the file it names): the message names the flag and, for files, the path. */
export class ConfigError extends AnpdError {
  constructor(message: string) {
    super('INVALID_REQUEST', message);
  }
}

/** A request the engine cannot serve as asked (bad parameters, prompt too long). */
export class InvalidRequestError extends AnpdError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('INVALID_REQUEST', message, options);
  }
}

/** The prompt plus the requested tokens do not fit the model's context or the KV capacity. */
export class ContextOverflowError extends AnpdError {
  constructor(message: string) {
    super('CONTEXT_OVERFLOW', message);
  }
}

/** A model file that is missing, truncated, of the wrong format or of an unsupported kind. Names the file. */
export class ModelFormatError extends AnpdError {
  readonly file: string;
  constructor(file: string, message: string, options?: { cause?: unknown }) {
    super('MODEL_INVALID', `${file}: ${message}`, options);
    this.file = file;
  }
}

export class ModelNotFoundError extends AnpdError {
  readonly file: string;
  constructor(file: string, message: string) {
    super('MODEL_NOT_FOUND', `${file}: ${message}`);
    this.file = file;
  }
}

/** The configured execution provider cannot run here (not installed, no device, unsupported node). */
export class ExecutionProviderError extends AnpdError {
  readonly provider: string;
  constructor(provider: string, message: string, options?: { cause?: unknown }) {
    super('EXECUTION_PROVIDER', `execution provider "${provider}": ${message}`, options);
    this.provider = provider;
  }
}

/** A request names a model this server does not serve. */
export class UnknownModelError extends AnpdError {
  constructor(model: string, served: readonly string[]) {
    super('MODEL_NOT_FOUND', `model "${model}" is not served here; served: ${served.join(', ')}`);
  }
}

/** Every sequence slot is busy and the wait queue is full: shed load now rather than grow memory. */
export class OverloadedError extends AnpdError {
  constructor(message: string) {
    super('OVERLOADED', message);
  }
}

/** The server is draining (shutting down) and takes no new work. */
export class UnavailableError extends AnpdError {
  constructor(message: string) {
    super('UNAVAILABLE', message);
  }
}

/** A request id that is already in flight on the same stream. */
export class DuplicateRequestError extends AnpdError {
  constructor(requestId: string) {
    super('DUPLICATE_REQUEST', `request_id "${requestId}" is already in flight on this call`);
  }
}

/** The caller's deadline passed before the generation finished. */
export class DeadlineExceededError extends AnpdError {
  constructor(message = 'deadline exceeded') {
    super('DEADLINE_EXCEEDED', message);
  }
}

/** A call to a key-protected service without a valid bearer token (`--api-key-file`). Never carries the token. */
export class UnauthenticatedError extends AnpdError {
  constructor(message: string) {
    super('UNAUTHENTICATED', message);
  }
}

/** What happened to a model replica: its thread or process died, the watchdog declared it wedged, or it failed to start. */
export type ReplicaFailureKind = 'died' | 'wedged' | 'failed-start';

/**
 * The model replica running a generation died (its thread or process exited or crashed) or was
 * declared wedged by the watchdog: the request did not complete and may be retried (here once a
 * replica is back, or on another pod). `kind` says which, so no one parses the message.
 */
export class ReplicaFailedError extends AnpdError {
  readonly kind: ReplicaFailureKind;
  constructor(kind: ReplicaFailureKind, message: string, options?: { cause?: unknown }) {
    super('REPLICA_FAILED', message, options);
    this.kind = kind;
  }
}

/** No model replica is up to take a generation (all restarting, or the pool disposed): retryable like a replica failure. */
export class NoReplicaUpError extends AnpdError {
  constructor(message: string) {
    super('REPLICA_FAILED', message);
  }
}

/** Progress of a generation when it was cancelled, so callers can still report usage. */
export interface CancelProgress {
  readonly promptTokens: number;
  readonly completionTokens: number;
}

/** The generation was cancelled (the caller's cancel, deadline or disconnect; `cause` is the signal's reason), with its usage so far. */
export class CancelledError extends AnpdError {
  readonly progress: CancelProgress;
  constructor(reason: unknown, progress: CancelProgress = { promptTokens: 0, completionTokens: 0 }) {
    super('CANCELLED', reason instanceof Error ? reason.message : 'generation cancelled', { cause: reason });
    this.progress = progress;
  }
}

/** An engine worker died or failed: every pending and later run on it fails with this. */
export class EngineWorkerError extends AnpdError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('INTERNAL', message, options);
  }
}
