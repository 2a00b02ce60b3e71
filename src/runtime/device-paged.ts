/**
 * Continuous batching on CUDA: the paged graph (`anpd convert --attention paged --dtype float16`)
 * runs every ready sequence's decode step or draft verification in one forward. Each forward packs
 * the sequences' new tokens along one axis; ORT's PagedAttention writes each sequence's new keys
 * into its own blocks of one KV cache per layer and attends it to its own past (so attention is
 * one kernel for all of them, not one per sequence as in the slot graphs of device-batch.ts).
 *
 * Shapes: a step of n sequences runs the bucket of B ≥ n sequences (1, 2, 4, …, the model's
 * sequence limit), each B × `rows` tokens (pad rows repeat a sequence's last token; pad sequences
 * write a scratch slot), bound once and on CUDA replayed as one captured graph per bucket. So a
 * lone sequence's decode step is the bucket of 1, and the same code runs it at every load.
 *
 * Prefill: under the step scheduler a prompt's prefix (`fill`: all but its last token, no logits;
 * a long `forward`: all but its last `rows` tokens) goes in chunks into the steps' packed prefill
 * forwards, with other prompts' chunks (fixed token rows and entries, pad entries on the scratch
 * slot; bound and captured like the buckets); the rest runs as a decode step — so the logits a
 * stream samples from always come from a decode-step shape, and with batchInvariant every forward
 * has one shape whatever the load. Without a scheduler (or asking for more logits rows than a step
 * has) a long forward runs alone, unbound, padded to a few lengths.
 *
 * KV: sequence slot s owns blocks [s × blocksPerSlot, (s + 1) × blocksPerSlot) of every layer's
 * cache; the block table names them. Rollback is a length, as on every other path.
 */
import type { ModelManifest } from '../model/model-manifest.js';
import { checkCopyPrefix, checkForward, checkRewind, FORWARD_TOKENS_MAX } from './check-forward.js';
import { StepResultArrays } from './device-batch.js';
import { PREFILL_SHAPES, prefillShape } from './device-decoder.js';
import { type BoundRun, type DeviceBuffer, type DeviceSession, type DeviceValue, ONNX_TYPES } from './native-run.js';
import { convertedModelInfo } from './runtime-plan.js';
import type {
  BatchExecutor,
  DecoderModel,
  DecoderSequence,
  ModelInfo,
  RuntimePlan,
  StepForward,
  PrefillPack,
  StepResult,
  StepSubmitter,
} from './types.js';

const INT32 = ONNX_TYPES['int32']!;
const INT64 = ONNX_TYPES['int64']!;
const FLOAT16 = ONNX_TYPES['float16']!;
const FLOAT32 = ONNX_TYPES['float32']!;

interface Bucket {
  readonly sequences: number;
  readonly graphId: number;
  readonly bound: BoundRun;
}

/** A prefill forward's shape: `tokens` rows over the fixed entries. */
interface PrefillBucket {
  readonly tokens: number;
  readonly graphId: number;
  readonly bound: BoundRun;
  /** [tokens, KV positions]: upper bounds of one entry's new tokens and KV length. */
  readonly metadata: Int32Array;
}

/** Logits rows a forward of one sequence alone may ask for: the forward-cost probe's 128 (engine/forward-cost.ts), prompt log-probabilities' 64. */
const LONE_LOGITS_ROWS_MAX = 128;

/** Prompt chunks one prefill forward carries at most. */
const PREFILL_PACK_ENTRIES = 16;
/** The smallest prefill forward with batchInvariant off (the ladder doubles from here). */
const PREFILL_BUCKET_MIN = 64;

// The 32-bit views below read an int64's low word first.
if (new Uint8Array(Uint32Array.of(1).buffer)[0] !== 1)
  throw new Error('the paged graph runs on little-endian hosts only');

/** int64 elements [at, at + count) of `words` (an int64 array's 32-bit view) = tokens[start, start + count) (ids < 2³¹). */
function setIds(words: Int32Array, at: number, tokens: ArrayLike<number>, start: number, count: number): void {
  for (let i = 0; i < count; i++) {
    words[2 * (at + i)] = tokens[start + i]!;
    words[2 * (at + i) + 1] = 0;
  }
}

