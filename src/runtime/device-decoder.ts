/**
 * Runner for our converted models on a GPU through the native addon (native/device.c): the KV
 * cache, the ids and the logits live in device memory we own, so a forward moves only the ids up
 * and the logits rows asked for down, and fixed-shape forwards replay as CUDA graphs (one kernel
 * launch per forward instead of ~300).
 *
 * Exactness: every forward of at most `rows` tokens runs exactly `rows` query rows (pad rows repeat
 * the last token; their KV slots are overwritten later and their logits never read), and its LM
 * head runs on all of them. So every decode step and every draft verification runs the same
 * shapes, hence the same kernels, and a position's logits do not depend on which row of which
 * forward computed them (checked on the device: plain decoding == ANPD, docs/gpu.md). Prefill
 * chunks longer than that are the same for plain and speculative decoding.
 *
 * CUDA graphs: a graph bakes in the addresses it was captured with, so each sequence takes a KV
 * set (device buffers for every layer) from a pool that keeps them for the next sequence, and the
 * set's index is the graph id. Ids, seqlens and logits are per model, shared by its sequences
 * (forwards never overlap: the addon runs them synchronously on the calling thread).
 */
import type { ModelManifest } from '../model/model-manifest.js';
import { checkCopyPrefix, checkForward, checkRewind, FORWARD_TOKENS_MAX } from './check-forward.js';
import {
  type DeviceBatchGraph,
  DeviceBatchExecutor,
  type DeviceBatchModel,
  type DeviceBatchSequence,
  StepResultArrays,
} from './device-batch.js';
import { type BoundRun, type DeviceBuffer, type DeviceSession, type DeviceValue, ONNX_TYPES } from './native-run.js';
import { convertedModelInfo } from './runtime-plan.js';
import type { DecoderModel, DecoderSequence, ModelInfo, RuntimePlan, StepForward, StepResult } from './types.js';

/** CUDA graphs the addon keeps per session (native/common.h GRAPH_IDS_MAX); later KV sets run without. */
const GRAPH_IDS_MAX = 256;

interface KvSet {
  readonly index: number;
  readonly buffers: readonly DeviceBuffer[];
}

export class DeviceDecoderModel implements DecoderModel, DeviceBatchModel {
  readonly info: ModelInfo;
  readonly plan: RuntimePlan;
  readonly session: DeviceSession;
  readonly manifest: ModelManifest;
  readonly rows: number;
  /** Positions in every KV set: the model's capacity plus room for the pad rows. */
  readonly kvSlots: number;
  private readonly kvBytes: number;
  private readonly kvSets: KvSet[] = [];
  /** Free KV sets, highest index first (pop() hands out the lowest: batches stay on narrow graphs). */
  private readonly freeKvSets: KvSet[] = [];
  /** Batch graphs' places (0 without batch graphs): KV sets 0 … slots − 1 are views of the slab. */
  readonly slots: number;
  /** One buffer per layer and K/V holding every slot's rows (batch graphs bind slot s at s × kvBytes). */
  private readonly slab: readonly DeviceBuffer[];
  private readonly liveBySlot: (DeviceSequence | undefined)[];
  readonly batchExecutor: DeviceBatchExecutor | undefined;
  readonly elementType: number;
  // Per model, shared by its sequences: the ids of a short / long forward, seqlens_k, the logits.
  readonly idsShort: DeviceBuffer;
  readonly idsLong: DeviceBuffer;
  readonly seqlensK: DeviceBuffer;
  readonly logits: DeviceBuffer;
  /** Each logits row's argmax (int64), where the graph outputs it (float16 graphs). */
  readonly argmaxBuffer: DeviceBuffer | undefined;
  private disposed = false;
  /** CUDA: total_sequence_length is the KV set's size after a sequence's first forward (see DeviceSequence.run). */
  readonly fixedTotalLength: boolean;

