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
import type { NativeSession } from './native-run.js';
import type { DecoderModel, DecoderSequence, ModelInfo, RuntimeOptions } from './types.js';

// Names must match src/convert/decoder-graph.ts IO (the runtime may not import the converter).
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

/**
 * What runs a model's single-sequence forwards: onnxruntime-node's session, or (CPU, when built)
 * the native runner's — then no onnxruntime-node session is created for the graph at all (a
 * second copy of the weights, ~150 MB, and its load time).
 */
export type SingleForwards = { readonly session: ort.InferenceSession; readonly native?: undefined } | { readonly session?: undefined; readonly native: NativeSession };

export class GqaDecoderModel implements DecoderModel {
  readonly info: ModelInfo;
  private readonly forwards: SingleForwards;
  private readonly manifest: ModelManifest;
  private readonly defaultCapacity: number;
  private readonly rowsMin: number;

  private readonly scheduler: ForwardScheduler | undefined;
  private readonly batches: readonly SlotBatch[];

  /** Forwards run so far: alone, and batched (forwards of the slot graphs / sequences they carried; forwards by graph size). */
  get forwardCounts(): ForwardCounts {
    return this.scheduler?.counts ?? { alone: 0, batched: 0, batchedSequences: 0, bySlots: {} };
  }

  /** `batches`: K-slot graphs of the same weights, any sizes (a batch runs on the smallest that holds it). */
  constructor(forwards: SingleForwards, manifest: ModelManifest, options: RuntimeOptions, batches: readonly SlotBatch[] = []) {
    this.forwards = forwards;
    const native = forwards.native;
    this.manifest = manifest;
    this.batches = [...batches].sort((a, b) => a.slots - b.slots);
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
      batchSlots: this.batches.at(-1)?.slots ?? 1,
      forwardRowsMin: this.rowsMin,
      runner: native === undefined ? 'onnxruntime-node' : 'native',
      attention: native?.ownAttention ? 'native' : 'onnxruntime',
      dtype: manifest.dtype ?? 'float32',
    };
    const chunk = options.batchPrefillChunkTokens ?? FORWARD_TOKENS_MAX;
    if (!Number.isInteger(chunk) || chunk < 1 || chunk > FORWARD_TOKENS_MAX) throw new RangeError(`batchPrefillChunkTokens must be an integer in [1, ${FORWARD_TOKENS_MAX}], got ${chunk}`);
    this.scheduler = this.batches.length === 0 ? undefined : new ForwardScheduler(this.batches.map((b) => new SlotBatchRunner(b, manifest, executionProvider !== 'cpu')), chunk);
  }

  createSequence(options?: { readonly capacity?: number }): DecoderSequence {
    // One position stays free for the pad row (rotary tables cover contextLength positions).
    const capacity = Math.min(options?.capacity ?? this.defaultCapacity, this.manifest.contextLength - (this.rowsMin - 1));
    return new GqaSequence(this.forwards, this.manifest, capacity, this.rowsMin, this.info.executionProvider !== 'cpu', this.scheduler);
  }

  async dispose(): Promise<void> {
    for (const runner of this.scheduler?.runners ?? []) runner.dispose();
    for (const forwards of [this.forwards, ...this.batches]) await releaseForwards(forwards);
  }
}

/** Frees whichever session runs these forwards. */
export async function releaseForwards(forwards: SingleForwards): Promise<void> {
  await forwards.session?.release();
  forwards.native?.release();
}

/**
 * A K-slot batch graph of the same weights (load-model.ts checks that), run like the
 * single-sequence graph: by the native runner when it runs those (then with the same attention
 * kernel, so a sequence's batched and lone forwards agree), else by onnxruntime-node.
 */
export type SlotBatch = SingleForwards & { readonly slots: number };

export interface ForwardCounts {
  readonly alone: number;
  readonly batched: number;
  readonly batchedSequences: number;
  /** Batched forwards by the slot count of the graph that ran them. */
  readonly bySlots: Readonly<Record<number, number>>;
}