export class PagedDecoderModel implements DecoderModel, BatchExecutor {
  readonly info: ModelInfo;
  readonly plan: RuntimePlan;
  readonly session: DeviceSession;
  readonly manifest: ModelManifest;
  /** Tokens every step entry runs (a decode step or a verification: the last token plus drafts, padded). */
  readonly rows: number;
  /** Sequences with a place (slots); one more slot is the pad sequences' scratch. */
  readonly slots: number;
  readonly blockSize: number;
  readonly blocksPerSlot: number;
  /** Positions per slot (blocksPerSlot × blockSize). */
  readonly kvSlots: number;
  readonly widths: readonly number[];
  readonly counts = {
    alone: 0,
    batched: 0,
    batchedSequences: 0,
    byWidth: {} as Record<number, number>,
    /** Packed prefill forwards, the prompt chunks and tokens they carried. */
    prefill: { forwards: 0, chunks: 0, tokens: 0 },
  };
  readonly batchExecutor: BatchExecutor;
  readonly prefillPack: PrefillPack;
  private stepSubmitter: StepSubmitter | undefined;
  private readonly caches: readonly DeviceBuffer[];
  private readonly freeSlots: number[];
  private readonly buckets: readonly Bucket[];
  /** Every bucket's output rows are laid out as the widest one's. */
  private readonly ids: DeviceBuffer;
  private readonly cumulative: DeviceBuffer;
  private readonly past: DeviceBuffer;
  private readonly table: DeviceBuffer;
  private readonly logitsIndex: DeviceBuffer;
  private readonly logits: DeviceBuffer;
  private readonly logitsRows: number;
  private readonly argmax: DeviceBuffer;
  private readonly hostIds: BigInt64Array;
  /** hostIds (and below, hostArgmax, hostPrefillIds) as 32-bit words: ids set and read without a BigInt each. */
  private readonly hostIdWords: Int32Array;
  private readonly hostCumulative: Int32Array;
  private readonly hostPast: Int32Array;
  private readonly hostTable: Int32Array;
  private readonly hostArgmax: BigInt64Array;
  private readonly hostArgmaxWords: Int32Array;
  private readonly stepMetadata: Int32Array;
  private readonly results: StepResult[] = [];
  /** Entries of every prefill forward: PREFILL_PACK_ENTRIES chunks, then the pad entries. */
  private readonly prefillEntries: number;
  private readonly prefillPadEntries: number;
  private readonly prefillBuckets: readonly PrefillBucket[];
  private readonly prefillIds: DeviceBuffer;
  private readonly prefillCumulative: DeviceBuffer;
  private readonly prefillPast: DeviceBuffer;
  private readonly prefillTable: DeviceBuffer;
  private readonly prefillLogits: DeviceBuffer;
  private readonly prefillArgmax: DeviceBuffer;
  private readonly hostPrefillIds: BigInt64Array;
  private readonly hostPrefillIdWords: Int32Array;
  private readonly hostPrefillCumulative: Int32Array;
  private readonly hostPrefillPast: Int32Array;
  private readonly hostPrefillTable: Int32Array;
  /** Always the widest bucket: every step the same shapes at any load (bitwise batch invariance, at a lone stream's cost). */
  private readonly fixedShape: boolean;
  private disposed = false;

