/**
 * Runner for our converted models (anpd-model.json + model.onnx with GroupQueryAttention).
 * Each sequence owns fixed-capacity KV tensors that are bound both as past inputs and as present
 * outputs, so ORT appends in place; rewind only changes the length we pass next time.
 * Every tensor a forward touches is allocated once per sequence (logits per row count, lazily).
 *
 * Batch invariance: ORT's GroupQueryAttention takes a different kernel for one query row than for
 * several, and the int8 activation quantization of MatMulNBits amplifies that 1e-6 difference into
 * logit differences up to ~1. Every forward here therefore runs at least 2 rows: a 1-token forward
 * gets a pad row whose KV slot is overwritten next time and whose logits are never computed.
 * With T ≥ 2 the logits of a position are bitwise identical whatever T and row (measured, see
 * docs/perf-notes.md), so verifying a draft gives exactly the tokens plain decoding gives.
 */
import { ContextOverflowError, InvalidRequestError } from '../errors.js';
import type { ModelManifest } from '../model/model-manifest.js';
import { type BatchableSequence, type BatchGraph, GqaBatchExecutor } from './batch-forward.js';
import { cachedTensor, type GraphForwards, kvTensor, releaseForwards } from './graph-forwards.js';
import { ort } from './ort-session.js';
import type { DecoderModel, DecoderSequence, ModelInfo, RuntimeOptions } from './types.js';

// Names must match src/convert/llama-graph.ts IO (the runtime may not import the converter).
const INPUT_IDS = 'input_ids';
const SEQLENS_K = 'seqlens_k';
const TOTAL_SEQUENCE_LENGTH = 'total_sequence_length';
const LOGITS_START = 'logits_start';
const LOGITS_END = 'logits_end';
/** Query rows every forward runs at least on the CPU (see batch invariance above). */
export const FORWARD_ROWS_MIN = 2;
/**
 * On WebGPU, MatMulNBits takes another kernel from 4 rows on (the T-ratio table steps there), and
 * with 2-row forwards plain decoding and draft verification gave different tokens on 3 of 10
 * prompts on an H200 (docs/perf-notes.md, "GPU"): GPU forwards run at least 4 rows.
 */
export const FORWARD_ROWS_MIN_GPU = 4;
const LOGITS = 'logits';

/** KV positions allocated at first, and the step buffers grow by, up to the sequence's capacity. */
export const KV_POSITIONS_INITIAL = 256;
export const KV_POSITIONS_STEP = 256;
/** Largest single forward (prefill chunk); larger prompts are fed in chunks of this size. */
export const FORWARD_TOKENS_MAX = 512;

export class GqaDecoderModel implements DecoderModel {
  readonly info: ModelInfo;
  private readonly forwards: GraphForwards;
  private readonly manifest: ModelManifest;
  private readonly defaultCapacity: number;
  private readonly rowsMin: number;
  readonly batchExecutor: GqaBatchExecutor | undefined;

  /** `batches`: batch graphs of the same weights, any widths (the step scheduler picks one per forward). */
  constructor(forwards: GraphForwards, manifest: ModelManifest, options: RuntimeOptions, batches: readonly BatchGraph[] = []) {
    this.forwards = forwards;
    const native = forwards.native;
    this.manifest = manifest;
    const executionProvider = options.executionProvider;
    this.rowsMin = options.forwardRowsMin ?? (executionProvider === 'cpu' ? FORWARD_ROWS_MIN : FORWARD_ROWS_MIN_GPU);
    if (!Number.isInteger(this.rowsMin) || this.rowsMin < 1 || this.rowsMin > 64) throw new RangeError(`forwardRowsMin must be an integer in [1, 64], got ${this.rowsMin}`);
    this.defaultCapacity = Math.min(options.kvCapacity, manifest.contextLength);
    this.info = {
      name: manifest.name,
      kind: 'anpd-gqa',
      architecture: manifest.architecture,
      vocabSize: manifest.vocab,
      contextLength: Math.min(manifest.contextLength - (this.rowsMin - 1), this.defaultCapacity),
      bosTokenId: manifest.bosTokenId ?? undefined,
      eosTokenIds: manifest.eosTokenIds,
      executionProvider,
      batchSlots: Math.max(1, ...batches.map((b) => b.width)),
      forwardRowsMin: this.rowsMin,
      runner: native === undefined ? 'onnxruntime-node' : 'native',
      attention: native?.ownAttention ? 'native' : 'onnxruntime',
    };
    const chunk = options.batchPrefillChunkTokens ?? FORWARD_TOKENS_MAX;
    if (!Number.isInteger(chunk) || chunk < 1 || chunk > FORWARD_TOKENS_MAX) throw new RangeError(`batchPrefillChunkTokens must be an integer in [1, ${FORWARD_TOKENS_MAX}], got ${chunk}`);
    this.batchExecutor = batches.length === 0 ? undefined : new GqaBatchExecutor(batches, manifest, executionProvider !== 'cpu', chunk);
  }

