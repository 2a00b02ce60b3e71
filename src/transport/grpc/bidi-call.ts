/**
 * One GenerateBidi call: many generations multiplexed by request_id, each ending with exactly
 * one terminal message (a final chunk or a RequestError), in-band cancel, half-close → finish in
 * flight then OK, client cancel → stop everything and write nothing.
 */
import { type ServerDuplexStream, status as GrpcStatus } from '@grpc/grpc-js';
import { DeadlineExceededError, DuplicateRequestError, InvalidRequestError } from '../../errors.js';
import type { Logger } from '../../log.js';
import { CallWriter, effectiveError } from './call-context.js';
import type { ChunkSink, GenerationAdapter, GenerationCall } from './generation-adapter.js';
import type { BidiClientMsg, BidiServerMsg, GenerateRequestMsg } from './messages.js';
import type { BidiRpcScope } from './rpc-wrapper.js';
import { toGrpcStatus } from './status.js';

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
  private readonly scope: BidiRpcScope;
  private readonly generations: GenerationAdapter;
  private readonly logger: Logger;
  private readonly writer: CallWriter<BidiServerMsg>;
  /**
   * Never stops a generation: one whose call is gone ends by the call's abort (and telemetry
   * counts it as cancelled).
   */
  private readonly chunks: ChunkSink;
  private readonly inFlight = new Map<string, InFlight>();
  private halfClosed = false;
  private ended = false;
  private readonly onDraining: () => void;
  private readonly drainSignal: AbortSignal;
  /** Call status for the RPC span: set where the call ends. */
  private endStatus: number = GrpcStatus.CANCELLED;

  constructor(
    call: BidiStream,
    scope: BidiRpcScope,
    generations: GenerationAdapter,
    logger: Logger,
    drainSignal: AbortSignal,
  ) {
    this.call = call;
    this.scope = scope;
    this.generations = generations;
    this.logger = logger;
    this.writer = new CallWriter(call, scope.signal);
    this.chunks = {
      write: async (chunk) => {
        await this.writer.write({ chunk });
        return true;
      },
    };
    this.drainSignal = drainSignal;
    this.onDraining = () => this.maybeEnd();
    drainSignal.addEventListener('abort', this.onDraining, { once: true });
    call.on('data', (message: BidiClientMsg) => this.onMessage(message));
    call.on('end', () => {
      this.halfClosed = true;
      this.maybeEnd();
    });
    call.on('error', (error: Error) => this.logger.debug('bidi call stream error', { error }));
    scope.signal.addEventListener('abort', () => this.finish(), { once: true });
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
    const signal = AbortSignal.any([this.scope.signal, controller.signal]);
    const call: GenerationCall = {
      method: 'GenerateBidi',
      stream: true,
      signal,
      parent: this.scope.parent,
      authorization: this.scope.authorization,
      cancelEndsWithFinal: () => controller.signal.reason instanceof CancelRequested,
    };
    try {
      await this.generations.run(msg, call, () => this.chunks);
    } catch (error) {
      if (this.scope.signal.aborted) return; // the call is gone: nothing can be written
      await this.sendError(requestId, effectiveError(error, signal));
    } finally {
      this.inFlight.delete(requestId);
      this.maybeEnd();
    }
  }

  private async sendError(requestId: string, error: unknown): Promise<void> {
    const mapped = toGrpcStatus(error);
    if (mapped.internal) this.logger.error('generation failed', { requestId, error });
    await this.writer.write({
      error: { request_id: requestId, code: mapped.code, message: mapped.details, reason: mapped.reason },
    });
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
      if (this.writer.open)
        this.call.emit('error', {
          code: GrpcStatus.UNAVAILABLE,
          details: 'server is shutting down; reconnect elsewhere',
        });
    }
  }

  private finish(): void {
    if (this.ended) return;
    this.ended = true;
    this.drainSignal.removeEventListener('abort', this.onDraining);
    if (this.endStatus === GrpcStatus.CANCELLED && this.scope.signal.reason instanceof DeadlineExceededError)
      this.endStatus = GrpcStatus.DEADLINE_EXCEEDED;
    this.scope.end(this.endStatus);
  }
}