  constructor(session: DeviceSession, manifest: ModelManifest, plan: RuntimePlan, slots: number) {
    if (manifest.attention !== 'paged' || manifest.kvBlockSize === undefined)
      throw new Error('PagedDecoderModel runs the paged graph (anpd convert --attention paged)');
    this.session = session;
    this.manifest = manifest;
    this.plan = plan;
    this.rows = plan.rowsMin;
    this.slots = slots;
    this.fixedShape = plan.batchInvariant;
    this.blockSize = manifest.kvBlockSize;
    // Room for the pad rows of a full sequence's last step.
    const wanted = Math.min(plan.kvCapacity, manifest.contextLength - this.rows) + this.rows;
    this.blocksPerSlot = Math.ceil(wanted / this.blockSize);
    this.kvSlots = this.blocksPerSlot * this.blockSize;
    const capacity = Math.min(this.kvSlots - this.rows, manifest.contextLength - this.rows);
    const blockBytes = this.blockSize * manifest.kvHeads * manifest.headDim * 2;
    this.caches = Array.from({ length: 2 * manifest.layers }, () =>
      session.alloc((slots + 1) * this.blocksPerSlot * blockBytes),
    );
    this.freeSlots = Array.from({ length: slots }, (_, i) => slots - 1 - i);
    const entries = Math.max(slots * this.rows, FORWARD_TOKENS_MAX);
    this.ids = session.alloc(entries * 8);
    this.cumulative = session.alloc((slots + 1) * 4);
    this.past = session.alloc(slots * 4);
    this.table = session.alloc(slots * this.blocksPerSlot * 4);
    this.logitsIndex = session.alloc(entries * 8);
    // Also a lone forward's rows (LONE_LOGITS_ROWS_MAX).
    this.logitsRows = Math.max(slots * this.rows, LONE_LOGITS_ROWS_MAX);
    this.logits = session.alloc(this.logitsRows * manifest.vocab * 4);
    this.argmax = session.alloc(entries * 8);
    this.hostIds = new BigInt64Array(entries);
    this.hostIdWords = new Int32Array(this.hostIds.buffer);
    this.hostCumulative = new Int32Array(slots + 1);
    this.hostPast = new Int32Array(slots);
    this.hostTable = new Int32Array(slots * this.blocksPerSlot);
    this.hostArgmax = new BigInt64Array(entries);
    this.hostArgmaxWords = new Int32Array(this.hostArgmax.buffer);
    // Upper bounds of the new tokens and of the KV length per sequence: fixed, so graphs replay.
    this.stepMetadata = Int32Array.of(this.rows, this.kvSlots);
    session.write(
      this.logitsIndex,
      0,
      BigInt64Array.from({ length: entries }, (_, i) => BigInt(i)),
    );
    const widths: number[] = [];
    for (let b = 1; b < slots; b *= 2) widths.push(b);
    widths.push(slots);
    this.buckets = widths.map((sequences, i) => ({ sequences, graphId: i, bound: this.bind(sequences) }));
    this.widths = widths.filter((w) => w >= 2);
    // Prefill: chunk entries, then pad entries (each ≥ 1 token, ≤ a slot's positions) for the rest.
    const prefillTokens = plan.prefillTokensPerStep;
    const chunkEntries = Math.min(PREFILL_PACK_ENTRIES, slots);
    this.prefillPadEntries = Math.ceil(prefillTokens / this.kvSlots);
    this.prefillEntries = chunkEntries + this.prefillPadEntries;
    this.prefillPack = { tokens: prefillTokens - this.prefillEntries, entries: chunkEntries };
    this.prefillIds = session.alloc(prefillTokens * 8);
    this.prefillCumulative = session.alloc((this.prefillEntries + 1) * 4);
    this.prefillPast = session.alloc(this.prefillEntries * 4);
    this.prefillTable = session.alloc(this.prefillEntries * this.blocksPerSlot * 4);
    this.prefillLogits = session.alloc(manifest.vocab * 4);
    this.prefillArgmax = session.alloc(8);
    this.hostPrefillIds = new BigInt64Array(prefillTokens);
    this.hostPrefillIdWords = new Int32Array(this.hostPrefillIds.buffer);
    this.hostPrefillCumulative = new Int32Array(this.prefillEntries + 1);
    this.hostPrefillPast = new Int32Array(this.prefillEntries);
    this.hostPrefillTable = new Int32Array(this.prefillEntries * this.blocksPerSlot);
    // batchInvariant: one shape. Otherwise a ladder, so a short prompt pays for a short forward.
    const prefillShapes: number[] = [];
    if (!this.fixedShape)
      for (let t = PREFILL_BUCKET_MIN; t < prefillTokens; t *= 2) if (t > this.prefillEntries) prefillShapes.push(t);
    prefillShapes.push(prefillTokens);
    this.prefillBuckets = prefillShapes.map((tokens, i) => {
      const metadata = Int32Array.of(tokens, this.kvSlots);
      return { tokens, metadata, graphId: this.buckets.length + i, bound: this.bindPrefill(tokens, metadata) };
    });
    this.batchExecutor = this;
    this.info = convertedModelInfo(manifest, plan, {
      contextLength: capacity,
      batchSlots: slots,
      verifyTokensMax: this.rows,
    });
  }

