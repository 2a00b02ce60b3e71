/**
 * Runner for users' own Hugging Face ONNX exports (Optimum / transformers.js layout):
 * `past_key_values.{i}.key|value` inputs [batch, kvHeads, past, headDim], `present.{i}.*` outputs that
 * grow by T, `attention_mask`, optional `position_ids`, logits for every new position.
 * The cache is whatever ORT returned last; rewind slices it (a copy per layer, only when a draft was
 * rejected). Float32 KV only.
 */
import { ModelFormatError } from '../errors.js';
import { checkForward, checkRewind } from './check-forward.js';
import { ort } from './ort-session.js';
import type { DecoderModel, DecoderSequence, ModelInfo, RuntimePlan } from './types.js';

export interface OptimumLayout {
  readonly layers: number;
  readonly kvHeads: number;
  readonly headDim: number;
  readonly hasPositionIds: boolean;
  readonly hasAttentionMask: boolean;
  readonly hasLogitsToKeep: boolean;
}

const PAST_KEY = /^past_key_values\.(\d+)\.key$/;

/** Reads the layout from the session's declared inputs/outputs; errors name the file and what is missing. */
export function inspectOptimumSession(
  path: string,
  session: ort.InferenceSession,
  config: { kvHeads: number; headDim: number },
): OptimumLayout {
  const inputs = new Set(session.inputNames);
  const outputs = new Set(session.outputNames);
  if (!inputs.has('input_ids')) throw new ModelFormatError(path, 'graph has no input_ids input');
  if (!outputs.has('logits')) throw new ModelFormatError(path, 'graph has no logits output');
  if (inputs.has('use_cache_branch'))
    throw new ModelFormatError(
      path,
      'merged decoders (use_cache_branch) are not supported: export decoder_with_past or a single decoder with past inputs',
    );
  let layers = 0;
  for (const name of inputs) if (PAST_KEY.test(name)) layers++;
  if (layers === 0)
    throw new ModelFormatError(
      path,
      'graph has no past_key_values.*.key inputs: export it with use_cache (text-generation-with-past)',
    );
  for (let l = 0; l < layers; l++) {
    for (const n of [`past_key_values.${l}.key`, `past_key_values.${l}.value`])
      if (!inputs.has(n)) throw new ModelFormatError(path, `graph lacks input ${n}`);
    for (const n of [`present.${l}.key`, `present.${l}.value`])
      if (!outputs.has(n)) throw new ModelFormatError(path, `graph lacks output ${n}`);
  }
  const meta = session.inputMetadata.find((m) => m.name === 'past_key_values.0.key');
  if (meta !== undefined && meta.isTensor && meta.type !== 'float32') {
    throw new ModelFormatError(path, `KV cache type ${meta.type} is not supported (float32 only)`);
  }
  return {
    layers,
    kvHeads: config.kvHeads,
    headDim: config.headDim,
    hasPositionIds: inputs.has('position_ids'),
    hasAttentionMask: inputs.has('attention_mask'),
    hasLogitsToKeep: inputs.has('num_logits_to_keep'),
  };
}

export class OptimumDecoderModel implements DecoderModel {
  readonly info: ModelInfo;
  readonly plan: RuntimePlan;
  private readonly session: ort.InferenceSession;
  private readonly layout: OptimumLayout;

  constructor(session: ort.InferenceSession, layout: OptimumLayout, info: ModelInfo, plan: RuntimePlan) {
    this.session = session;
    this.layout = layout;
    this.info = info;
    this.plan = plan;
  }

  createSequence(options?: { readonly capacity?: number }): DecoderSequence {
    return new OptimumSequence(
      this.session,
      this.layout,
      this.info.vocabSize,
      Math.min(options?.capacity ?? this.info.contextLength, this.info.contextLength),
    );
  }

  async dispose(): Promise<void> {
    await this.session.release();
  }
}

