/**
 * A sequence of our converted model (anpd-model.json + model.onnx with GroupQueryAttention): what
 * both KV placements share — the forward's inputs, prefill chunks, pad rows, handing forwards to
 * the step scheduler while batching, rewind. Where the KV lives and how a forward runs is the
 * subclass's: HostKvSequence (CPU, onnxruntime-node or the native runner) or DeviceKvSequence
 * (a GPU provider through onnxruntime-node).
 *
 * Batch invariance: ORT's GroupQueryAttention takes a different kernel for one query row than for
 * several, and the int8 activation quantization of MatMulNBits amplifies that 1e-6 difference into
 * logit differences up to ~1. Every forward here therefore runs at least 2 rows: a 1-token forward
 * gets a pad row whose KV position is overwritten next time and whose logits are never computed.
 * With T ≥ 2 the logits of a position are bitwise identical whatever T and row (measured, see
 * docs/perf-notes.md), so verifying a draft gives exactly the tokens plain decoding gives.
 */
import type { ModelManifest } from '../model/model-manifest.js';
import type { BatchableSequence, GqaBatchExecutor } from './batch-forward.js';
import { checkForward, checkRewind, FORWARD_TOKENS_MAX } from './check-forward.js';
import { cachedTensor } from './graph-forwards.js';
import { ort } from './ort-session.js';
import type { DecoderSequence } from './types.js';

// Names must match src/convert/llama-graph.ts IO (the runtime may not import the converter).
const INPUT_IDS = 'input_ids';
const SEQLENS_K = 'seqlens_k';
const TOTAL_SEQUENCE_LENGTH = 'total_sequence_length';
const LOGITS_START = 'logits_start';
const LOGITS_END = 'logits_end';
export const LOGITS = 'logits';

export abstract class GqaSequence implements DecoderSequence, BatchableSequence {
  readonly capacity: number;
  protected kvLength = 0;
  protected disposed = false;
  protected readonly manifest: ModelManifest;
  protected readonly rowsMin: number;
  protected readonly feeds: Record<string, ort.Tensor> = {};
  /** [past input, present output] per KV tensor, in graph order (layer 0 key, layer 0 value, ...). */
  protected readonly kvNames: (readonly [string, string])[] = [];
  private readonly vocab: number;
  private readonly seqlensK = new Int32Array(1);
  private readonly totalLength = new Int32Array(1);
  private readonly logitsStart = new BigInt64Array(1);
  private readonly logitsEnd = new BigInt64Array(1);
  private readonly idsByLength = new Map<number, { data: BigInt64Array; tensor: ort.Tensor }>();
  private readonly logitsByRows = new Map<number, { data: Float32Array; tensor: ort.Tensor }>();
  /** With batch graphs: where forwards go once a step scheduler is attached. */
  private readonly batching: GqaBatchExecutor | undefined;
  /** seqlens_k names the last real row (the native attention kernel: it skips the pad rows), else the last row. */
  private readonly seqlensOfLastRealRow: boolean;

  protected constructor(
    m: ModelManifest,
    capacity: number,
    rowsMin: number,
    seqlensOfLastRealRow: boolean,
    batching: GqaBatchExecutor | undefined,
  ) {
    this.manifest = m;
    this.capacity = capacity;
    this.rowsMin = rowsMin;
    this.vocab = m.vocab;
    this.seqlensOfLastRealRow = seqlensOfLastRealRow;
    this.batching = batching;
    for (let l = 0; l < m.layers; l++)
      this.kvNames.push(
        [`past_key_values.${l}.key`, `present.${l}.key`],
        [`past_key_values.${l}.value`, `present.${l}.value`],
      );
    this.feeds[SEQLENS_K] = new ort.Tensor('int32', this.seqlensK, [1]);
    this.feeds[TOTAL_SEQUENCE_LENGTH] = new ort.Tensor('int32', this.totalLength, []);
    this.feeds[LOGITS_START] = new ort.Tensor('int64', this.logitsStart, [1]);
    this.feeds[LOGITS_END] = new ort.Tensor('int64', this.logitsEnd, [1]);
  }

  get length(): number {
    return this.kvLength;
  }