  get layers(): number {
    return this.manifest.layers;
  }

  get vocab(): number {
    return this.manifest.vocab;
  }

  get submitter(): StepSubmitter | undefined {
    return this.stepSubmitter;
  }

  attach(submitter: StepSubmitter): void {
    if (this.stepSubmitter !== undefined) throw new Error('a step scheduler is already attached to this model');
    this.stepSubmitter = submitter;
  }

  createSequence(options?: { readonly capacity?: number }): DecoderSequence {
    if (this.disposed) throw new Error('model is disposed');
    const slot = this.freeSlots.pop();
    // The engine admits at most info.batchSlots sequences per replica.
    if (slot === undefined) throw new RangeError(`all ${this.slots} sequence places are taken`);
    const capacity = Math.min(options?.capacity ?? this.info.contextLength, this.info.contextLength);
    return new PagedSequence(this, slot, capacity);
  }

  /**
   * @internal Copies the first `length` positions of slot `from`'s blocks to slot `to`'s, every
   * layer, on the device (n samples of one prompt share its prefill: bitwise the same keys).
   */
  copySlotPrefix(from: number, to: number, length: number): void {
    const m = this.manifest;
    const blockBytes = this.blockSize * m.kvHeads * m.headDim * 2;
    const bytes = Math.ceil(length / this.blockSize) * blockBytes;
    if (bytes === 0) return;
    for (const cache of this.caches)
      this.session.copy(
        cache,
        to * this.blocksPerSlot * blockBytes,
        cache,
        from * this.blocksPerSlot * blockBytes,
        bytes,
      );
  }

  /** @internal A sequence gives its slot back (lowest first next time). */
  releaseSlot(slot: number): void {
    if (this.disposed) return;
    this.freeSlots.push(slot);
    this.freeSlots.sort((a, b) => b - a);
  }

  /** Each bucket (decode and prefill) with pad sequences only, three times (ORT captures a graph on its third run), then each prefill shape. */
  async warmUp(): Promise<void> {
    for (const bucket of this.buckets) for (let i = 0; i < 3; i++) this.runStep(bucket, []);
    for (const bucket of this.prefillBuckets) for (let i = 0; i < 3; i++) this.runPrefillOn(bucket, []);
    const sequence = this.createSequence() as PagedSequence;
    try {
      const ids = new Array<number>(FORWARD_TOKENS_MAX).fill(this.manifest.bosTokenId ?? 0);
      for (const shape of PREFILL_SHAPES) {
        if (shape > sequence.capacity) break;
        sequence.rewind(0);
        sequence.prefillNow(ids.slice(0, shape), 1, false);
      }
    } finally {
      sequence.dispose();
    }
  }

  async run(width: number, forwards: readonly StepForward[]): Promise<readonly StepResult[]> {
    void width; // the bucket follows the sequence count
    return this.step(forwards);
  }

  /** One packed prefill forward: each fill chunk (of a different sequence) appended to its KV. */
  async runPrefill(forwards: readonly StepForward[]): Promise<void> {
    let tokens = 0;
    for (const f of forwards) tokens += f.count;
    const pack = this.prefillPack;
    if (forwards.length > pack.entries || tokens > pack.tokens)
      throw new RangeError(
        `a prefill forward carries at most ${pack.entries} chunks of ${pack.tokens} tokens together, got ${forwards.length} of ${tokens}`,
      );
    // The smallest shape that holds the chunks and one token for every other entry.
    const wanted = tokens + this.prefillEntries - forwards.length;
    const bucket = this.prefillBuckets.find((b) => b.tokens >= wanted)!;
    this.counts.prefill.forwards++;
    this.counts.prefill.chunks += forwards.length;
    this.counts.prefill.tokens += tokens;
    this.runPrefillOn(bucket, forwards);
  }