class OptimumSequence implements DecoderSequence {
  readonly capacity: number;
  private kvLength = 0;
  /** Per layer [key, value] with dims [1, kvHeads, storedLength, headDim]; storedLength ≥ kvLength. */
  private kv: ort.Tensor[][];
  private storedLength = 0;
  private readonly session: ort.InferenceSession;
  private readonly layout: OptimumLayout;
  private readonly vocab: number;

  constructor(session: ort.InferenceSession, layout: OptimumLayout, vocab: number, capacity: number) {
    this.session = session;
    this.layout = layout;
    this.vocab = vocab;
    this.capacity = capacity;
    this.kv = this.emptyKv();
  }

  private emptyKv(): ort.Tensor[][] {
    const dims = [1, this.layout.kvHeads, 0, this.layout.headDim];
    return Array.from({ length: this.layout.layers }, () => [
      new ort.Tensor('float32', new Float32Array(0), dims),
      new ort.Tensor('float32', new Float32Array(0), dims),
    ]);
  }

  get length(): number {
    return this.kvLength;
  }

  async forward(tokens: ArrayLike<number>, logitsRows: number): Promise<Float32Array> {
    const t = tokens.length;
    // One forward whatever its length (no chunks: the export's attention takes any).
    checkForward(t, logitsRows, this.kvLength, this.capacity, Infinity, 'the context');
    if (this.storedLength > this.kvLength) this.truncateStored();
    const past = this.kvLength;
    const ids = new BigInt64Array(t);
    for (let i = 0; i < t; i++) ids[i] = BigInt(tokens[i]!);
    const feeds: Record<string, ort.Tensor> = { input_ids: new ort.Tensor('int64', ids, [1, t]) };
    if (this.layout.hasAttentionMask)
      feeds['attention_mask'] = new ort.Tensor('int64', new BigInt64Array(past + t).fill(1n), [1, past + t]);
    if (this.layout.hasPositionIds) {
      const pos = new BigInt64Array(t);
      for (let i = 0; i < t; i++) pos[i] = BigInt(past + i);
      feeds['position_ids'] = new ort.Tensor('int64', pos, [1, t]);
    }
    if (this.layout.hasLogitsToKeep)
      feeds['num_logits_to_keep'] = new ort.Tensor('int64', BigInt64Array.from([BigInt(logitsRows)]), []);
    for (let l = 0; l < this.layout.layers; l++) {
      feeds[`past_key_values.${l}.key`] = this.kv[l]![0]!;
      feeds[`past_key_values.${l}.value`] = this.kv[l]![1]!;
    }
    const out = await this.session.run(feeds);
    for (let l = 0; l < this.layout.layers; l++) {
      this.kv[l] = [out[`present.${l}.key`] as ort.Tensor, out[`present.${l}.value`] as ort.Tensor];
    }
    this.kvLength = past + t;
    this.storedLength = past + t;
    const logits = out['logits'] as ort.Tensor;
    const data = logits.data as Float32Array;
    const rowsOut = logits.dims[1]!;
    return data.subarray((rowsOut - logitsRows) * this.vocab, rowsOut * this.vocab);
  }

  /** Drops stored positions ≥ kvLength (after a rewind). */
  private truncateStored(): void {
    const { kvHeads, headDim } = this.layout;
    const keep = this.kvLength;
    for (const pair of this.kv) {
      for (let i = 0; i < 2; i++) {
        const src = pair[i]!.data as Float32Array;
        const dst = new Float32Array(kvHeads * keep * headDim);
        for (let h = 0; h < kvHeads; h++) {
          dst.set(
            src.subarray(h * this.storedLength * headDim, (h * this.storedLength + keep) * headDim),
            h * keep * headDim,
          );
        }
        pair[i] = new ort.Tensor('float32', dst, [1, kvHeads, keep, headDim]);
      }
    }
    this.storedLength = keep;
  }

  rewind(length: number): void {
    checkRewind(length, this.kvLength);
    this.kvLength = length;
  }

  dispose(): void {
    this.kv = [];
  }
}