  async forward(tokens: ArrayLike<number>, logitsRows: number): Promise<Float32Array> {
    if (this.disposed) throw new Error('sequence is disposed');
    const t = tokens.length;
    // Long prompts go in chunks so one forward's activations stay bounded; logits come from the last chunk.
    // With batching, prefill goes in chunks small enough to join the batches (chunked prefill).
    const chunkMax = this.batching?.prefillChunkTokens ?? FORWARD_TOKENS_MAX;
    const lastStart = checkForward(t, logitsRows, this.kvLength, this.capacity, chunkMax);
    for (let start = 0; start < lastStart; start += chunkMax) await this.run(tokens, start, chunkMax, 1);
    return this.run(tokens, lastStart, t - lastStart, logitsRows);
  }

  /** Runs tokens[start, start+count) and returns logits of the last `rows` of them. */
  private run(tokens: ArrayLike<number>, start: number, count: number, rows: number): Promise<Float32Array> {
    const padded = Math.max(count, this.rowsMin);
    this.reserve(this.kvLength + padded);
    const submitter = this.batching?.submitter;
    // (This runtime's forwards never ask for argmax: the result is the logits.)
    if (submitter !== undefined)
      return submitter.submit({ sequence: this, tokens, start, count, padded, rows }) as Promise<Float32Array>;
    return this.runAlone(tokens, start, count, rows);
  }

  /** Makes room for `positions` KV positions before a forward (host buffers grow; device ones are allocated whole). */
  protected abstract reserve(positions: number): void;

  /** Runs the prepared single-sequence forward; the logits land in `logits` (host) or come back from the run (device). */
  protected abstract execute(logits: { data: Float32Array; tensor: ort.Tensor }): Promise<Float32Array>;

  /** The KV tensors in graph order (layer 0 key, layer 0 value, layer 1 key, ...), for a batched forward. */
  kvTensors(): ort.Tensor[] {
    return this.kvNames.map(([past]) => this.feeds[past]!);
  }

  /** This sequence's logits buffer for `rows` rows (made once per row count): a forward's result lives here until its next forward. */
  logitsOf(rows: number): { data: Float32Array; tensor: ort.Tensor } {
    return cachedTensor(
      this.logitsByRows,
      rows,
      (n) => new Float32Array(n * this.vocab),
      (d) => new ort.Tensor('float32', d, [1, rows, this.vocab]),
    );
  }

  /** A batched forward appended `count` positions to this sequence's KV. */
  advance(count: number): void {
    this.kvLength += count;
  }

  /** GPU: a batched forward's present KV tensor (graph order) becomes this sequence's past. */
  abstract adoptDeviceKv(index: number, next: ort.Tensor | undefined): void;

  /** One forward of this sequence alone (the single-sequence graph). */
  async runAlone(tokens: ArrayLike<number>, start: number, count: number, rows: number): Promise<Float32Array> {
    const padded = Math.max(count, this.rowsMin);
    const ids = cachedTensor(
      this.idsByLength,
      padded,
      (n) => new BigInt64Array(n),
      (d) => new ort.Tensor('int64', d, [1, padded]),
    );
    for (let i = 0; i < count; i++) ids.data[i] = BigInt(tokens[start + i]!);
    // Pad rows repeat the last token; causal attention keeps them out of the real rows.
    for (let i = count; i < padded; i++) ids.data[i] = ids.data[count - 1]!;
    const logits = this.logitsOf(rows);
    this.feeds[INPUT_IDS] = ids.tensor;
    // ORT's kernel takes the last row's position; ours the last real row's (it skips the pad rows).
    this.seqlensK[0] = this.kvLength + (this.seqlensOfLastRealRow ? count : padded) - 1;
    this.totalLength[0] = this.kvLength + padded;
    this.logitsStart[0] = BigInt(count - rows);
    this.logitsEnd[0] = BigInt(count);
    const data = await this.execute(logits);
    this.kvLength += count;
    return data;
  }

  rewind(length: number): void {
    checkRewind(length, this.kvLength);
    this.kvLength = length;
  }

  readonly releaseScratch = (): void => {
    this.logitsByRows.clear();
  };

  dispose(): void {
    this.disposed = true;
    this.idsByLength.clear();
    this.logitsByRows.clear();
  }
}