  private runPrefillOn(bucket: PrefillBucket, forwards: readonly StepForward[]): void {
    const { session, blocksPerSlot } = this;
    const ids = this.hostPrefillIds;
    const cumulative = this.hostPrefillCumulative;
    const entries = this.prefillEntries;
    let at = 0;
    for (let e = 0; e < entries; e++) {
      const f = forwards[e];
      cumulative[e] = at;
      const slot = f === undefined ? this.slots : (f.sequence as PagedSequence).slot;
      for (let j = 0; j < blocksPerSlot; j++) this.hostPrefillTable[e * blocksPerSlot + j] = slot * blocksPerSlot + j;
      if (f === undefined) {
        // Pad entries write the scratch slot from position 0: one token each; the last ones share the rest.
        // (runPrefill's shape choice leaves at least one token per entry; an even split keeps each within a slot.)
        const padLeft = entries - e;
        const count = e < entries - this.prefillPadEntries ? 1 : Math.ceil((bucket.tokens - at) / padLeft);
        ids.fill(0n, at, at + count);
        this.hostPrefillPast[e] = 0;
        at += count;
        continue;
      }
      setIds(this.hostPrefillIdWords, at, f.tokens, f.start, f.count);
      this.hostPrefillPast[e] = (f.sequence as PagedSequence).length;
      at += f.count;
    }
    cumulative[entries] = at;
    session.write(this.prefillIds, 0, ids.subarray(0, bucket.tokens));
    session.write(this.prefillCumulative, 0, cumulative);
    session.write(this.prefillPast, 0, this.hostPrefillPast);
    session.write(this.prefillTable, 0, this.hostPrefillTable);
    bucket.bound.run(bucket.graphId);
    for (const f of forwards) (f.sequence as PagedSequence).advance(f.count);
  }

  /** One step: `forwards` (each ≤ rows tokens, of different sequences) in one forward of the smallest bucket that holds them. */
  step(forwards: readonly StepForward[]): StepResult[] {
    const n = forwards.length;
    const bucket = this.fixedShape ? this.buckets.at(-1)! : this.buckets.find((b) => b.sequences >= n);
    if (bucket === undefined || n > bucket.sequences)
      throw new RangeError(`a step carries at most ${this.slots} sequences, got ${n}`);
    // By the shape that ran: a lone sequence on the full width (batch-invariant) counts as batched.
    if (bucket.sequences === 1) this.counts.alone++;
    else {
      this.counts.batched++;
      this.counts.batchedSequences += n;
      this.counts.byWidth[bucket.sequences] = (this.counts.byWidth[bucket.sequences] ?? 0) + 1;
    }
    return this.runStep(bucket, forwards);
  }

  private runStep(bucket: Bucket, forwards: readonly StepForward[]): StepResult[] {
    const { rows, session, blocksPerSlot } = this;
    const width = bucket.sequences;
    const vocab = this.manifest.vocab;
    let argmaxWanted = false;
    for (let b = 0; b < width; b++) {
      const f = forwards[b];
      const at = b * rows;
      this.hostCumulative[b] = at;
      const slot = f === undefined ? this.slots : (f.sequence as PagedSequence).slot;
      for (let j = 0; j < blocksPerSlot; j++) this.hostTable[b * blocksPerSlot + j] = slot * blocksPerSlot + j;
      if (f === undefined) {
        // A pad sequence: the scratch slot, from position 0.
        this.hostIds.fill(0n, at, at + rows);
        this.hostPast[b] = 0;
        continue;
      }
      setIds(this.hostIdWords, at, f.tokens, f.start, f.count);
      for (let i = f.count; i < rows; i++) this.hostIds[at + i] = this.hostIds[at + f.count - 1]!;
      this.hostPast[b] = (f.sequence as PagedSequence).length;
      if (f.argmax === true) argmaxWanted = true;
    }
    this.hostCumulative[width] = width * rows;
    session.write(this.ids, 0, this.hostIds.subarray(0, width * rows));
    session.write(this.cumulative, 0, this.hostCumulative.subarray(0, width + 1));
    session.write(this.past, 0, this.hostPast.subarray(0, width));
    session.write(this.table, 0, this.hostTable.subarray(0, width * blocksPerSlot));
    bucket.bound.run(bucket.graphId);
    if (argmaxWanted) session.read(this.argmax, 0, this.hostArgmax.subarray(0, width * rows));
    const results = this.results;
    results.length = 0;
    forwards.forEach((f, b) => {
      const sequence = f.sequence as PagedSequence;
      const first = b * rows + f.count - f.rows;
      if (f.argmax === true) {
        const ids = sequence.results.argmaxOf(f.rows);
        for (let i = 0; i < f.rows; i++) ids[i] = this.hostArgmaxWords[2 * (first + i)]!;
        results.push(ids);
      } else {
        const logits = sequence.results.logitsOf(f.rows);
        session.read(this.logits, first * vocab * 4, logits);
        results.push(logits);
      }
      sequence.advance(f.count);
    });
    return results.slice();
  }

