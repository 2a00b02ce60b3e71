/**
 * One GenerateBidi call: many generations multiplexed by request_id, each ending with exactly
 * one terminal message (a final chunk or a RequestError), in-band cancel, half-close → finish in
 * flight then OK, client cancel → stop everything and write nothing.
 */
import type { ServerDuplexStream } from '@grpc/grpc-js';
import { status as GrpcStatus } from '@grpc/grpc-js';
import type { InferenceService } from '../../engine/inference-service.js';
import { type Context, ROOT_CONTEXT, type Span } from '@opentelemetry/api';
import { CancelledError, DeadlineExceededError, DuplicateRequestError, InvalidRequestError } from '../../errors.js';
import type { Logger } from '../../log.js';
import type { GenerationTelemetry } from '../../telemetry/generation-telemetry.js';
import { CallWriter, createCallContext, effectiveError } from './call-context.js';
import {
  type BidiClientMsg,
  type BidiServerMsg,
  type GenerateRequestMsg,
  cancelledFinalInfo,
  deltaChunk,
  parseGenerateRequest,
  toFinalInfo,
} from './messages.js';
import { toGrpcStatus } from './status.js';
import { callerContext, observeGeneration } from './tracing.js';

/** The reason a request's own controller aborts with when the client sends `cancel` for it. */
class CancelRequested extends Error {
  constructor() {
    super('cancelled by a cancel message');
  }
}

interface InFlight {
  readonly controller: AbortController;
}

export type BidiStream = ServerDuplexStream<BidiClientMsg, BidiServerMsg>;

export class BidiCall {
  private readonly call: BidiStream;
  private readonly service: InferenceService;
  private readonly logger: Logger;
  private readonly context;
  private readonly writer: CallWriter<BidiServerMsg>;
  private readonly inFlight = new Map<string, InFlight>();
  private halfClosed = false;
  private ended = false;
  private readonly onDraining: () => void;
  private readonly drainSignal: AbortSignal;

  private readonly telemetry: GenerationTelemetry | undefined;
  private readonly rpc: { span: Span; context: Context } | undefined;
  /** Call status for the RPC span: set where the call ends. */
  private endStatus: number = GrpcStatus.CANCELLED;

  constructor(call: BidiStream, service: InferenceService, logger: Logger, drainSignal: AbortSignal, telemetry?: GenerationTelemetry) {
    this.call = call;
    this.telemetry = telemetry;
    this.rpc = telemetry?.startRpc('GenerateBidi', callerContext(call.metadata));
    this.service = service;
    this.logger = logger;
    this.context = createCallContext(call);
    this.writer = new CallWriter(call, this.context.signal);
    this.drainSignal = drainSignal;
    this.onDraining = () => this.maybeEnd();
    drainSignal.addEventListener('abort', this.onDraining, { once: true });
    call.on('data', (message: BidiClientMsg) => this.onMessage(message));
    call.on('end', () => {
      this.halfClosed = true;
      this.maybeEnd();
    });
    call.on('error', (error: Error) => this.logger.debug('bidi call stream error', { error }));
    this.context.signal.addEventListener('abort', () => this.finish(), { once: true });
  }

  /** For tests and introspection: ids still running on this call. */
  get inFlightIds(): string[] {
    return [...this.inFlight.keys()];
  }

  /** Messages written so far, and whether writing is blocked on flow control. */
  get writes(): { readonly written: number; readonly congested: boolean } {
    return { written: this.writer.written, congested: this.writer.congested };
  }

  private onMessage(message: BidiClientMsg): void {
    if (this.ended) return;
    if (message.msg === 'generate' && message.generate) this.start(message.generate);
    else if (message.msg === 'cancel' && message.cancel) {
      const ids = message.cancel.all ? [...this.inFlight.keys()] : (message.cancel.request_ids ?? []);
      for (const id of ids) this.inFlight.get(id)?.controller.abort(new CancelRequested());
    } else {
      void this.sendError('', new InvalidRequestError('message must set generate or cancel'));
    }
    // Inbound backpressure: stop reading while our replies cannot be written.
    if (this.writer.congested) {
      this.call.pause();
      void this.writer.waitForDrain().then(() => this.call.resume());
    }
  }