  constructor(
    session: DeviceSession,
    manifest: ModelManifest,
    plan: RuntimePlan,
    batchGraphs: readonly DeviceBatchGraph[] = [],
  ) {
    this.plan = plan;
    this.session = session;
    this.fixedTotalLength = session.target === 'cuda';
    this.manifest = manifest;
    this.rows = plan.rowsMin;
    this.slots = Math.max(0, ...batchGraphs.map((g) => g.width));
    // With batch graphs one more position: a place padded while its sequence is full still writes
    // its pad rows past the sequence's length.
    const padPositions = this.slots > 0 ? this.rows : this.rows - 1;
    const capacity = Math.min(plan.kvCapacity, manifest.contextLength - padPositions);
    this.kvSlots = capacity + padPositions;
    const float16 = manifest.dtype === 'float16';
    this.elementType = float16 ? ONNX_TYPES['float16']! : ONNX_TYPES['float32']!;
    this.kvBytes = manifest.kvHeads * this.kvSlots * manifest.headDim * (float16 ? 2 : 4);
    this.idsShort = session.alloc(this.rows * 8);
    this.idsLong = session.alloc(FORWARD_TOKENS_MAX * 8);
    this.seqlensK = session.alloc(4);
    this.logits = session.alloc(FORWARD_TOKENS_MAX * manifest.vocab * 4);
    this.argmaxBuffer =
      manifest.greedyOutput === true && plan.experimental.greedyOnDevice
        ? session.alloc(FORWARD_TOKENS_MAX * 8)
        : undefined;
    this.slab =
      this.slots > 0 ? Array.from({ length: 2 * manifest.layers }, () => session.alloc(this.slots * this.kvBytes)) : [];
    for (let slot = 0; slot < this.slots; slot++) {
      const buffers = this.slab.map((b) => session.view(b, slot * this.kvBytes, this.kvBytes));
      this.kvSets.push({ index: slot, buffers });
    }
    this.freeKvSets.push(...[...this.kvSets].reverse());
    this.liveBySlot = new Array<DeviceSequence | undefined>(this.slots).fill(undefined);
    this.batchExecutor = this.slots > 0 ? new DeviceBatchExecutor(this, batchGraphs) : undefined;
    this.info = {
      ...convertedModelInfo(manifest, plan, {
        contextLength: capacity,
        batchSlots: Math.max(1, this.slots),
        verifyTokensMax: this.rows,
      }),
      kvBytesPerSequence: 2 * manifest.layers * this.kvBytes,
      // A prefill runs in chunks of FORWARD_TOKENS_MAX from position 0, each padded to a shape of
      // its own: a reused prefix ending on a chunk boundary leaves the rest to the very chunks a
      // cold prefill runs (same shapes, same past lengths, same kernels), so the KV is the same bits.
      prefixReuseChunkTokens: FORWARD_TOKENS_MAX,
    };
  }

  get argmax(): boolean {
    return this.argmaxBuffer !== undefined;
  }

  slotKv(slot: number): readonly DeviceBuffer[] {
    return this.kvSets[slot]!.buffers;
  }

  lengthAt(slot: number): number {
    return this.liveBySlot[slot]?.length ?? 0;
  }

  get layers(): number {
    return this.manifest.layers;
  }

  get vocab(): number {
    return this.manifest.vocab;
  }

  get kvDims(): readonly number[] {
    return [1, this.manifest.kvHeads, this.kvSlots, this.manifest.headDim];
  }

  /** KV sets ever allocated (each holds kvSlots positions of every layer). */
  get kvSetCount(): number {
    return this.kvSets.length;
  }

  createSequence(options?: { readonly capacity?: number }): DecoderSequence {
    if (this.disposed) throw new Error('model is disposed');
    const capacity = Math.min(options?.capacity ?? this.info.contextLength, this.info.contextLength);
    let kv = this.freeKvSets.pop();
    if (kv === undefined) {
      // Past the batch graphs' places: a KV set of its own, whose forwards run alone.
      const buffers = Array.from({ length: 2 * this.manifest.layers }, () => this.session.alloc(this.kvBytes));
      kv = { index: this.kvSets.length, buffers };
      this.kvSets.push(kv);
    }
    const sequence = new DeviceSequence(this, kv, capacity);
    if (kv.index < this.slots) this.liveBySlot[kv.index] = sequence;
    return sequence;
  }