  createSequence(options?: { readonly capacity?: number }): DecoderSequence {
    // One position stays free for the pad row (rotary tables cover contextLength positions).
    const capacity = Math.min(options?.capacity ?? this.defaultCapacity, this.manifest.contextLength - (this.rowsMin - 1));
    return new GqaSequence(this.forwards, this.manifest, capacity, this.rowsMin, this.info.executionProvider !== 'cpu', this.batchExecutor);
  }

  async dispose(): Promise<void> {
    await this.batchExecutor?.dispose();
    await releaseForwards(this.forwards);
  }
}

class GqaSequence implements DecoderSequence, BatchableSequence {
  readonly capacity: number;
  private kvLength = 0;
  private readonly forwards: GraphForwards;
  private readonly vocab: number;
  private readonly feeds: Record<string, ort.Tensor> = {};
  private readonly fetches: Record<string, ort.Tensor> = {};
  private readonly seqlensK = new Int32Array(1);
  private readonly totalLength = new Int32Array(1);
  private readonly logitsStart = new BigInt64Array(1);
  private readonly logitsEnd = new BigInt64Array(1);
  private readonly idsByLength = new Map<number, { data: BigInt64Array; tensor: ort.Tensor }>();
  private readonly logitsByRows = new Map<number, { data: Float32Array; tensor: ort.Tensor }>();
  private disposed = false;
  /** Positions the KV buffers hold (≥ kvLength; they grow in KV_POSITIONS_STEP steps). */
  private kvPositions = 0;
  private readonly layers: number;
  private readonly kvHeads: number;
  private readonly headDim: number;
  private readonly rowsMin: number;
  /** GPU: the KV cache lives on the device; `past` is bound to the previous forward's `present`. */
  private readonly deviceKv: boolean;
  private readonly kvNames: (readonly [string, string])[] = [];
  /** With batch graphs: where forwards go once a step scheduler is attached. */
  private readonly batching: GqaBatchExecutor | undefined;

  /** The native attention kernel's key layout, [head][dim][position]: only that kernel reads this cache. */
  private readonly keysTransposed: boolean;

  private readonly manifest: ModelManifest;

  constructor(forwards: GraphForwards, m: ModelManifest, capacity: number, rowsMin: number, deviceKv: boolean, batching?: GqaBatchExecutor) {
    this.forwards = forwards;
    this.manifest = m;
    this.keysTransposed = forwards.native?.ownAttention === true;
    this.batching = batching;
    this.capacity = capacity;
    this.rowsMin = rowsMin;
    this.deviceKv = deviceKv;
    for (let l = 0; l < m.layers; l++) this.kvNames.push([`past_key_values.${l}.key`, `present.${l}.key`], [`past_key_values.${l}.value`, `present.${l}.value`]);
    this.vocab = m.vocab;
    this.layers = m.layers;
    this.kvHeads = m.kvHeads;
    this.headDim = m.headDim;
    // Device buffers cannot grow from here (no device-side copy): they get the full capacity.
    this.bindKv(deviceKv ? capacity + rowsMin - 1 : Math.min(capacity + rowsMin - 1, KV_POSITIONS_INITIAL));
    this.feeds[SEQLENS_K] = new ort.Tensor('int32', this.seqlensK, [1]);
    this.feeds[TOTAL_SEQUENCE_LENGTH] = new ort.Tensor('int32', this.totalLength, []);
    this.feeds[LOGITS_START] = new ort.Tensor('int64', this.logitsStart, [1]);
    this.feeds[LOGITS_END] = new ort.Tensor('int64', this.logitsEnd, [1]);
  }

  get length(): number {
    return this.kvLength;
  }