  /**
   * @internal A forward of one sequence alone (prefill): tokens[start, start + count) at `past`,
   * padded to `padded` tokens; the last `rows` real rows' logits (or argmax) come back.
   */
  runAlone(
    slot: number,
    tokens: ArrayLike<number>,
    start: number,
    count: number,
    padded: number,
    past: number,
    rows: number,
    argmax: boolean,
    out: Float32Array | Int32Array | undefined,
  ): void {
    const { session, blocksPerSlot } = this;
    if (rows > this.logitsRows)
      throw new RangeError(`a forward alone brings back at most ${this.logitsRows} logits rows, asked for ${rows}`);
    const ids = this.hostIds.subarray(0, padded);
    setIds(this.hostIdWords, 0, tokens, start, count);
    for (let i = count; i < padded; i++) ids[i] = ids[count - 1]!;
    session.write(this.ids, 0, ids);
    session.write(this.cumulative, 0, Int32Array.of(0, padded));
    session.write(this.past, 0, Int32Array.of(past));
    session.write(
      this.table,
      0,
      Int32Array.from({ length: blocksPerSlot }, (_, j) => slot * blocksPerSlot + j),
    );
    session.write(
      this.logitsIndex,
      0,
      BigInt64Array.from({ length: rows }, (_, i) => BigInt(count - rows + i)),
    );
    const inputs: Record<string, DeviceValue> = {
      input_ids: { data: this.ids, dims: [1, padded], type: INT64 },
      cumulative_sequence_length: { data: this.cumulative, dims: [2], type: INT32 },
      past_seqlens: { data: this.past, dims: [1], type: INT32 },
      block_table: { data: this.table, dims: [1, blocksPerSlot], type: INT32 },
      attention_metadata: { data: Int32Array.of(padded, this.kvSlots), dims: [2], type: INT32 },
      logits_index: { data: this.logitsIndex, dims: [rows], type: INT64 },
    };
    const outputs: Record<string, DeviceValue> = {
      logits: { data: this.logits, dims: [1, rows, this.manifest.vocab], type: FLOAT32 },
      argmax: { data: this.argmax, dims: [1, rows], type: INT64 },
    };
    this.bindCaches(inputs, outputs);
    session.run(inputs, outputs, -1);
    // The step buckets' logits index is 0, 1, 2, …: put it back.
    session.write(
      this.logitsIndex,
      0,
      BigInt64Array.from({ length: rows }, (_, i) => BigInt(i)),
    );
    if (out === undefined) return;
    if (argmax) {
      const read = this.hostArgmax.subarray(0, rows);
      session.read(this.argmax, 0, read);
      for (let i = 0; i < rows; i++) out[i] = Number(read[i]!);
    } else session.read(this.logits, 0, out as Float32Array);
  }

  private bindCaches(inputs: Record<string, DeviceValue>, outputs: Record<string, DeviceValue>): void {
    const m = this.manifest;
    const dims = [(this.slots + 1) * this.blocksPerSlot, this.blockSize, m.kvHeads, m.headDim];
    for (let l = 0; l < m.layers; l++) {
      const key = { data: this.caches[2 * l]!, dims, type: FLOAT16 };
      const value = { data: this.caches[2 * l + 1]!, dims, type: FLOAT16 };
      inputs[`key_cache.${l}`] = key;
      inputs[`value_cache.${l}`] = value;
      // PagedAttention writes in place: its cache outputs must be the inputs' memory.
      outputs[`key_cache_out.${l}`] = key;
      outputs[`value_cache_out.${l}`] = value;
    }
  }