  /**
   * Runs every prefill shape once and captures the first KV set's decode graph, so that the first
   * requests do not pay ORT's first-time cost of each shape (CUDA: 40–80 ms each) in their time
   * to first token. The outputs are thrown away; the KV set goes back to the pool.
   */
  async warmUp(): Promise<void> {
    const sequence = this.createSequence();
    try {
      const ids = new Array<number>(FORWARD_TOKENS_MAX).fill(this.manifest.bosTokenId ?? 0);
      for (const shape of PREFILL_SHAPES) {
        if (shape > sequence.capacity) break;
        sequence.rewind(0);
        await sequence.forward(ids.slice(0, shape), 1);
      }
      sequence.rewind(0);
      await sequence.forward(ids.slice(0, 8), 1);
      // ORT runs a graph id twice before it captures it, on the third run.
      for (let i = 0; i < 4; i++) await sequence.forward(ids.slice(0, 1), 1);
    } finally {
      sequence.dispose();
    }
    this.batchExecutor?.warmUp();
  }

  /** @internal Every layer's KV of `from` into `to` (whole sets: the layout is head-major, a prefix is not one range). */
  copyKvSet(from: KvSet, to: KvSet): void {
    from.buffers.forEach((b, i) => this.session.copy(to.buffers[i]!, 0, b, 0, this.kvBytes));
  }

  /**
   * @internal A KV set outside the batch graphs' places (a free one, else a new one) holding a
   * copy of `from`: a sequence kept only to be copied from (the prefix cache) gives its place back.
   */
  parkKvSet(from: KvSet): KvSet {
    if (this.disposed) return from;
    const highest = this.freeKvSets[0];
    let kv: KvSet;
    if (highest !== undefined && highest.index >= this.slots) kv = this.freeKvSets.shift()!;
    else {
      const buffers = Array.from({ length: 2 * this.manifest.layers }, () => this.session.alloc(this.kvBytes));
      kv = { index: this.kvSets.length, buffers };
      this.kvSets.push(kv);
    }
    this.copyKvSet(from, kv);
    this.releaseKvSet(from);
    return kv;
  }

  /** A sequence gives its KV set back; the next sequence reuses it (and its CUDA graph). */
  releaseKvSet(kv: KvSet): void {
    if (this.disposed) return;
    if (kv.index < this.slots) this.liveBySlot[kv.index] = undefined;
    this.freeKvSets.push(kv);
    this.freeKvSets.sort((a, b) => b.index - a.index);
  }

  /** @internal Sequences holding a bound decode step: their bindings go before the session does. */
  readonly boundSequences = new Set<{ releaseBinding(): void }>();

  async dispose(): Promise<void> {
    this.disposed = true;
    for (const s of this.boundSequences) s.releaseBinding();
    this.batchExecutor?.dispose();
    // Slab views free nothing: the slab goes below.
    for (const kv of this.kvSets) if (kv.index >= this.slots) for (const b of kv.buffers) this.session.free(b);
    for (const b of [...this.slab, this.idsShort, this.idsLong, this.seqlensK, this.logits, this.argmaxBuffer])
      if (b !== undefined) this.session.free(b);
    this.session.release();
  }
}

class DeviceSequence implements DecoderSequence, DeviceBatchSequence {
  readonly capacity: number;
  /** Its place in the batch graphs (−1: its forwards run alone). */
  slot: number;
  private kvLength = 0;
  private disposed = false;
  private readonly model: DeviceDecoderModel;
  private kv: KvSet;
  private graphId: number;
  private readonly inputs: Record<string, DeviceValue> = {};
  private readonly outputs: Record<string, DeviceValue> = {};
  private readonly idsShort: BigInt64Array;
  private readonly idsLong = new BigInt64Array(FORWARD_TOKENS_MAX);
  private readonly seqlensK = new Int32Array(1);
  private readonly totalLength = new Int32Array(1);
  private readonly logitsStart = new BigInt64Array(1);
  private readonly logitsEnd = new BigInt64Array(1);
  readonly results: StepResultArrays;
  private readonly idsValue: DeviceValue;
  private readonly logitsValue: DeviceValue;
  private readonly argmaxValue: DeviceValue | undefined;
  /** Views of `rows` entries, made once per row count (a step allocates nothing it need not). */
  private readonly argmaxReadByRows = new Map<number, BigInt64Array>();
  /** Where the graph outputs argmax (float16 graphs): greedy steps read 8 bytes a row, not the row. */
  readonly forwardGreedy: ((tokens: ArrayLike<number>, rows: number) => Promise<Int32Array>) | undefined;
  // A decode step's shapes, made once (the step allocates nothing it need not).
  private readonly shortIdsDims: readonly number[];
  private readonly shortLogitsDims: readonly number[];
  /**
   * Decode steps and verifications after the first forward, their values bound once (ORT's
   * IoBinding): a step then makes and releases no OrtValue (one per input and output, KV
   * included: 127 for SmolLM2). Made at the first such step; released with the sequence, when
   * its KV moves, or before the model's session goes.
   */
  private shortRun: BoundRun | undefined;