  /**
   * (Re)allocates the KV buffers with `positions` positions, keeping the first kvLength. ORT's CPU
   * GroupQueryAttention with a shared buffer costs time in proportion to the buffer's length, not
   * the sequence's (docs/perf-notes.md), so buffers start small and grow in steps as the sequence does (a copy of the
   * live prefix every KV_POSITIONS_STEP tokens).
   */
  private bindKv(positions: number): void {
    const dims = [1, this.kvHeads, positions, this.headDim];
    const size = this.kvHeads * positions * this.headDim;
    for (let l = 0; l < this.layers; l++) {
      for (const [input, output] of [
        [`past_key_values.${l}.key`, `present.${l}.key`],
        [`past_key_values.${l}.value`, `present.${l}.value`],
      ] as const) {
        const next = kvTensor(this.manifest, size, dims);
        const old = this.feeds[input];
        if (old !== undefined && this.kvLength > 0) this.copyKv(input, old.data as Float32Array, this.kvPositions, next.data as Float32Array, positions, this.kvLength);
        this.feeds[input] = next;
        this.fetches[output] = next;
      }
    }
    this.kvPositions = positions;
  }

  /** Copies the first `length` positions of one KV tensor between buffers of `fromPositions` and `toPositions` positions. */
  private copyKv(input: string, src: Float32Array, fromPositions: number, dst: Float32Array, toPositions: number, length: number): void {
    // Rows of positions ([head][position][dim]); the native attention kernel keeps keys
    // transposed, rows of dims ([head][dim][position]) (native/gqa-attention.c).
    const transposed = this.keysTransposed && input.endsWith('.key');
    const rows = transposed ? this.kvHeads * this.headDim : this.kvHeads;
    const rowFloats = transposed ? 1 : this.headDim;
    for (let r = 0; r < rows; r++) {
      dst.set(src.subarray(r * fromPositions * rowFloats, (r * fromPositions + length) * rowFloats), r * toPositions * rowFloats);
    }
  }

  readonly copyPrefixFrom = (source: DecoderSequence, length: number): void => {
    if (!(source instanceof GqaSequence) || source.manifest !== this.manifest || this.deviceKv || source.deviceKv) {
      throw new Error('copyPrefixFrom needs a host-KV sequence of the same model');
    }
    if (this.kvLength !== 0) throw new Error('copyPrefixFrom needs an empty sequence');
    if (!Number.isInteger(length) || length < 0 || length > source.kvLength || length > this.capacity) {
      throw new RangeError(`copy of ${length} positions from a sequence of ${source.kvLength} into a capacity of ${this.capacity}`);
    }
    if (length + this.rowsMin > this.kvPositions) this.bindKv(Math.min(this.capacity + this.rowsMin - 1, Math.ceil((length + this.rowsMin) / KV_POSITIONS_STEP) * KV_POSITIONS_STEP));
    for (const [input] of this.kvNames) {
      this.copyKv(input, source.feeds[input]!.data as Float32Array, source.kvPositions, this.feeds[input]!.data as Float32Array, this.kvPositions, length);
    }
    this.kvLength = length;
  };

  async forward(tokens: ArrayLike<number>, logitsRows: number): Promise<Float32Array> {
    if (this.disposed) throw new Error('sequence is disposed');
    const t = tokens.length;
    if (t === 0) throw new InvalidRequestError('forward needs at least one token');
    if (logitsRows < 1 || logitsRows > t) throw new InvalidRequestError(`logitsRows ${logitsRows} must be in [1, ${t}]`);
    if (this.kvLength + t > this.capacity) {
      throw new ContextOverflowError(`sequence of ${this.kvLength + t} tokens exceeds the KV capacity of ${this.capacity}`);
    }
    // Long prompts go in chunks so one forward's activations stay bounded; logits come from the last chunk.
    // With batching, prefill goes in chunks small enough to join the batches (chunked prefill).
    const chunkMax = this.batching?.prefillChunkTokens ?? FORWARD_TOKENS_MAX;
    const lastChunk = t - Math.floor((t - 1) / chunkMax) * chunkMax;
    if (logitsRows > lastChunk) throw new InvalidRequestError(`at most ${lastChunk} logits rows for a forward of ${t} tokens`);
    let start = 0;
    while (t - start > chunkMax) {
      await this.run(tokens, start, chunkMax, 1);
      start += chunkMax;
    }
    return this.run(tokens, start, t - start, logitsRows);
  }

  /** Runs tokens[start, start+count) and returns logits of the last `rows` of them. */
  private run(tokens: ArrayLike<number>, start: number, count: number, rows: number): Promise<Float32Array> {
    const padded = Math.max(count, this.rowsMin);
    if (this.kvLength + padded > this.kvPositions) {
      const needed = Math.ceil((this.kvLength + padded) / KV_POSITIONS_STEP) * KV_POSITIONS_STEP;
      this.bindKv(Math.min(this.capacity + this.rowsMin - 1, needed));
    }
    const submitter = this.batching?.submitter;
    if (submitter !== undefined) return submitter.submit({ sequence: this, tokens, start, count, padded, rows });
    return this.runAlone(tokens, start, count, rows);
  }