  private bind(sequences: number): BoundRun {
    const tokens = sequences * this.rows;
    const inputs: Record<string, DeviceValue> = {
      input_ids: { data: this.ids, dims: [1, tokens], type: INT64 },
      cumulative_sequence_length: { data: this.cumulative, dims: [sequences + 1], type: INT32 },
      past_seqlens: { data: this.past, dims: [sequences], type: INT32 },
      block_table: { data: this.table, dims: [sequences, this.blocksPerSlot], type: INT32 },
      attention_metadata: { data: this.stepMetadata, dims: [2], type: INT32 },
      logits_index: { data: this.logitsIndex, dims: [tokens], type: INT64 },
    };
    const outputs: Record<string, DeviceValue> = {
      logits: { data: this.logits, dims: [1, tokens, this.manifest.vocab], type: FLOAT32 },
      argmax: { data: this.argmax, dims: [1, tokens], type: INT64 },
    };
    this.bindCaches(inputs, outputs);
    return this.session.bind(inputs, outputs);
  }

  private bindPrefill(tokens: number, metadata: Int32Array): BoundRun {
    const entries = this.prefillEntries;
    const inputs: Record<string, DeviceValue> = {
      input_ids: { data: this.prefillIds, dims: [1, tokens], type: INT64 },
      cumulative_sequence_length: { data: this.prefillCumulative, dims: [entries + 1], type: INT32 },
      past_seqlens: { data: this.prefillPast, dims: [entries], type: INT32 },
      block_table: { data: this.prefillTable, dims: [entries, this.blocksPerSlot], type: INT32 },
      attention_metadata: { data: metadata, dims: [2], type: INT32 },
      // Row 0's logits, never read: a prefill forward only fills the KV.
      logits_index: { data: this.logitsIndex, dims: [1], type: INT64 },
    };
    const outputs: Record<string, DeviceValue> = {
      logits: { data: this.prefillLogits, dims: [1, 1, this.manifest.vocab], type: FLOAT32 },
      argmax: { data: this.prefillArgmax, dims: [1, 1], type: INT64 },
    };
    this.bindCaches(inputs, outputs);
    return this.session.bind(inputs, outputs);
  }

  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    for (const b of this.buckets) b.bound.release();
    for (const b of this.prefillBuckets) b.bound.release();
    for (const b of [
      this.prefillIds,
      this.prefillCumulative,
      this.prefillPast,
      this.prefillTable,
      this.prefillLogits,
      this.prefillArgmax,
      ...this.caches,
      this.ids,
      this.cumulative,
      this.past,
      this.table,
      this.logitsIndex,
      this.logits,
      this.argmax,
    ])
      this.session.free(b);
    this.session.release();
  }
}

class PagedSequence implements DecoderSequence {
  readonly capacity: number;
  readonly slot: number;
  private kvLength = 0;
  private disposed = false;
  private readonly model: PagedDecoderModel;
  readonly results: StepResultArrays;
  readonly forwardGreedy: (tokens: ArrayLike<number>, rows: number) => Promise<Int32Array>;

  constructor(model: PagedDecoderModel, slot: number, capacity: number) {
    this.model = model;
    this.slot = slot;
    this.capacity = capacity;
    this.results = new StepResultArrays(model.vocab);
    this.forwardGreedy = (tokens, rows) => this.forwardAny(tokens, rows, true) as Promise<Int32Array>;
  }

  get length(): number {
    return this.kvLength;
  }

  /** n samples of one prompt: this empty sequence takes `source`'s first `length` positions (a device copy, no prefill). */
  readonly copyPrefixFrom = (source: DecoderSequence, length: number): void => {
    if (!(source instanceof PagedSequence) || source.model !== this.model)
      throw new Error('copyPrefixFrom needs a sequence of the same paged model');
    checkCopyPrefix(length, source.kvLength, this.kvLength, this.capacity);
    this.model.copySlotPrefix(source.slot, this.slot, length);
    this.kvLength = length;
  };

