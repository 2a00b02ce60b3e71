/**
 * Per-call plumbing: one AbortSignal that fires when the client cancels or disconnects or the
 * deadline passes, and a writer that honours HTTP/2 flow control.
 *
 * grpc-js traps handled here: 'cancelled' also fires when a call ends normally (since 1.10), so
 * aborting on it is only harmless because we are done by then; a write after cancel is dropped
 * without its callback, so waiting for 'drain' always races the abort.
 */
import type { EventEmitter } from 'node:events';
import { AnpdError, CancelledError, DeadlineExceededError } from '../../errors.js';

export interface GrpcCallLike extends EventEmitter {
  readonly cancelled: boolean;
  getDeadline(): Date | number;
}

interface WritableCall<T> extends GrpcCallLike {
  write(message: T): boolean;
  readonly destroyed: boolean;
}

export interface CallContext {
  /** Aborts with CancelledError (client went away) or DeadlineExceededError. */
  readonly signal: AbortSignal;
  dispose(): void;
}

/** Longest timer Node accepts; deadlines beyond it are as good as none. */
const TIMER_MS_MAX = 2 ** 31 - 1;

export function createCallContext(call: GrpcCallLike): CallContext {
  const controller = new AbortController();
  const abortCancelled = () => {
    if (!controller.signal.aborted)
      controller.abort(new CancelledError(new Error('the client cancelled the call or disconnected')));
  };
  call.on('cancelled', abortCancelled);
  call.on('close', abortCancelled);
  let timer: NodeJS.Timeout | undefined;
  const deadline = call.getDeadline();
  const deadlineMs = deadline instanceof Date ? deadline.getTime() : deadline;
  if (Number.isFinite(deadlineMs)) {
    const remainingMs = Math.max(0, deadlineMs - Date.now());
    if (remainingMs < TIMER_MS_MAX) {
      timer = setTimeout(() => {
        if (!controller.signal.aborted)
          controller.abort(new DeadlineExceededError('the call deadline passed before the generation finished'));
      }, remainingMs);
      timer.unref();
    }
  }
  if (call.cancelled) abortCancelled();
  return {
    signal: controller.signal,
    dispose: () => {
      if (timer) clearTimeout(timer);
      call.off('cancelled', abortCancelled);
      call.off('close', abortCancelled);
    },
  };
}

/**
 * The error a failed generation should be reported as: an abort is reported for its reason
 * (deadline vs cancel), everything else as itself.
 */
export function effectiveError(error: unknown, signal: AbortSignal): unknown {
  if (error instanceof CancelledError && signal.aborted && signal.reason instanceof AnpdError) return signal.reason;
  return error;
}

/**
 * Serializes writes to one call under flow control: when the stream's buffer (16 messages) is
 * full, `write` waits for 'drain', so decoding of every generation writing here pauses instead
 * of buffering without bound.
 */
export class CallWriter<T> {
  private readonly call: WritableCall<T>;
  private readonly signal: AbortSignal;
  private drained: Promise<void> | undefined;

  constructor(call: WritableCall<T>, signal: AbortSignal) {
    this.call = call;
    this.signal = signal;
  }

  /** False once the call is gone: the message was not (and will not be) delivered. */
  get open(): boolean {
    return !this.signal.aborted && !this.call.cancelled && !this.call.destroyed;
  }

  /** True while the buffer is full. */
  get congested(): boolean {
    return this.drained !== undefined;
  }

  async write(message: T): Promise<boolean> {
    while (this.drained) await this.drained;
    if (!this.open) return false;
    if (!this.call.write(message)) await this.waitForDrain();
    return this.open;
  }

  /** Resolves when the buffer has room again or the call is gone. */
  waitForDrain(): Promise<void> {
    this.drained ??= new Promise<void>((resolve) => {
      const done = () => {
        this.call.off('drain', done);
        this.call.off('close', done);
        this.signal.removeEventListener('abort', done);
        this.drained = undefined;
        resolve();
      };
      this.call.on('drain', done);
      this.call.on('close', done);
      this.signal.addEventListener('abort', done, { once: true });
      if (this.signal.aborted) done();
    });
    return this.drained;
  }
}