/** Largest forward that joins a batch; longer ones (prefill chunks) run alone so they do not stall the decodes. */
export const BATCH_TOKENS_MAX = 32;

interface PendingForward {
  readonly sequence: GqaSequence;
  readonly tokens: ArrayLike<number>;
  readonly start: number;
  readonly count: number;
  /** count padded to the row minimum (pad rows repeat the last token; their logits are never read). */
  readonly padded: number;
  readonly rows: number;
}

interface QueuedForward extends PendingForward {
  resolve(logits: Float32Array): void;
  reject(error: unknown): void;
}

/**
 * Collects the forwards sequences ask for and runs them together. Generations interleave on one
 * thread: after a forward returns, each resumes, drafts and asks for its next forward in the same
 * turn of the event loop, so one setImmediate later every sequence that is ready has asked. Then
 * up to K forwards run as one K-slot forward; a lone forward, or a long one, runs on the
 * single-sequence graph. Forwards never overlap (each sequence's KV is bound by the run).
 */
class ForwardScheduler {
  /** Prefill chunk size: BATCH_TOKENS_MAX joins prefills to the batches; FORWARD_TOKENS_MAX runs them alone. */
  readonly prefillChunkTokens: number;
  private queue: QueuedForward[] = [];
  readonly counts: { alone: number; batched: number; batchedSequences: number; bySlots: Record<number, number> } = { alone: 0, batched: 0, batchedSequences: 0, bySlots: {} };
  private scheduled = false;
  private running = false;
  /** By slot count, ascending. */
  readonly runners: readonly SlotBatchRunner[];
  private readonly slotsMax: number;

  constructor(runners: readonly SlotBatchRunner[], prefillChunkTokens: number) {
    this.runners = runners;
    this.slotsMax = runners.at(-1)!.slots;
    this.prefillChunkTokens = prefillChunkTokens;
  }

  submit(forward: PendingForward): Promise<Float32Array> {
    return new Promise<Float32Array>((resolve, reject) => {
      this.queue.push({ ...forward, resolve, reject });
      this.schedule();
    });
  }

  private schedule(): void {
    if (this.scheduled || this.running) return;
    this.scheduled = true;
    setImmediate(() => void this.flush());
  }

  private async flush(): Promise<void> {
    this.scheduled = false;
    this.running = true;
    const work = this.queue;
    this.queue = [];
    const batchable = work.filter((f) => f.padded <= BATCH_TOKENS_MAX);
    const alone = work.filter((f) => f.padded > BATCH_TOKENS_MAX);
    if (batchable.length === 1) alone.unshift(batchable.pop()!);
    try {
      for (let i = 0; i < batchable.length; i += this.slotsMax) {
        const group = batchable.slice(i, i + this.slotsMax);
        if (group.length === 1) {
          alone.push(group[0]!);
          continue;
        }
        // The smallest graph that holds the group: idle slots cost nearly what busy ones do.
        const runner = this.runners.find((r) => r.slots >= group.length)!;
        try {
          this.counts.batched++;
          this.counts.batchedSequences += group.length;
          this.counts.bySlots[runner.slots] = (this.counts.bySlots[runner.slots] ?? 0) + 1;
          await runner.run(group);
        } catch (error) {
          for (const f of group) f.reject(error);
        }
      }
      for (const f of alone) {
        this.counts.alone++;
        try {
          f.resolve(await f.sequence.runAlone(f.tokens, f.start, f.count, f.rows));
        } catch (error) {
          f.reject(error);
        }
      }
    } finally {
      this.running = false;
      if (this.queue.length > 0) this.schedule();
    }
  }
}

/** A zeroed KV tensor in the graph's float type (float16 graphs: binary16 bits in a Uint16Array). */
function kvTensor(m: ModelManifest, size: number, dims: readonly number[]): ort.Tensor {
  return m.dtype === 'float16' ? new ort.Tensor('float16', new Uint16Array(size), dims) : new ort.Tensor('float32', new Float32Array(size), dims);
}

