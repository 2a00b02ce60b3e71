/**
 * RPC telemetry and error mapping, written once around the handlers (in the style of nice-grpc's
 * middleware): each call gets its RPC span and an abort signal (call-context.ts), a failure ends
 * it with the status its error maps to (status.ts; the cause of an internal error goes to the log,
 * never to the client), and the span ends with the call's status.
 */
import {
  type handleBidiStreamingCall,
  type handleServerStreamingCall,
  type handleUnaryCall,
  type Metadata,
  type ServerDuplexStream,
  type ServiceError,
  status as GrpcStatus,
} from '@grpc/grpc-js';
import { type Context, ROOT_CONTEXT } from '@opentelemetry/api';
import type { Logger } from '../../log.js';
import type { GenerationTelemetry } from '../../telemetry/generation-telemetry.js';
import { CallWriter, createCallContext, effectiveError, type GrpcCallLike } from './call-context.js';
import { toGrpcStatus } from './status.js';
import { callerContext } from './tracing.js';

/** What a wrapped handler gets besides the request. */
export interface RpcScope {
  /** Aborts when the client cancels or disconnects or the deadline passes. */
  readonly signal: AbortSignal;
  /** The RPC span's context: the parent of the spans the handler starts. */
  readonly parent: Context;
  /** The caller's authorization metadata (its API key: the tenant of the request's cache scope). */
  readonly authorization: unknown;
}

/** A bidi call outlives its handler: the handler ends the RPC itself, once, with the call's status. */
export interface BidiRpcScope extends RpcScope {
  end(code: GrpcStatus): void;
}

/** Returns the response; a throw ends the call with the error's status. */
export type UnaryRpcHandler<Req, Res> = (request: Req, scope: RpcScope) => Res | Promise<Res>;
/** Writes through `writer`; returning ends the call OK (if it is still open), a throw with the error's status. */
export type ServerStreamRpcHandler<Req, Res> = (
  request: Req,
  writer: CallWriter<Res>,
  scope: RpcScope,
) => Promise<void>;
export type BidiRpcHandler<Req, Res> = (call: ServerDuplexStream<Req, Res>, scope: BidiRpcScope) => void;

/** Fields for the "request failed" log line, from the request (e.g. its id). */
export type RpcLogFields<Req> = (request: Req) => Record<string, unknown>;

export class RpcWrapper {
  private readonly logger: Logger;
  private readonly telemetry: GenerationTelemetry | undefined;

  constructor(logger: Logger, telemetry?: GenerationTelemetry) {
    this.logger = logger;
    this.telemetry = telemetry;
  }

  unary<Req, Res>(
    method: string,
    handler: UnaryRpcHandler<Req, Res>,
    logFields?: RpcLogFields<Req>,
  ): handleUnaryCall<Req, Res> {
    return (call, callback) => {
      const scope = this.open(method, call);
      void (async () => {
        let code = GrpcStatus.OK;
        try {
          callback(null, await handler(call.request, scope));
        } catch (error) {
          const failure = this.failure(error, scope.signal, { rpc: method, ...logFields?.(call.request) });
          code = failure.code;
          callback(failure);
        } finally {
          scope.end(code);
        }
      })();
    };
  }

  serverStream<Req, Res>(
    method: string,
    handler: ServerStreamRpcHandler<Req, Res>,
    logFields?: RpcLogFields<Req>,
  ): handleServerStreamingCall<Req, Res> {
    return (call) => {
      const scope = this.open(method, call);
      const writer = new CallWriter<Res>(call, scope.signal);
      void (async () => {
        let code = GrpcStatus.OK;
        try {
          await handler(call.request, writer, scope);
          if (writer.open) call.end();
        } catch (error) {
          const failure = this.failure(error, scope.signal, { rpc: method, ...logFields?.(call.request) });
          code = failure.code;
          if (writer.open) call.emit('error', failure);
        } finally {
          scope.end(code);
        }
      })();
    };
  }

  bidiStream<Req, Res>(method: string, handler: BidiRpcHandler<Req, Res>): handleBidiStreamingCall<Req, Res> {
    return (call) => handler(call, this.open(method, call));
  }

  private open(method: string, call: GrpcCallLike & { readonly metadata: Metadata }): BidiRpcScope {
    const rpc = this.telemetry?.startRpc(method, callerContext(call.metadata));
    const context = createCallContext(call);
    let ended = false;
    return {
      signal: context.signal,
      parent: rpc?.context ?? ROOT_CONTEXT,
      authorization: call.metadata.get('authorization')[0],
      end: (code) => {
        if (ended) return;
        ended = true;
        context.dispose();
        if (rpc !== undefined)
          this.telemetry?.endRpc(rpc.span, code, code === GrpcStatus.OK ? undefined : GrpcStatus[code]);
      },
    };
  }

  /** The status a failed call ends with: an abort as its reason (cancel or deadline), anything else as itself. */
  private failure(
    error: unknown,
    signal: AbortSignal,
    logFields: Record<string, unknown>,
  ): Partial<ServiceError> & { readonly code: GrpcStatus } {
    const effective = effectiveError(error, signal);
    const mapped = toGrpcStatus(effective);
    if (mapped.internal) this.logger.error('request failed', { ...logFields, error: effective });
    return { code: mapped.code, details: mapped.details };
  }
}