  private start(msg: GenerateRequestMsg): void {
    const requestId = msg.request_id ?? '';
    if (requestId === '') {
      void this.sendError('', new InvalidRequestError('request_id is required in GenerateBidi'));
      return;
    }
    if (this.inFlight.has(requestId)) {
      // Refers to the rejected duplicate; the original request goes on.
      void this.sendError(requestId, new DuplicateRequestError(requestId));
      return;
    }
    const controller = new AbortController();
    this.inFlight.set(requestId, { controller });
    void this.run(requestId, msg, controller);
  }

  private async run(requestId: string, msg: GenerateRequestMsg, controller: AbortController): Promise<void> {
    const received = performance.now();
    const signal = AbortSignal.any([this.context.signal, controller.signal]);
    let seed = '0';
    let seq = 0;
    try {
      const parsed = parseGenerateRequest(msg);
      seed = parsed.seed;
      const meta = { method: 'GenerateBidi', requestId, model: this.service.modelName, request: parsed.request, stream: true };
      const texts = (ids: readonly number[]) => this.service.decodeTokens(parsed.model, ids);
      const events = this.service.generate(parsed.model, parsed.request, signal);
      for await (const event of observeGeneration(this.telemetry, events, meta, this.rpc?.context ?? ROOT_CONTEXT, signal)) {
        if (event.type === 'delta') {
          await this.writer.write({ chunk: deltaChunk(requestId, seq++, event, texts) });
        } else {
          await this.writer.write({
            chunk: { request_id: requestId, seq: seq++, text: '', token_ids: [], final: toFinalInfo(event, seed) },
          });
        }
      }
    } catch (error) {
      if (this.context.signal.aborted) return; // the call is gone: nothing can be written
      if (error instanceof CancelledError && controller.signal.reason instanceof CancelRequested) {
        const final = cancelledFinalInfo(error.progress, 0, performance.now() - received, seed); // queue time is known only at the final event
        await this.writer.write({ chunk: { request_id: requestId, seq: seq++, text: '', token_ids: [], final } });
      } else {
        await this.sendError(requestId, effectiveError(error, signal));
      }
    } finally {
      this.inFlight.delete(requestId);
      this.maybeEnd();
    }
  }

  private async sendError(requestId: string, error: unknown): Promise<void> {
    const mapped = toGrpcStatus(error);
    if (mapped.internal) this.logger.error('generation failed', { requestId, error });
    await this.writer.write({ error: { request_id: requestId, code: mapped.code, message: mapped.details, reason: mapped.reason } });
  }

  /** Ends the call once nothing is in flight and the client half-closed or the server drains. */
  private maybeEnd(): void {
    if (this.ended || this.inFlight.size > 0) return;
    if (this.halfClosed) {
      if (this.writer.open) this.endStatus = GrpcStatus.OK;
      this.finish();
      if (this.writer.open) this.call.end();
    } else if (this.drainSignal.aborted) {
      if (this.writer.open) this.endStatus = GrpcStatus.UNAVAILABLE;
      this.finish();
      if (this.writer.open) this.call.emit('error', { code: GrpcStatus.UNAVAILABLE, details: 'server is shutting down; reconnect elsewhere' });
    }
  }

  private finish(): void {
    if (this.ended) return;
    this.ended = true;
    this.drainSignal.removeEventListener('abort', this.onDraining);
    this.context.dispose();
    if (this.rpc) {
      const reason = this.context.signal.reason;
      if (this.endStatus === GrpcStatus.CANCELLED && reason instanceof DeadlineExceededError) this.endStatus = GrpcStatus.DEADLINE_EXCEEDED;
      this.telemetry?.endRpc(this.rpc.span, this.endStatus, this.endStatus === GrpcStatus.OK ? undefined : GrpcStatus[this.endStatus]);
    }
  }
}
