/**
 * The one table from our error codes to gRPC status codes. Messages of known errors go to the
 * client as they are (they name the field or the limit); anything unknown becomes INTERNAL with a
 * generic message, and the cause is logged, never sent.
 */
import { status as GrpcStatus } from '@grpc/grpc-js';
import { AnpdError, type ErrorCode } from '../../errors.js';

interface Mapping {
  readonly code: GrpcStatus;
  /** RequestError.reason in GenerateBidi. */
  readonly reason: string;
  /** Whether the error's own message may be shown to the client. */
  readonly expose: boolean;
}

const STATUS_BY_ERROR_CODE: Readonly<Record<ErrorCode, Mapping>> = {
  INVALID_REQUEST: { code: GrpcStatus.INVALID_ARGUMENT, reason: 'VALIDATION', expose: true },
  CONTEXT_OVERFLOW: { code: GrpcStatus.INVALID_ARGUMENT, reason: 'VALIDATION', expose: true },
  MODEL_NOT_FOUND: { code: GrpcStatus.NOT_FOUND, reason: 'NOT_FOUND', expose: true },
  DUPLICATE_REQUEST: { code: GrpcStatus.ALREADY_EXISTS, reason: 'DUPLICATE_ID', expose: true },
  OVERLOADED: { code: GrpcStatus.RESOURCE_EXHAUSTED, reason: 'OVERLOADED', expose: true },
  UNAVAILABLE: { code: GrpcStatus.UNAVAILABLE, reason: 'DRAINING', expose: true },
  // The server's GPU provider cannot run (normally a startup error); another pod may serve.
  EXECUTION_PROVIDER: { code: GrpcStatus.UNAVAILABLE, reason: 'EXECUTION_PROVIDER', expose: true },
  CANCELLED: { code: GrpcStatus.CANCELLED, reason: 'CANCELLED', expose: true },
  DEADLINE_EXCEEDED: { code: GrpcStatus.DEADLINE_EXCEEDED, reason: 'DEADLINE', expose: true },
  UNAUTHENTICATED: { code: GrpcStatus.UNAUTHENTICATED, reason: 'UNAUTHENTICATED', expose: true },
  // Retryable: the replica is restarted (or another pod serves); the message says what happened.
  REPLICA_FAILED: { code: GrpcStatus.UNAVAILABLE, reason: 'REPLICA_FAILED', expose: true },
  MODEL_INVALID: { code: GrpcStatus.INTERNAL, reason: 'ENGINE', expose: false },
  INTERNAL: { code: GrpcStatus.INTERNAL, reason: 'ENGINE', expose: false },
};

const INTERNAL: Mapping = STATUS_BY_ERROR_CODE.INTERNAL;

export interface MappedStatus {
  readonly code: GrpcStatus;
  readonly details: string;
  readonly reason: string;
  /** True when the server log should get the cause (the client only got a generic message). */
  readonly internal: boolean;
}

export function toGrpcStatus(error: unknown): MappedStatus {
  const mapping = error instanceof AnpdError ? STATUS_BY_ERROR_CODE[error.code] : INTERNAL;
  const details =
    mapping.expose && error instanceof Error ? error.message : 'internal error while generating; see the server log';
  return { code: mapping.code, details, reason: mapping.reason, internal: !mapping.expose };
}

/** How telemetry reports a failed generation: the gRPC status name and an outcome class. */
export function failureInfo(error: unknown): { errorType: string; outcome: 'cancelled' | 'error' | 'rejected' } {
  const mapped = toGrpcStatus(error);
  const errorType = GrpcStatus[mapped.code] ?? 'UNKNOWN';
  if (mapped.code === GrpcStatus.CANCELLED || mapped.code === GrpcStatus.DEADLINE_EXCEEDED)
    return { errorType, outcome: 'cancelled' };
  return { errorType, outcome: mapped.internal ? 'error' : 'rejected' };
}