  /** The KV tensors in graph order (layer 0 key, layer 0 value, layer 1 key, ...), for a batched forward. */
  kvTensors(): ort.Tensor[] {
    return this.kvNames.map(([past]) => this.feeds[past]!);
  }

  /** This sequence's logits buffer for `rows` rows (made once per row count): a forward's result lives here until its next forward. */
  logitsOf(rows: number): { data: Float32Array; tensor: ort.Tensor } {
    return cachedTensor(this.logitsByRows, rows, (n) => new Float32Array(n * this.vocab), (d) => new ort.Tensor('float32', d, [1, rows, this.vocab]));
  }

  /** A batched forward appended `count` positions to this sequence's KV. */
  advance(count: number): void {
    this.kvLength += count;
  }

  /** One forward of this sequence alone (the single-sequence graph). */
  async runAlone(tokens: ArrayLike<number>, start: number, count: number, rows: number): Promise<Float32Array> {
    const padded = Math.max(count, this.rowsMin);
    let ids = this.idsByLength.get(padded);
    if (ids === undefined) {
      const data = new BigInt64Array(padded);
      ids = { data, tensor: new ort.Tensor('int64', data, [1, padded]) };
      this.idsByLength.set(padded, ids);
    }
    for (let i = 0; i < count; i++) ids.data[i] = BigInt(tokens[start + i]!);
    // Pad rows repeat the last token; causal attention keeps them out of the real rows.
    for (let i = count; i < padded; i++) ids.data[i] = ids.data[count - 1]!;
    const logits = this.logitsOf(rows);
    this.feeds[INPUT_IDS] = ids.tensor;
    // ORT's kernel takes the last row's position; ours the last real row's (it skips the pad rows).
    this.seqlensK[0] = this.kvLength + (this.keysTransposed ? count : padded) - 1;
    this.totalLength[0] = this.kvLength + padded;
    this.logitsStart[0] = BigInt(count - rows);
    this.logitsEnd[0] = BigInt(count);
    this.fetches[LOGITS] = logits.tensor;
    if (this.deviceKv) {
      const data = await this.runOnDevice();
      this.kvLength += count;
      return data;
    }
    if (this.forwards.native !== undefined) this.forwards.native.run(this.feeds, this.fetches);
    else await this.forwards.session.run(this.feeds, this.fetches);
    this.kvLength += count;
    return logits.data;
  }

  /**
   * GPU forward. The first one uploads the host zeros as `past` once; every forward's `present`
   * (the past prefix plus the new rows, allocated by ORT on the device) becomes the next `past`, and
   * the old one is released. WebGPU's attention cannot bind one buffer as both (Dawn refuses a
   * writable buffer bound twice), hence a new buffer per forward instead of the CPU's in-place
   * append. With device outputs in play ORT ignores pre-allocated host outputs, so the logits are
   * read from the result. Only ids go up and logits rows come down; a rejected draft is rolled back
   * by passing a shorter length, as on the CPU.
   */
  private async runOnDevice(): Promise<Float32Array> {
    // GPU providers never get the native runner (it runs host buffers on the CPU).
    const session = this.forwards.session;
    if (session === undefined) throw new Error('device KV needs an onnxruntime-node session');
    const results = await session.run(this.feeds);
    this.kvNames.forEach(([, present], i) => this.adoptDeviceKv(i, results[present]));
    return results[LOGITS]!.data as Float32Array;
  }

  /** GPU: a forward's present KV tensor (graph order) becomes this sequence's past; the old one is freed. */
  adoptDeviceKv(index: number, next: ort.Tensor | undefined): void {
    const [past, present] = this.kvNames[index]!;
    if (next === undefined || next.location !== 'gpu-buffer') {
      throw new Error(`${present} came back at "${next?.location}", not on the device: the provider did not keep the KV cache`);
    }
    const previous = this.feeds[past]!;
    if (previous.location === 'gpu-buffer') previous.dispose();
    this.feeds[past] = next;
  }

  rewind(length: number): void {
    if (!Number.isInteger(length) || length < 0 || length > this.kvLength) {
      throw new RangeError(`rewind to ${length} outside [0, ${this.kvLength}]`);
    }
    this.kvLength = length;
  }

  dispose(): void {
    this.disposed = true;
    for (const [past] of this.kvNames) if (this.feeds[past]?.location === 'gpu-buffer') this.feeds[past].dispose();
    this.idsByLength.clear();
    this.logitsByRows.clear();
  }
}