/** The buffer and tensor of a given size, made on first use. */
function cached<A>(map: Map<number, { data: A; tensor: ort.Tensor }>, size: number, array: (n: number) => A, tensor: (data: A) => ort.Tensor): { data: A; tensor: ort.Tensor } {
  let entry = map.get(size);
  if (entry === undefined) {
    const data = array(size);
    entry = { data, tensor: tensor(data) };
    map.set(size, entry);
  }
  return entry;
}

/**
 * One forward of the K-slot graph: the sequences' new tokens concatenated, each slot bound to its
 * sequence's own KV tensors (appended in place, as alone), idle slots to a 2-position scratch KV
 * with one token. Logits come back for the requested rows of each sequence, in order.
 * On a GPU each slot's present KV stays on the device and becomes its sequence's next past, as alone.
 */
class SlotBatchRunner {
  readonly slots: number;
  private readonly deviceKv: boolean;
  private readonly forwards: SingleForwards;
  private readonly vocab: number;
  private readonly feeds: Record<string, ort.Tensor> = {};
  private readonly fetches: Record<string, ort.Tensor> = {};
  private readonly slotTokens: BigInt64Array;
  private readonly seqlensK: Int32Array[] = [];
  private readonly totalLength: Int32Array[] = [];
  private readonly kvNames: (readonly [string, string])[][] = [];
  private readonly idleKv: ort.Tensor[];
  /** GPU: each slot's idle KV after its first idle forward stays on the device (no upload per forward). */
  private readonly idleKvBySlot: ort.Tensor[][];
  private readonly logitsByRows = new Map<number, { data: Float32Array; tensor: ort.Tensor }>();
  // By length (≤ K × BATCH_TOKENS_MAX tokens, ≤ K × BATCH_TOKENS_MAX rows): allocated once each.
  private readonly idsByLength = new Map<number, { data: BigInt64Array; tensor: ort.Tensor }>();
  private readonly indexByRows = new Map<number, { data: BigInt64Array; tensor: ort.Tensor }>();

  constructor(batch: SlotBatch, m: ModelManifest, deviceKv: boolean) {
    this.forwards = batch;
    this.deviceKv = deviceKv;
    this.slots = batch.slots;
    this.vocab = m.vocab;
    this.slotTokens = new BigInt64Array(batch.slots);
    this.feeds['slot_tokens'] = new ort.Tensor('int64', this.slotTokens, [batch.slots]);
    const idleDims = [1, m.kvHeads, 2, m.headDim];
    this.idleKv = Array.from({ length: 2 * m.layers }, () => kvTensor(m, m.kvHeads * 2 * m.headDim, idleDims));
    this.idleKvBySlot = Array.from({ length: batch.slots }, () => [...this.idleKv]);
    for (let s = 0; s < batch.slots; s++) {
      const seqlens = new Int32Array(1);
      const total = new Int32Array(1);
      this.seqlensK.push(seqlens);
      this.totalLength.push(total);
      this.feeds[`seqlens_k.${s}`] = new ort.Tensor('int32', seqlens, [1]);
      this.feeds[`total_sequence_length.${s}`] = new ort.Tensor('int32', total, []);
      const names: (readonly [string, string])[] = [];
      for (let l = 0; l < m.layers; l++) {
        names.push([`past_key_values.${s}.${l}.key`, `present.${s}.${l}.key`], [`past_key_values.${s}.${l}.value`, `present.${s}.${l}.value`]);
      }
      this.kvNames.push(names);
    }
  }