  constructor(model: DeviceDecoderModel, kv: KvSet, capacity: number) {
    this.model = model;
    this.kv = kv;
    this.capacity = capacity;
    this.results = new StepResultArrays(model.vocab);
    this.graphId = kv.index < GRAPH_IDS_MAX ? kv.index : -1;
    this.slot = kv.index < model.slots ? kv.index : -1;
    this.idsShort = new BigInt64Array(model.rows);
    this.shortIdsDims = [1, model.rows];
    this.shortLogitsDims = [1, model.rows, model.vocab];
    const int32 = ONNX_TYPES['int32']!;
    const int64 = ONNX_TYPES['int64']!;
    this.idsValue = { data: model.idsShort, dims: [1, model.rows], type: int64 };
    this.logitsValue = { data: model.logits, dims: [1, model.rows, model.vocab], type: ONNX_TYPES['float32']! };
    this.inputs['input_ids'] = this.idsValue;
    this.inputs['seqlens_k'] = { data: model.seqlensK, dims: [1], type: int32 };
    // Host scalars: ORT reads them on the host (CPU inputs of GroupQueryAttention and Slice).
    this.inputs['total_sequence_length'] = { data: this.totalLength, dims: [], type: int32 };
    this.inputs['logits_start'] = { data: this.logitsStart, dims: [1], type: int64 };
    this.inputs['logits_end'] = { data: this.logitsEnd, dims: [1], type: int64 };
    this.outputs['logits'] = this.logitsValue;
    if (model.argmaxBuffer !== undefined) {
      this.argmaxValue = { data: model.argmaxBuffer, dims: [1, model.rows], type: int64 };
      this.outputs['argmax'] = this.argmaxValue;
      this.forwardGreedy = (tokens, rows) => this.greedy(tokens, rows);
    }
    this.bindKv(kv);
  }

  /** @internal Frees the bound decode step (the KV moves, the sequence or its model goes). */
  releaseBinding(): void {
    if (this.shortRun === undefined) return;
    this.shortRun.release();
    this.shortRun = undefined;
    this.model.boundSequences.delete(this);
  }

  private bindKv(kv: KvSet): void {
    this.releaseBinding();
    const model = this.model;
    const dims = model.kvDims;
    for (let l = 0; l < model.layers; l++) {
      const key = { data: kv.buffers[2 * l]!, dims, type: model.elementType };
      const value = { data: kv.buffers[2 * l + 1]!, dims, type: model.elementType };
      // One buffer as past and present: GroupQueryAttention appends in place (rollback is free).
      this.inputs[`past_key_values.${l}.key`] = key;
      this.inputs[`past_key_values.${l}.value`] = value;
      this.outputs[`present.${l}.key`] = key;
      this.outputs[`present.${l}.value`] = value;
    }
  }

  get length(): number {
    return this.kvLength;
  }

  /** n samples of one prompt: this empty sequence takes `source`'s KV (a device copy of each layer's set, no prefill). */
  readonly copyPrefixFrom = (source: DecoderSequence, length: number): void => {
    if (!(source instanceof DeviceSequence) || source.model !== this.model)
      throw new Error('copyPrefixFrom needs a sequence of the same device model');
    checkCopyPrefix(length, source.kvLength, this.kvLength, this.capacity);
    this.model.copyKvSet(source.kv, this.kv);
    this.kvLength = length;
  };

