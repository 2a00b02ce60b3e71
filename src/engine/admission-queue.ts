/**
 * Admission control for one model: at most `maxActive` sequences decode at once (each holds a KV
 * cache), at most `maxQueued` requests wait for sequence slots, and anything beyond that is refused
 * at once with OverloadedError — the queue never grows without bound. A "sequence slot" here is
 * the right to decode one sequence; a request with n samples takes n of them.
 */
import { CancelledError, OverloadedError, UnavailableError } from '../errors.js';

export interface AdmissionQueueOptions {
  /** Sequences decoding concurrently (each owns a KV cache). */
  readonly maxActive: number;
  /** Requests waiting for sequence slots; beyond it requests are refused. */
  readonly maxQueued: number;
}

export interface AdmissionQueueState {
  readonly active: number;
  readonly queued: number;
  readonly maxActive: number;
  readonly maxQueued: number;
  readonly draining: boolean;
  /** Requests refused because the queue was full, since start. */
  readonly rejected: number;
}

/** Granted sequence slots; `release` is idempotent so every exit path may call it. */
export interface Lease {
  release(): void;
}

interface Waiter {
  readonly sequences: number;
  readonly grant: (lease: Lease) => void;
}

export class AdmissionQueue {
  readonly maxActive: number;
  readonly maxQueued: number;
  private active = 0;
  private rejected = 0;
  private draining = false;
  private readonly waiters: Waiter[] = [];
  private idleWaiters: Array<() => void> = [];

  constructor(options: AdmissionQueueOptions) {
    if (!Number.isInteger(options.maxActive) || options.maxActive < 1)
      throw new RangeError('maxActive must be an integer ≥ 1');
    if (!Number.isInteger(options.maxQueued) || options.maxQueued < 0)
      throw new RangeError('maxQueued must be an integer ≥ 0');
    this.maxActive = options.maxActive;
    this.maxQueued = options.maxQueued;
  }

  get state(): AdmissionQueueState {
    return {
      active: this.active,
      queued: this.waiters.length,
      maxActive: this.maxActive,
      maxQueued: this.maxQueued,
      draining: this.draining,
      rejected: this.rejected,
    };
  }

  /**
   * Throws OverloadedError now if `acquire` would: lets a caller refuse before doing any work
   * for the request (tokenizing), which is most of a refusal's cost under an overload storm.
   */
  refuseIfFull(): void {
    if (this.active >= this.maxActive && this.waiters.length >= this.maxQueued && !this.draining)
      throw this.overloaded();
  }

  private overloaded(): OverloadedError {
    this.rejected++;
    return new OverloadedError(
      `server is at capacity: ${this.active} generations running and ${this.waiters.length} queued; retry later`,
    );
  }

  /**
   * Resolves with `sequences` sequence slots at once (a request with several samples), in arrival order: a
   * waiter that needs more than is free holds back those behind it, so none starves. Rejects at
   * once with OverloadedError when the queue is full, UnavailableError while draining, and
   * CancelledError if `signal` aborts while waiting.
   */
  acquire(signal?: AbortSignal, sequences = 1): Promise<Lease> {
    if (!Number.isInteger(sequences) || sequences < 1 || sequences > this.maxActive)
      return Promise.reject(new RangeError(`sequences must be an integer in [1, ${this.maxActive}], got ${sequences}`));
    if (signal?.aborted) return Promise.reject(new CancelledError(signal.reason));
    if (this.draining)
      return Promise.reject(new UnavailableError('server is shutting down and accepts no new requests'));
    if (this.waiters.length === 0 && this.active + sequences <= this.maxActive) {
      this.active += sequences;
      return Promise.resolve(this.newLease(sequences));
    }
    if (this.waiters.length >= this.maxQueued) return Promise.reject(this.overloaded());
    return new Promise<Lease>((resolve, reject) => {
      const onAbort = () => {
        const i = this.waiters.indexOf(waiter);
        if (i >= 0) this.waiters.splice(i, 1);
        reject(new CancelledError(signal?.reason));
        // A large waiter leaving may let smaller ones behind it in.
        this.grantWaiters();
        this.notifyIfIdle();
      };
      const waiter: Waiter = {
        sequences,
        grant: (lease) => {
          signal?.removeEventListener('abort', onAbort);
          resolve(lease);
        },
      };
      this.waiters.push(waiter);
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  /** Refuse new requests from now on; queued and running ones still complete. */
  startDraining(): void {
    this.draining = true;
    this.notifyIfIdle();
  }

  /** Resolves once nothing runs or waits. */
  whenIdle(): Promise<void> {
    if (this.active === 0 && this.waiters.length === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private newLease(sequences: number): Lease {
    let released = false;
    return {
      release: () => {
        if (released) return;
        released = true;
        this.active -= sequences;
        this.grantWaiters();
        this.notifyIfIdle();
      },
    };
  }

  /** Grants waiters in order while the first one fits. */
  private grantWaiters(): void {
    for (
      let next = this.waiters[0];
      next !== undefined && this.active + next.sequences <= this.maxActive;
      next = this.waiters[0]
    ) {
      this.waiters.shift();
      this.active += next.sequences;
      next.grant(this.newLease(next.sequences));
    }
  }

  private notifyIfIdle(): void {
    if (this.active !== 0 || this.waiters.length !== 0) return;
    const waiting = this.idleWaiters;
    this.idleWaiters = [];
    for (const resolve of waiting) resolve();
  }
}
