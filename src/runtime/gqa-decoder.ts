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
export const KV_SLOTS_INITIAL = 256;
export const KV_SLOTS_STEP = 256;
/** Largest single forward (prefill chunk); larger prompts are fed in chunks of this size. */
export const FORWARD_TOKENS_MAX = 512;

export class GqaDecoderModel implements DecoderModel {
  readonly info: ModelInfo;
  private readonly session: ort.InferenceSession;
  private readonly manifest: ModelManifest;
  private readonly defaultCapacity: number;
  private readonly rowsMin: number;

  constructor(session: ort.InferenceSession, manifest: ModelManifest, options: RuntimeOptions) {
    this.session = session;
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
    };
  }

  createSequence(options?: { readonly capacity?: number }): DecoderSequence {
    // One position stays free for the pad row (rotary tables cover contextLength positions).
    const capacity = Math.min(options?.capacity ?? this.defaultCapacity, this.manifest.contextLength - (this.rowsMin - 1));
    return new GqaSequence(this.session, this.manifest, capacity, this.rowsMin, this.info.executionProvider !== 'cpu');
  }

  async dispose(): Promise<void> {
    await this.session.release();
  }
}

class GqaSequence implements DecoderSequence {
  readonly capacity: number;
  private kvLength = 0;
  private readonly session: ort.InferenceSession;
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
  private slots = 0;
  private readonly layers: number;
  private readonly kvHeads: number;
  private readonly headDim: number;
  private readonly rowsMin: number;
  /** GPU: the KV cache lives on the device; `past` is bound to the previous forward's `present`. */
  private readonly deviceKv: boolean;
  private readonly kvNames: (readonly [string, string])[] = [];

  constructor(session: ort.InferenceSession, m: ModelManifest, capacity: number, rowsMin: number, deviceKv: boolean) {
    this.session = session;
    this.capacity = capacity;
    this.rowsMin = rowsMin;
    this.deviceKv = deviceKv;
    for (let l = 0; l < m.layers; l++) this.kvNames.push([`past_key_values.${l}.key`, `present.${l}.key`], [`past_key_values.${l}.value`, `present.${l}.value`]);
    this.vocab = m.vocab;
    this.layers = m.layers;
    this.kvHeads = m.kvHeads;
    this.headDim = m.headDim;
    // Device buffers cannot grow from here (no device-side copy): they get the full capacity.
    this.bindKv(deviceKv ? capacity + rowsMin - 1 : Math.min(capacity + rowsMin - 1, KV_SLOTS_INITIAL));
    this.feeds[SEQLENS_K] = new ort.Tensor('int32', this.seqlensK, [1]);
    this.feeds[TOTAL_SEQUENCE_LENGTH] = new ort.Tensor('int32', this.totalLength, []);
    this.feeds[LOGITS_START] = new ort.Tensor('int64', this.logitsStart, [1]);
    this.feeds[LOGITS_END] = new ort.Tensor('int64', this.logitsEnd, [1]);
  }

  get length(): number {
    return this.kvLength;
  }

  /**
   * (Re)allocates the KV buffers with `slots` positions, keeping the first kvLength. ORT's CPU
   * GroupQueryAttention with a shared buffer costs time in proportion to the buffer's length, not
   * the sequence's (docs/perf-notes.md), so buffers start small and grow in steps as the sequence does (a copy of the
   * live prefix every KV_SLOTS_STEP tokens).
   */
  private bindKv(slots: number): void {
    const dims = [1, this.kvHeads, slots, this.headDim];
    const size = this.kvHeads * slots * this.headDim;
    const rowFloats = this.headDim;
    for (let l = 0; l < this.layers; l++) {
      for (const [input, output] of [
        [`past_key_values.${l}.key`, `present.${l}.key`],
        [`past_key_values.${l}.value`, `present.${l}.value`],
      ] as const) {
        const next = new ort.Tensor('float32', new Float32Array(size), dims);
        const old = this.feeds[input];
        if (old !== undefined && this.kvLength > 0) {
          const src = old.data as Float32Array;
          const dst = next.data as Float32Array;
          for (let h = 0; h < this.kvHeads; h++) {
            dst.set(src.subarray(h * this.slots * rowFloats, (h * this.slots + this.kvLength) * rowFloats), h * slots * rowFloats);
          }
        }
        this.feeds[input] = next;
        this.fetches[output] = next;
      }
    }
    this.slots = slots;
  }

