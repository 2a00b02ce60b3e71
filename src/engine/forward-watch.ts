/**
 * Progress of a model's forwards, for the replica watchdog: how many are in flight and when one
 * last started from idle or finished. A replica whose forwards are in flight with no progress for
 * longer than the forward timeout is wedged (a native hang, a stuck GPU). A DecoderModel that
 * wraps the real one (and each sequence it creates), so the Engine above needs no hooks.
 */
import type { DecoderModel, DecoderSequence } from '../runtime/types.js';

export class ForwardWatch implements DecoderModel {
  inFlight = 0;
  /** Epoch ms of the last forward that finished, or that started while none ran. */
  progressAt = Date.now();
  private readonly model: DecoderModel;

  constructor(model: DecoderModel) {
    this.model = model;
  }

  get info(): DecoderModel['info'] {
    return this.model.info;
  }

  get plan(): DecoderModel['plan'] {
    return this.model.plan;
  }

  /** The wrapped model's batch graphs: the step scheduler attaches to them through the watch (the watched sequences submit to the inner ones). */
  get batchExecutor(): DecoderModel['batchExecutor'] {
    return this.model.batchExecutor;
  }

  createSequence(options?: { readonly capacity?: number }): DecoderSequence {
    return new WatchedSequence(this.model.createSequence(options), this);
  }

  dispose(): Promise<void> {
    return this.model.dispose();
  }

  /** A forward of one of its sequences starts. */
  started(): void {
    if (this.inFlight++ === 0) this.progressAt = Date.now();
  }

  /** That forward returned or threw. */
  finished(): void {
    this.inFlight--;
    this.progressAt = Date.now();
  }
}

/** A sequence whose forwards report to its ForwardWatch. */
class WatchedSequence implements DecoderSequence {
  readonly forwardGreedy: ((tokens: ArrayLike<number>, rows: number) => Promise<Int32Array>) | undefined;
  readonly copyPrefixFrom: ((source: DecoderSequence, length: number) => void) | undefined;
  readonly fill: ((tokens: ArrayLike<number>) => Promise<void>) | undefined;
  readonly releaseScratch: (() => void) | undefined;
  private readonly sequence: DecoderSequence;
  private readonly watch: ForwardWatch;

  constructor(sequence: DecoderSequence, watch: ForwardWatch) {
    this.sequence = sequence;
    this.watch = watch;
    // Present exactly where the wrapped sequence has them: the Engine branches on their presence.
    this.forwardGreedy = sequence.forwardGreedy === undefined ? undefined : (tokens, rows) => this.greedy(tokens, rows);
    // The runtime copies between its own sequences: hand it the wrapped source.
    this.copyPrefixFrom =
      sequence.copyPrefixFrom === undefined
        ? undefined
        : (source, length) =>
            sequence.copyPrefixFrom!(source instanceof WatchedSequence ? source.sequence : source, length);
    this.fill = sequence.fill === undefined ? undefined : (tokens) => this.watched(() => sequence.fill!(tokens));
    this.releaseScratch = sequence.releaseScratch;
  }

  private async watched<T>(run: () => Promise<T>): Promise<T> {
    this.watch.started();
    try {
      return await run();
    } finally {
      this.watch.finished();
    }
  }

  get length(): number {
    return this.sequence.length;
  }

  get capacity(): number {
    return this.sequence.capacity;
  }

  async forward(tokens: ArrayLike<number>, logitsRows: number): Promise<Float32Array> {
    this.watch.started();
    try {
      return await this.sequence.forward(tokens, logitsRows);
    } finally {
      this.watch.finished();
    }
  }

  private async greedy(tokens: ArrayLike<number>, rows: number): Promise<Int32Array> {
    this.watch.started();
    try {
      return await this.sequence.forwardGreedy!(tokens, rows);
    } finally {
      this.watch.finished();
    }
  }

  rewind(length: number): void {
    this.sequence.rewind(length);
  }

  dispose(): void {
    this.sequence.dispose();
  }
}