  async forward(tokens: ArrayLike<number>, logitsRows: number): Promise<Float32Array> {
    const submitter = this.model.batchExecutor?.submitter;
    if (submitter !== undefined && this.joinsSteps(tokens, logitsRows))
      return submitter.submit(this.stepForward(tokens, logitsRows, false)) as Promise<Float32Array>;
    return this.forwardNow(tokens, logitsRows);
  }

  private async greedy(tokens: ArrayLike<number>, rows: number): Promise<Int32Array> {
    const submitter = this.model.batchExecutor?.submitter;
    if (submitter !== undefined && this.joinsSteps(tokens, rows))
      return submitter.submit(this.stepForward(tokens, rows, true)) as Promise<Int32Array>;
    return this.greedyNow(tokens, rows);
  }

  /**
   * Whether this forward goes to the model's step (batched with the other sequences'): a decode
   * step or a draft verification (at most `rows` tokens) of a sequence with a place. Prefill (the
   * first forward, longer ones) runs alone at once. Validated here, so a bad forward fails alone.
   */
  private joinsSteps(tokens: ArrayLike<number>, rows: number): boolean {
    if (this.slot < 0 || this.kvLength === 0 || tokens.length > this.model.rows) return false;
    if (this.disposed) throw new Error('sequence is disposed');
    checkForward(tokens.length, rows, this.kvLength, this.capacity, FORWARD_TOKENS_MAX);
    return true;
  }

  private stepForward(tokens: ArrayLike<number>, rows: number, argmax: boolean): StepForward {
    return { sequence: this, tokens, start: 0, count: tokens.length, padded: this.model.rows, rows, argmax };
  }

  runAlone(forward: StepForward): StepResult {
    const tokens = forward.start === 0 ? forward.tokens : Array.from(forward.tokens).slice(forward.start);
    return forward.argmax === true ? this.greedyNow(tokens, forward.rows) : this.forwardNow(tokens, forward.rows);
  }

  advance(count: number): void {
    this.kvLength += count;
  }

  private forwardNow(tokens: ArrayLike<number>, logitsRows: number): Float32Array {
    const { count, short } = this.runChunks(tokens, logitsRows);
    const logits = this.results.logitsOf(logitsRows);
    // Short forwards computed every row: the wanted ones are the last `rows` real ones.
    const firstRow = short ? count - logitsRows : 0;
    this.model.session.read(this.model.logits, firstRow * this.model.vocab * 4, logits);
    return logits;
  }

  private greedyNow(tokens: ArrayLike<number>, rows: number): Int32Array {
    const { count, short } = this.runChunks(tokens, rows);
    const firstRow = short ? count - rows : 0;
    let read = this.argmaxReadByRows.get(rows);
    if (read === undefined) {
      read = new BigInt64Array(rows);
      this.argmaxReadByRows.set(rows, read);
    }
    const ids = this.results.argmaxOf(rows);
    this.model.session.read(this.model.argmaxBuffer!, firstRow * 8, read);
    for (let i = 0; i < rows; i++) ids[i] = Number(read[i]!);
    return ids;
  }

  /** Validates and runs a forward; the last chunk's outputs are left on the device. */
  private runChunks(tokens: ArrayLike<number>, logitsRows: number): { count: number; short: boolean } {
    if (this.disposed) throw new Error('sequence is disposed');
    const t = tokens.length;
    const lastStart = checkForward(t, logitsRows, this.kvLength, this.capacity, FORWARD_TOKENS_MAX);
    for (let start = 0; start < lastStart; start += FORWARD_TOKENS_MAX) this.run(tokens, start, FORWARD_TOKENS_MAX, 0);
    const count = t - lastStart;
    this.run(tokens, lastStart, count, logitsRows);
    return { count, short: count <= this.model.rows };
  }