  async run(group: readonly QueuedForward[]): Promise<void> {
    const idle = this.slots - group.length;
    let tokens = idle;
    let rows = 0;
    for (const f of group) {
      tokens += f.padded;
      rows += f.rows;
    }
    const ids = cached(this.idsByLength, tokens, (n) => new BigInt64Array(n), (d) => new ort.Tensor('int64', d, [1, tokens]));
    const logitsIndex = cached(this.indexByRows, rows, (n) => new BigInt64Array(n), (d) => new ort.Tensor('int64', d, [rows]));
    let offset = 0;
    let row = 0;
    for (let s = 0; s < this.slots; s++) {
      const f = group[s];
      const names = this.kvNames[s]!;
      if (f === undefined) {
        ids.data[offset++] = 0n;
        this.slotTokens[s] = 1n;
        this.seqlensK[s]![0] = 0;
        this.totalLength[s]![0] = 1;
        names.forEach(([past, present], i) => {
          this.feeds[past] = this.idleKvBySlot[s]![i]!;
          if (!this.deviceKv) this.fetches[present] = this.idleKv[i]!;
        });
        continue;
      }
      for (let i = 0; i < f.count; i++) ids.data[offset + i] = BigInt(f.tokens[f.start + i]!);
      for (let i = f.count; i < f.padded; i++) ids.data[offset + i] = ids.data[offset + f.count - 1]!;
      for (let i = f.count - f.rows; i < f.count; i++) logitsIndex.data[row++] = BigInt(offset + i);
      this.slotTokens[s] = BigInt(f.padded);
      this.seqlensK[s]![0] = f.sequence.length + (this.forwards.native?.ownAttention ? f.count : f.padded) - 1;
      this.totalLength[s]![0] = f.sequence.length + f.padded;
      const kv = f.sequence.kvTensors();
      names.forEach(([past, present], i) => {
        this.feeds[past] = kv[i]!;
        if (!this.deviceKv) this.fetches[present] = kv[i]!;
      });
      offset += f.padded;
    }
    this.feeds['input_ids'] = ids.tensor;
    this.feeds['logits_index'] = logitsIndex.tensor;
    if (this.deviceKv) {
      await this.runOnDevice(group, rows);
      return;
    }
    const logits = cached(this.logitsByRows, rows, (n) => new Float32Array(n * this.vocab), (d) => new ort.Tensor('float32', d, [1, rows, this.vocab]));
    this.fetches['logits'] = logits.tensor;
    if (this.forwards.native !== undefined) this.forwards.native.run(this.feeds, this.fetches);
    else await this.forwards.session.run(this.feeds, this.fetches);
    // Each sequence gets its rows in its own buffer: the batch's is reused by the next batch,
    // which may run before a caller has read them (the native runner runs synchronously).
    let at = 0;
    for (const f of group) {
      f.sequence.advance(f.count);
      const own = f.sequence.logitsOf(f.rows).data;
      own.set(logits.data.subarray(at * this.vocab, (at + f.rows) * this.vocab));
      f.resolve(own);
      at += f.rows;
    }
  }

  dispose(): void {
    for (const idle of this.idleKvBySlot) for (const t of idle) if (t.location === 'gpu-buffer') t.dispose();
  }

  /** GPU: ORT allocates every present on the device; each becomes its slot's next past (idle slots' are freed). */
  private async runOnDevice(group: readonly QueuedForward[], rows: number): Promise<void> {
    const session = this.forwards.session;
    if (session === undefined) throw new Error('device KV needs an onnxruntime-node session');
    const results = await session.run(this.feeds);
    for (let s = 0; s < this.slots; s++) {
      const f = group[s];
      this.kvNames[s]!.forEach(([, present], i) => {
        const next = results[present]!;
        if (f !== undefined) f.sequence.adoptDeviceKv(i, next);
        else {
          const idle = this.idleKvBySlot[s]!;
          if (idle[i]!.location === 'gpu-buffer') idle[i]!.dispose();
          idle[i] = next;
        }
      });
    }
    const logits = results['logits']!.data as Float32Array;
    if (logits.length !== rows * this.vocab) throw new Error(`batched forward returned ${logits.length} logits, expected ${rows} rows`);
    let at = 0;
    for (const f of group) {
      f.sequence.advance(f.count);
      f.resolve(logits.subarray(at * this.vocab, (at + f.rows) * this.vocab));
      at += f.rows;
    }
  }
}