  async forward(tokens: ArrayLike<number>, logitsRows: number): Promise<Float32Array> {
    if (this.disposed) throw new Error('sequence is disposed');
    const t = tokens.length;
    if (t === 0) throw new InvalidRequestError('forward needs at least one token');
    if (logitsRows < 1 || logitsRows > t) throw new InvalidRequestError(`logitsRows ${logitsRows} must be in [1, ${t}]`);
    if (this.kvLength + t > this.capacity) {
      throw new ContextOverflowError(`sequence of ${this.kvLength + t} tokens exceeds the KV capacity of ${this.capacity}`);
    }
    // Long prompts go in chunks so one forward's activations stay bounded; logits come from the last chunk.
    const lastChunk = t - Math.floor((t - 1) / FORWARD_TOKENS_MAX) * FORWARD_TOKENS_MAX;
    if (logitsRows > lastChunk) throw new InvalidRequestError(`at most ${lastChunk} logits rows for a forward of ${t} tokens`);
    let start = 0;
    while (t - start > FORWARD_TOKENS_MAX) {
      await this.run(tokens, start, FORWARD_TOKENS_MAX, 1);
      start += FORWARD_TOKENS_MAX;
    }
    return this.run(tokens, start, t - start, logitsRows);
  }

  /** Runs tokens[start, start+count) and returns logits of the last `rows` of them. */
  private async run(tokens: ArrayLike<number>, start: number, count: number, rows: number): Promise<Float32Array> {
    const padded = Math.max(count, this.rowsMin);
    if (this.kvLength + padded > this.slots) {
      const needed = Math.ceil((this.kvLength + padded) / KV_SLOTS_STEP) * KV_SLOTS_STEP;
      this.bindKv(Math.min(this.capacity + this.rowsMin - 1, needed));
    }
    let ids = this.idsByLength.get(padded);
    if (ids === undefined) {
      const data = new BigInt64Array(padded);
      ids = { data, tensor: new ort.Tensor('int64', data, [1, padded]) };
      this.idsByLength.set(padded, ids);
    }
    for (let i = 0; i < count; i++) ids.data[i] = BigInt(tokens[start + i]!);
    // Pad rows repeat the last token; causal attention keeps them out of the real rows.
    for (let i = count; i < padded; i++) ids.data[i] = ids.data[count - 1]!;
    let logits = this.logitsByRows.get(rows);
    if (logits === undefined) {
      const data = new Float32Array(rows * this.vocab);
      logits = { data, tensor: new ort.Tensor('float32', data, [1, rows, this.vocab]) };
      this.logitsByRows.set(rows, logits);
    }
    this.feeds[INPUT_IDS] = ids.tensor;
    this.seqlensK[0] = this.kvLength + padded - 1;
    this.totalLength[0] = this.kvLength + padded;
    this.logitsStart[0] = BigInt(count - rows);
    this.logitsEnd[0] = BigInt(count);
    this.fetches[LOGITS] = logits.tensor;
    if (this.deviceKv) {
      const data = await this.runOnDevice();
      this.kvLength += count;
      return data;
    }
    await this.session.run(this.feeds, this.fetches);
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
    const results = await this.session.run(this.feeds);
    for (const [past, present] of this.kvNames) {
      const next = results[present];
      if (next === undefined || next.location !== 'gpu-buffer') {
        throw new Error(`${present} came back at "${next?.location}", not on the device: the provider did not keep the KV cache`);
      }
      const previous = this.feeds[past]!;
      if (previous.location === 'gpu-buffer') previous.dispose();
      this.feeds[past] = next;
    }
    return results[LOGITS]!.data as Float32Array;
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
