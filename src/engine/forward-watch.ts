/**
 * Progress of a model's forwards, for the replica watchdog: how many are in flight and when one
 * last started from idle or finished. A replica whose forwards are in flight with no progress for
 * longer than the forward timeout is wedged (a native hang, a stuck GPU). Wraps a DecoderModel's
 * sequences in place, so the Engine above needs no hooks.
 */
import { existsSync, readFileSync, unlinkSync } from 'node:fs';
import type { DecoderModel, DecoderSequence } from '../runtime/types.js';

export class ForwardWatch {
  inFlight = 0;
  /** Epoch ms of the last forward that finished, or that started while none ran. */
  progressAt = Date.now();
  private readonly wedgeFile: string | undefined;

  /**
   * `wedgeFile` (tests only, ANPD_TEST_WEDGE_FILE): when that file exists at a forward's start and
   * this replica deletes it first, the forward never returns — "async" (the default: the worker's
   * event loop runs on) or "sync" (its content; the thread blocks, as in a native hang).
   */
  constructor(wedgeFile?: string) {
    this.wedgeFile = wedgeFile;
  }

  /** From now on every sequence `model` creates reports its forwards here. */
  attach(model: DecoderModel): void {
    const create = model.createSequence.bind(model);
    const inner = new WeakMap<DecoderSequence, DecoderSequence>();
    (model as { createSequence: DecoderModel['createSequence'] }).createSequence = (options) => {
      const sequence = create(options);
      const watched = this.watch(sequence, inner);
      inner.set(watched, sequence);
      return watched;
    };
  }

  private watch(sequence: DecoderSequence, inner: WeakMap<DecoderSequence, DecoderSequence>): DecoderSequence {
    const timed = <T>(forward: (tokens: ArrayLike<number>, rows: number) => Promise<T>) => async (tokens: ArrayLike<number>, rows: number): Promise<T> => {
      if (this.inFlight++ === 0) this.progressAt = Date.now();
      try {
        if (this.wedgeFile !== undefined) await this.maybeWedge();
        return await forward(tokens, rows);
      } finally {
        this.inFlight--;
        this.progressAt = Date.now();
      }
    };
    const greedy = sequence.forwardGreedy;
    const copy = sequence.copyPrefixFrom;
    return {
      get length() {
        return sequence.length;
      },
      get capacity() {
        return sequence.capacity;
      },
      forward: timed((tokens, rows) => sequence.forward(tokens, rows)),
      forwardGreedy: greedy === undefined ? undefined : timed((tokens, rows) => greedy(tokens, rows)),
      copyPrefixFrom: copy === undefined ? undefined : (source, length) => copy(inner.get(source) ?? source, length),
      rewind: (length) => sequence.rewind(length),
      dispose: () => sequence.dispose(),
    };
  }

  private async maybeWedge(): Promise<void> {
    if (this.wedgeFile === undefined || !existsSync(this.wedgeFile)) return;
    let mode: string;
    try {
      mode = readFileSync(this.wedgeFile, 'utf8').trim();
      unlinkSync(this.wedgeFile); // only the replica that deletes it wedges
    } catch {
      return;
    }
    if (mode === 'sync') Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0);
    await new Promise<never>(() => {});
  }
}
