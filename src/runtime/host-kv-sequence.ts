/**
 * A sequence whose KV cache lives in host buffers we own (CPU, onnxruntime-node or the native
 * runner): one tensor per layer's key and value, bound both as past input and as present output,
 * so ORT appends in place; rewind only changes the length passed next time. Every tensor a
 * forward touches is allocated once per sequence (logits per row count, lazily).
 */
import type { ModelManifest } from '../model/model-manifest.js';
import type { GqaBatchExecutor } from './batch-forward.js';
import { checkCopyPrefix } from './check-forward.js';
import { type GraphForwards, kvTensor, runHostForward } from './graph-forwards.js';
import { GqaSequence, LOGITS } from './gqa-sequence.js';
import type { ort } from './ort-session.js';
import type { DecoderSequence } from './types.js';

/** KV positions allocated at first, and the step buffers grow by, up to the sequence's capacity. */
export const KV_POSITIONS_INITIAL = 256;
export const KV_POSITIONS_STEP = 256;

export class HostKvSequence extends GqaSequence {
  /** What runs the forwards: onnxruntime-node's session or the native runner (the strategy; the rest is the same). */
  private readonly forwards: GraphForwards;
  private readonly fetches: Record<string, ort.Tensor> = {};
  /** Positions the KV buffers hold (≥ kvLength; they grow in KV_POSITIONS_STEP steps). */
  private kvPositions = 0;
  /** The native attention kernel's key layout, [head][dim][position]: only that kernel reads this cache. */
  private readonly keysTransposed: boolean;

  constructor(
    forwards: GraphForwards,
    m: ModelManifest,
    capacity: number,
    rowsMin: number,
    batching: GqaBatchExecutor | undefined,
  ) {
    const keysTransposed = forwards.native?.ownAttention === true;
    super(m, capacity, rowsMin, keysTransposed, batching);
    this.forwards = forwards;
    this.keysTransposed = keysTransposed;
    this.bindKv(Math.min(capacity + rowsMin - 1, KV_POSITIONS_INITIAL));
  }

  /**
   * (Re)allocates the KV buffers with `positions` positions, keeping the first kvLength. ORT's CPU
   * GroupQueryAttention with a shared buffer costs time in proportion to the buffer's length, not
   * the sequence's (docs/perf-notes.md), so buffers start small and grow in steps as the sequence does (a copy of the
   * live prefix every KV_POSITIONS_STEP tokens).
   */
  private bindKv(positions: number): void {
    const m = this.manifest;
    const dims = [1, m.kvHeads, positions, m.headDim];
    const size = m.kvHeads * positions * m.headDim;
    for (const [input, output] of this.kvNames) {
      const next = kvTensor(m, size, dims);
      const old = this.feeds[input];
      if (old !== undefined && this.kvLength > 0)
        this.copyKv(
          input,
          old.data as Float32Array,
          this.kvPositions,
          next.data as Float32Array,
          positions,
          this.kvLength,
        );
      this.feeds[input] = next;
      this.fetches[output] = next;
    }
    this.kvPositions = positions;
  }

  /** Copies the first `length` positions of one KV tensor between buffers of `fromPositions` and `toPositions` positions. */
  private copyKv(
    input: string,
    src: Float32Array,
    fromPositions: number,
    dst: Float32Array,
    toPositions: number,
    length: number,
  ): void {
    // Rows of positions ([head][position][dim]); the native attention kernel keeps keys
    // transposed, rows of dims ([head][dim][position]) (native/gqa-attention.c).
    const transposed = this.keysTransposed && input.endsWith('.key');
    const rows = transposed ? this.manifest.kvHeads * this.manifest.headDim : this.manifest.kvHeads;
    const rowFloats = transposed ? 1 : this.manifest.headDim;
    for (let r = 0; r < rows; r++) {
      dst.set(
        src.subarray(r * fromPositions * rowFloats, (r * fromPositions + length) * rowFloats),
        r * toPositions * rowFloats,
      );
    }
  }

  protected reserve(positions: number): void {
    if (positions > this.kvPositions)
      this.bindKv(
        Math.min(this.capacity + this.rowsMin - 1, Math.ceil(positions / KV_POSITIONS_STEP) * KV_POSITIONS_STEP),
      );
  }

  readonly copyPrefixFrom = (source: DecoderSequence, length: number): void => {
    if (!(source instanceof HostKvSequence) || source.manifest !== this.manifest) {
      throw new Error('copyPrefixFrom needs a host-KV sequence of the same model');
    }
    checkCopyPrefix(length, source.kvLength, this.kvLength, this.capacity);
    this.reserve(length + this.rowsMin);
    for (const [input] of this.kvNames) {
      this.copyKv(
        input,
        source.feeds[input]!.data as Float32Array,
        source.kvPositions,
        this.feeds[input]!.data as Float32Array,
        this.kvPositions,
        length,
      );
    }
    this.kvLength = length;
  };

  protected async execute(logits: { data: Float32Array; tensor: ort.Tensor }): Promise<Float32Array> {
    this.fetches[LOGITS] = logits.tensor;
    const pending = runHostForward(this.forwards, this.feeds, this.fetches);
    if (pending !== undefined) await pending;
    return logits.data;
  }

  adoptDeviceKv(): void {
    throw new Error('a host-KV sequence has no device KV to adopt');
  }
}