  forward(tokens: ArrayLike<number>, logitsRows: number): Promise<Float32Array> {
    return this.forwardAny(tokens, logitsRows, false) as Promise<Float32Array>;
  }

  private forwardAny(tokens: ArrayLike<number>, rows: number, argmax: boolean): Promise<StepResult> {
    if (this.disposed) throw new Error('sequence is disposed');
    checkForward(tokens.length, rows, this.kvLength, this.capacity, FORWARD_TOKENS_MAX);
    const submitter = this.model.submitter;
    if (tokens.length > this.model.rows) {
      if (submitter === undefined || rows > this.model.rows)
        return Promise.resolve(this.prefillNow(tokens, rows, argmax));
      return this.prefillPacked(submitter, tokens, rows, argmax);
    }
    const forward = this.stepForward(tokens, 0, tokens.length, rows, argmax);
    if (submitter !== undefined) return submitter.submit(forward);
    return Promise.resolve(this.model.step([forward])[0]!);
  }

  private stepForward(
    tokens: ArrayLike<number>,
    start: number,
    count: number,
    rows: number,
    argmax: boolean,
  ): StepForward {
    return { sequence: this, tokens, start, count, padded: this.model.rows, rows, argmax };
  }

  /**
   * Appends `tokens` to the cache without logits: under a step scheduler in chunks of the steps'
   * packed prefill forwards, else one forward alone.
   */
  readonly fill = async (tokens: ArrayLike<number>): Promise<void> => {
    if (this.disposed) throw new Error('sequence is disposed');
    const submitter = this.model.submitter;
    if (submitter === undefined) {
      await this.forwardAny(tokens, 1, true);
      return;
    }
    checkForward(tokens.length, 1, this.kvLength, this.capacity, FORWARD_TOKENS_MAX);
    await this.submitFills(submitter, tokens, tokens.length);
  };

  /** tokens[0, end) as fill chunks, one per step (each waits for the previous: a sequence's KV grows in order). */
  private async submitFills(submitter: StepSubmitter, tokens: ArrayLike<number>, end: number): Promise<void> {
    const chunk = Math.min(FORWARD_TOKENS_MAX, this.model.prefillPack.tokens);
    for (let start = 0; start < end; start += chunk) {
      const count = Math.min(chunk, end - start);
      await submitter.submit({ sequence: this, tokens, start, count, padded: count, rows: 0, fill: true });
    }
  }

  /** All but the last `rows` tokens as fill chunks of the steps' prefill forwards; those rows as a decode step. */
  private async prefillPacked(
    submitter: StepSubmitter,
    tokens: ArrayLike<number>,
    rows: number,
    argmax: boolean,
  ): Promise<StepResult> {
    const head = tokens.length - rows;
    await this.submitFills(submitter, tokens, head);
    return submitter.submit(this.stepForward(tokens, head, rows, rows, argmax));
  }

  /** @internal A forward of more than `rows` tokens, alone, in chunks (the last chunk's rows come back). */
  prefillNow(tokens: ArrayLike<number>, rows: number, argmax: boolean): StepResult {
    const t = tokens.length;
    const lastStart = checkForward(t, rows, this.kvLength, this.capacity, FORWARD_TOKENS_MAX);
    const out = argmax ? this.results.argmaxOf(rows) : this.results.logitsOf(rows);
    for (let start = 0; start <= lastStart; start += FORWARD_TOKENS_MAX) {
      const count = Math.min(FORWARD_TOKENS_MAX, t - start);
      const last = start === lastStart;
      // A few padded lengths (ORT's first run of a shape is slow); the pad rows' keys land past the end.
      const padded = prefillShape(count, this.model.kvSlots - this.kvLength);
      this.model.runAlone(
        this.slot,
        tokens,
        start,
        count,
        padded,
        this.kvLength,
        last ? rows : 1,
        argmax,
        last ? out : undefined,
      );
      this.kvLength += count;
    }
    return out;
  }

  advance(count: number): void {
    this.kvLength += count;
  }

  rewind(length: number): void {
    checkRewind(length, this.kvLength);
    this.kvLength = length;
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.model.releaseSlot(this.slot);
  }
}