  /** Runs tokens[start, start+count), computing logits (and argmax) for its last `rows` (short forwards: all rows). */
  private run(tokens: ArrayLike<number>, start: number, count: number, rows: number): void {
    const model = this.model;
    const session = model.session;
    const short = count <= model.rows;
    // Longer forwards (prefill chunks) are padded to a power of two where the KV set has room: a
    // new input shape costs ORT 40–80 ms on CUDA the first time (measured: a new prompt's prefill
    // took ~45 ms, the same prompt again ~5 ms), so a handful of shapes, warmed up at load, keep
    // time to first token at a few ms.
    const padded = short ? model.rows : prefillShape(count, model.kvSlots - this.kvLength);
    let graphId = -1;
    if (short) {
      for (let i = 0; i < count; i++) this.idsShort[i] = BigInt(tokens[start + i]!);
      for (let i = count; i < padded; i++) this.idsShort[i] = this.idsShort[count - 1]!;
      session.write(model.idsShort, 0, this.idsShort);
      this.idsValue.data = model.idsShort;
      this.idsValue.dims = this.shortIdsDims;
      // All rows through the LM head: the same shapes every time. ORT's attention takes another
      // path for a sequence's first forward (no past), so that one is never captured.
      this.logitsStart[0] = 0n;
      this.logitsEnd[0] = BigInt(padded);
      this.logitsValue.dims = this.shortLogitsDims;
      if (this.argmaxValue !== undefined) this.argmaxValue.dims = this.shortIdsDims;
      if (this.kvLength > 0) graphId = this.graphId;
    } else {
      const ids = this.idsLong.subarray(0, padded);
      for (let i = 0; i < count; i++) ids[i] = BigInt(tokens[start + i]!);
      for (let i = count; i < padded; i++) ids[i] = ids[count - 1]!;
      session.write(model.idsLong, 0, ids);
      this.idsValue.data = model.idsLong;
      this.idsValue.dims = [1, padded];
      const kept = Math.max(rows, 1);
      this.logitsStart[0] = BigInt(count - kept);
      this.logitsEnd[0] = BigInt(count);
      this.logitsValue.dims = [1, kept, model.vocab];
      if (this.argmaxValue !== undefined) this.argmaxValue.dims = [1, kept];
    }
    this.seqlensK[0] = this.kvLength + padded - 1;
    session.write(model.seqlensK, 0, this.seqlensK);
    // On CUDA, ORT's attention picks its flash-attention split count from total_sequence_length
    // (a host value): passing the KV set's size after the first forward keeps that count — hence
    // the summation order, hence the logits — the same at every length and in every captured graph.
    // The real lengths reach the kernel through seqlens_k. A first forward (no past) passes its own
    // length: that is how ORT tells a first prompt.
    this.totalLength[0] = this.kvLength === 0 || !model.fixedTotalLength ? this.kvLength + padded : model.kvSlots;
    // A short forward after the first: the values set above are the binding's (same memory, same
    // shapes), only their contents changed.
    if (short && this.kvLength > 0) {
      if (this.shortRun === undefined) {
        this.shortRun = session.bind(this.inputs, this.outputs);
        model.boundSequences.add(this);
      }
      this.shortRun.run(graphId);
    } else session.run(this.inputs, this.outputs, graphId);
    this.kvLength += count;
  }

  rewind(length: number): void {
    checkRewind(length, this.kvLength);
    this.kvLength = length;
  }

  /** Kept only to be copied from: its batch place goes back to the pool, its KV to a set of its own. */
  readonly releaseScratch = (): void => {
    if (this.disposed) return;
    this.results.clear();
    if (this.slot < 0) return;
    this.kv = this.model.parkKvSet(this.kv);
    this.slot = -1;
    this.graphId = this.kv.index < GRAPH_IDS_MAX ? this.kv.index : -1;
    this.bindKv(this.kv);
  };

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.results.clear();
    this.releaseBinding();
    this.model.releaseKvSet(this.kv);
  }
}

/** Smallest forward shape in PREFILL_SHAPES that holds `count` tokens and fits `room` KV slots, else `count`. */
export function prefillShape(count: number, room: number): number {
  for (const shape of PREFILL_SHAPES) if (shape >= count) return shape <= room ? shape : count;
  return count;
}

/** Forward lengths a prefill chunk is padded to (the last is FORWARD_TOKENS_MAX, the longest chunk). */
export const PREFILL_SHAPES = [16, 32, 64, 128, 256, FORWARD_TOKENS_MAX] as const;
