/**
 * Runner for our converted models (anpd-model.json + model.onnx with GroupQueryAttention).
 * Each sequence owns fixed-capacity KV tensors that are bound both as past inputs and as present
 * outputs, so ORT appends in place; rewind only changes the length we pass next time.
 * Every tensor a forward touches is allocated once per sequence (logits per row count, lazily).
 */
import { ContextOverflowError, InvalidRequestError } from '../errors.js';
import type { ModelManifest } from '../model/model-manifest.js';
import { ort } from './ort-session.js';
import type { DecoderModel, DecoderSequence, ModelInfo } from './types.js';

// Names must match src/convert/llama-graph.ts IO (the runtime may not import the converter).
const INPUT_IDS = 'input_ids';
const SEQLENS_K = 'seqlens_k';
const TOTAL_SEQUENCE_LENGTH = 'total_sequence_length';
const LOGITS_TO_KEEP = 'num_logits_to_keep';
const LOGITS = 'logits';

/** Largest single forward (prefill chunk); larger prompts are fed in chunks of this size. */
export const FORWARD_TOKENS_MAX = 512;

export class GqaDecoderModel implements DecoderModel {
  readonly info: ModelInfo;
  private readonly session: ort.InferenceSession;
  private readonly manifest: ModelManifest;
  private readonly defaultCapacity: number;

  constructor(session: ort.InferenceSession, manifest: ModelManifest, executionProvider: string, kvCapacity: number) {
    this.session = session;
    this.manifest = manifest;
    this.defaultCapacity = Math.min(kvCapacity, manifest.contextLength);
    this.info = {
      name: manifest.name,
      kind: 'anpd-gqa',
      architecture: manifest.architecture,
      vocabSize: manifest.vocab,
      contextLength: Math.min(manifest.contextLength, this.defaultCapacity),
      bosTokenId: manifest.bosTokenId ?? undefined,
      eosTokenIds: manifest.eosTokenIds,
      executionProvider,
    };
  }

  createSequence(options?: { readonly capacity?: number }): DecoderSequence {
    const capacity = Math.min(options?.capacity ?? this.defaultCapacity, this.manifest.contextLength);
    return new GqaSequence(this.session, this.manifest, capacity);
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
  private readonly keep = new BigInt64Array(1);
  private readonly idsByLength = new Map<number, { data: BigInt64Array; tensor: ort.Tensor }>();
  private readonly logitsByRows = new Map<number, { data: Float32Array; tensor: ort.Tensor }>();
  private disposed = false;

  constructor(session: ort.InferenceSession, m: ModelManifest, capacity: number) {
    this.session = session;
    this.capacity = capacity;
    this.vocab = m.vocab;
    const kvDims = [1, m.kvHeads, capacity, m.headDim];
    const kvSize = m.kvHeads * capacity * m.headDim;
    for (let l = 0; l < m.layers; l++) {
      const key = new ort.Tensor('float32', new Float32Array(kvSize), kvDims);
      const value = new ort.Tensor('float32', new Float32Array(kvSize), kvDims);
      this.feeds[`past_key_values.${l}.key`] = key;
      this.feeds[`past_key_values.${l}.value`] = value;
      this.fetches[`present.${l}.key`] = key;
      this.fetches[`present.${l}.value`] = value;
    }
    this.feeds[SEQLENS_K] = new ort.Tensor('int32', this.seqlensK, [1]);
    this.feeds[TOTAL_SEQUENCE_LENGTH] = new ort.Tensor('int32', this.totalLength, []);
    this.feeds[LOGITS_TO_KEEP] = new ort.Tensor('int64', this.keep, [1]);
  }

  get length(): number {
    return this.kvLength;
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

  private async run(tokens: ArrayLike<number>, start: number, count: number, rows: number): Promise<Float32Array> {
    let ids = this.idsByLength.get(count);
    if (ids === undefined) {
      const data = new BigInt64Array(count);
      ids = { data, tensor: new ort.Tensor('int64', data, [1, count]) };
      this.idsByLength.set(count, ids);
    }
    for (let i = 0; i < count; i++) ids.data[i] = BigInt(tokens[start + i]!);
    let logits = this.logitsByRows.get(rows);
    if (logits === undefined) {
      const data = new Float32Array(rows * this.vocab);
      logits = { data, tensor: new ort.Tensor('float32', data, [1, rows, this.vocab]) };
      this.logitsByRows.set(rows, logits);
    }
    this.feeds[INPUT_IDS] = ids.tensor;
    this.seqlensK[0] = this.kvLength + count - 1;
    this.totalLength[0] = this.kvLength + count;
    this.keep[0] = BigInt(rows);
    this.fetches[LOGITS] = logits.tensor;
    await this.session.run(this.feeds, this.fetches);
    this.kvLength += count;
    return logits.data;
  }

  rewind(length: number): void {
    if (!Number.isInteger(length) || length < 0 || length > this.kvLength) {
      throw new RangeError(`rewind to ${length} outside [0, ${this.kvLength}]`);
    }
    this.kvLength = length;
  }

  dispose(): void {
    this.disposed = true;
    this.idsByLength.clear();
    this.logitsByRows.clear();
  }
}