class GqaSequence implements DecoderSequence {
  readonly capacity: number;
  private kvLength = 0;
  private readonly forwards: SingleForwards;
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
  private readonly scheduler: ForwardScheduler | undefined;

  /** The native attention kernel's key layout, [head][dim][position]: only that kernel reads this cache. */
  private readonly keysTransposed: boolean;

  private readonly manifest: ModelManifest;

  constructor(forwards: SingleForwards, m: ModelManifest, capacity: number, rowsMin: number, deviceKv: boolean, scheduler?: ForwardScheduler) {
    this.forwards = forwards;
    this.manifest = m;
    this.keysTransposed = forwards.native?.ownAttention === true;
    this.scheduler = scheduler;
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
    for (let l = 0; l < this.layers; l++) {
      for (const [input, output] of [
        [`past_key_values.${l}.key`, `present.${l}.key`],
        [`past_key_values.${l}.value`, `present.${l}.value`],
      ] as const) {
        const next = kvTensor(this.manifest, size, dims);
        const old = this.feeds[input];
        if (old !== undefined && this.kvLength > 0) this.copyKv(input, old.data as Float32Array, this.slots, next.data as Float32Array, slots, this.kvLength);
        this.feeds[input] = next;
        this.fetches[output] = next;
      }
    }
    this.slots = slots;
  }

  /** Copies the first `length` positions of one KV tensor between buffers of `fromSlots` and `toSlots` positions. */
  private copyKv(input: string, src: Float32Array, fromSlots: number, dst: Float32Array, toSlots: number, length: number): void {
    // Rows of positions ([head][position][dim]); the native attention kernel keeps keys
    // transposed, rows of dims ([head][dim][position]) (native/gqa-attention.c).
    const transposed = this.keysTransposed && input.endsWith('.key');
    const rows = transposed ? this.kvHeads * this.headDim : this.kvHeads;
    const rowFloats = transposed ? 1 : this.headDim;
    for (let r = 0; r < rows; r++) {
      dst.set(src.subarray(r * fromSlots * rowFloats, (r * fromSlots + length) * rowFloats), r * toSlots * rowFloats);
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
    if (length + this.rowsMin > this.slots) this.bindKv(Math.min(this.capacity + this.rowsMin - 1, Math.ceil((length + this.rowsMin) / KV_SLOTS_STEP) * KV_SLOTS_STEP));
    for (const [input] of this.kvNames) {
      this.copyKv(input, source.feeds[input]!.data as Float32Array, source.slots, this.feeds[input]!.data as Float32Array, this.slots, length);
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
    const chunkMax = this.scheduler?.prefillChunkTokens ?? FORWARD_TOKENS_MAX;
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
    if (this.kvLength + padded > this.slots) {
      const needed = Math.ceil((this.kvLength + padded) / KV_SLOTS_STEP) * KV_SLOTS_STEP;
      this.bindKv(Math.min(this.capacity + this.rowsMin - 1, needed));
    }
    if (this.scheduler !== undefined) return this.scheduler.submit({ sequence: this, tokens, start, count, padded, rows });
    return this.runAlone(tokens, start, count, rows);
  }

  /** The KV tensors in graph order (layer 0 key, layer 0 value, layer 1 key, ...), for a batched forward. */
  kvTensors(): ort.Tensor[] {
    return this.kvNames.map(([past]) => this.feeds[past]!);
  }

  /** This sequence's logits buffer for `rows` rows (made once per row count): a forward's result lives here until its next forward. */
  logitsOf(rows: number): { data: Float32Array; tensor: ort.Tensor } {
    return cached(this.logitsByRows, rows, (n) => new Float32Array(n * this.vocab), (d) => new ort.Tensor('float32', d, [1, rows, this.vocab]));
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
