/**
 * Batched forwards on the device path: the step scheduler's groups run as one forward of a slot
 * graph (`anpd convert --slots K --dtype float16`), every sequence's last token and drafts together.
 *
 * Places are fixed: a sequence of a batching model owns a slot, its KV rows in one device buffer
 * per layer (the slab; the single-sequence graph binds the same rows through views), and slot s is
 * place s of every batch graph. So each graph binds the same memory at every step (bound once;
 * on CUDA replayed as one captured graph), and a step runs the narrowest graph whose places cover
 * its highest slot (slots are handed out lowest first). A place without a forward is padded: its
 * rows are written past its sequence's length, where nothing is read and the next forward writes.
 *
 * Each place attends alone (the slot graph runs one GroupQueryAttention per place, batch 1, with
 * the single-sequence graph's total_sequence_length), so attention is the single-sequence
 * kernel's. What a batch changes is the row count of the matrix products (docs/gpu.md says what
 * that does to exactness, measured).
 */
import type { ModelManifest } from '../model/model-manifest.js';
import { type BoundRun, type DeviceBuffer, type DeviceSession, type DeviceValue, ONNX_TYPES } from './native-run.js';
import type { BatchExecutor, StepForward, StepResult, StepSubmitter } from './types.js';

/** A slot graph of the model's weights on the device, sharing the model's device memory. */
export interface DeviceBatchGraph {
  readonly width: number;
  readonly session: DeviceSession;
}

/** What the executor needs of the model's sequences (DeviceSequence). */
export interface DeviceBatchSequence {
  /** Its place in every batch graph. */
  readonly slot: number;
  readonly length: number;
  /** A batched forward appended `count` positions to its KV. */
  advance(count: number): void;
  /** Its own result arrays (reused by its next forward). */
  readonly results: StepResultArrays;
  /** The forward alone, on the single-sequence graph (synchronous). */
  runAlone(forward: StepForward): StepResult;
}

/** A sequence's result arrays by row count, each made once (a step allocates none); reused by its next forward. */
export class StepResultArrays {
  private readonly vocab: number;
  private readonly logits = new Map<number, Float32Array>();
  private readonly ids = new Map<number, Int32Array>();

  constructor(vocab: number) {
    this.vocab = vocab;
  }

  logitsOf(rows: number): Float32Array {
    let logits = this.logits.get(rows);
    if (logits === undefined) {
      logits = new Float32Array(rows * this.vocab);
      this.logits.set(rows, logits);
    }
    return logits;
  }

  argmaxOf(rows: number): Int32Array {
    let ids = this.ids.get(rows);
    if (ids === undefined) {
      ids = new Int32Array(rows);
      this.ids.set(rows, ids);
    }
    return ids;
  }

  clear(): void {
    this.logits.clear();
    this.ids.clear();
  }
}

/** What the executor needs of the model: its memory and shapes. */
export interface DeviceBatchModel {
  readonly session: DeviceSession;
  readonly manifest: ModelManifest;
  readonly rows: number;
  /** Positions of a slot's KV rows (the total_sequence_length every forward passes). */
  readonly kvSlots: number;
  readonly elementType: number;
  /** Slot s's KV buffers in graph order (layer 0 key, layer 0 value, …). */
  slotKv(slot: number): readonly DeviceBuffer[];
  /** Tokens in slot s's KV (0 for a free slot). */
  lengthAt(slot: number): number;
  /** The graphs output argmax (float16). */
  readonly argmax: boolean;
}

interface BoundGraph {
  readonly width: number;
  readonly session: DeviceSession;
  readonly bound: BoundRun;
}

export class DeviceBatchExecutor implements BatchExecutor {
  readonly widths: readonly number[];
  readonly counts: { alone: number; batched: number; batchedSequences: number; byWidth: Record<number, number> } = {
    alone: 0,
    batched: 0,
    batchedSequences: 0,
    byWidth: {},
  };
  private readonly model: DeviceBatchModel;
  private readonly graphs: readonly BoundGraph[];
  private readonly slots: number;
  private stepSubmitter: StepSubmitter | undefined;
  // Device memory shared by the graphs (each binds its first width × rows entries), and host staging.
  private readonly ids: DeviceBuffer;
  private readonly seqlens: DeviceBuffer;
  private readonly logitsIndex: DeviceBuffer;
  private readonly logits: DeviceBuffer;
  private readonly argmaxBuffer: DeviceBuffer | undefined;
  private readonly hostIds: BigInt64Array;
  private readonly hostSeqlens: Int32Array;
  private readonly hostArgmax: BigInt64Array;
  private readonly totalLength: Int32Array;
  private readonly results: StepResult[] = [];

  constructor(model: DeviceBatchModel, graphs: readonly DeviceBatchGraph[]) {
    this.model = model;
    const sorted = [...graphs].sort((a, b) => a.width - b.width);
    this.slots = sorted.at(-1)?.width ?? 0;
    const { session, rows } = model;
    const vocab = model.manifest.vocab;
    const entries = this.slots * rows;
    this.ids = session.alloc(entries * 8);
    this.seqlens = session.alloc(this.slots * 4);
    this.logitsIndex = session.alloc(entries * 8);
    this.logits = session.alloc(entries * vocab * 4);
    this.argmaxBuffer = model.argmax ? session.alloc(entries * 8) : undefined;
    this.hostIds = new BigInt64Array(entries);
    this.hostSeqlens = new Int32Array(this.slots);
    this.hostArgmax = new BigInt64Array(entries);
    // Every row goes through the LM head: one shape per graph (the single-sequence graph does the same).
    session.write(
      this.logitsIndex,
      0,
      BigInt64Array.from({ length: entries }, (_, i) => BigInt(i)),
    );
    this.totalLength = Int32Array.of(model.kvSlots);
    this.graphs = sorted.map((g) => ({ width: g.width, session: g.session, bound: this.bind(g) }));
    this.widths = this.graphs.map((g) => g.width);
  }

  get submitter(): StepSubmitter | undefined {
    return this.stepSubmitter;
  }

  attach(submitter: StepSubmitter): void {
    if (this.stepSubmitter !== undefined) throw new Error('a step scheduler is already attached to this model');
    this.stepSubmitter = submitter;
  }

  async run(width: number, forwards: readonly StepForward[]): Promise<readonly StepResult[]> {
    if (width === 1 && forwards.length === 1) {
      this.counts.alone++;
      return [(forwards[0]!.sequence as DeviceBatchSequence).runAlone(forwards[0]!)];
    }
    let top = 0;
    for (const f of forwards) top = Math.max(top, (f.sequence as DeviceBatchSequence).slot + 1);
    const graph = this.graphs.find((g) => g.width >= top);
    if (graph === undefined || forwards.length > graph.width)
      throw new RangeError(`no batch graph holds slots up to ${top - 1} (widths: ${this.widths.join(', ')})`);
    this.counts.batched++;
    this.counts.batchedSequences += forwards.length;
    this.counts.byWidth[graph.width] = (this.counts.byWidth[graph.width] ?? 0) + 1;
    return this.runGraph(graph, forwards);
  }

  /** Runs every graph until ORT has captured it (CUDA: the third run), all places idle: no request pays for it. */
  warmUp(): void {
    for (const graph of this.graphs) for (let i = 0; i < 3; i++) this.runGraph(graph, []);
  }

  private runGraph(graph: BoundGraph, forwards: readonly StepForward[]): StepResult[] {
    const { session, rows } = this.model;
    const vocab = this.model.manifest.vocab;
    const width = graph.width;
    // Idle places: pad rows after the slot's own tokens (nothing reads them; the next forward overwrites them).
    for (let s = 0; s < width; s++) this.hostSeqlens[s] = this.model.lengthAt(s) + rows - 1;
    this.hostIds.fill(0n, 0, width * rows);
    let argmaxWanted = false;
    for (const f of forwards) {
      const sequence = f.sequence as DeviceBatchSequence;
      const at = sequence.slot * rows;
      for (let i = 0; i < f.count; i++) this.hostIds[at + i] = BigInt(f.tokens[f.start + i]!);
      for (let i = f.count; i < rows; i++) this.hostIds[at + i] = this.hostIds[at + f.count - 1]!;
      this.hostSeqlens[sequence.slot] = sequence.length + rows - 1;
      if (f.argmax === true) argmaxWanted = true;
    }
    session.write(this.ids, 0, this.hostIds.subarray(0, width * rows));
    session.write(this.seqlens, 0, this.hostSeqlens.subarray(0, width));
    graph.bound.run(0);
    if (argmaxWanted) session.read(this.argmaxBuffer!, 0, this.hostArgmax.subarray(0, width * rows));
    const results = this.results;
    results.length = 0;
    for (const f of forwards) {
      const sequence = f.sequence as DeviceBatchSequence;
      // The forward's last f.rows real rows.
      const first = sequence.slot * rows + f.count - f.rows;
      if (f.argmax === true) {
        const ids = sequence.results.argmaxOf(f.rows);
        for (let i = 0; i < f.rows; i++) ids[i] = Number(this.hostArgmax[first + i]!);
        results.push(ids);
      } else {
        const logits = sequence.results.logitsOf(f.rows);
        session.read(this.logits, first * vocab * 4, logits);
        results.push(logits);
      }
      sequence.advance(f.count);
    }
    return results.slice();
  }

  /** The graph's inputs and outputs, bound once: place s is slot s. */
  private bind(graph: DeviceBatchGraph): BoundRun {
    const { rows, kvSlots, elementType, manifest } = this.model;
    const width = graph.width;
    const int32 = ONNX_TYPES['int32']!;
    const int64 = ONNX_TYPES['int64']!;
    const inputs: Record<string, DeviceValue> = {
      input_ids: { data: this.ids, dims: [1, width * rows], type: int64 },
      slot_tokens: { data: new BigInt64Array(width).fill(BigInt(rows)), dims: [width], type: int64 },
      logits_index: { data: this.logitsIndex, dims: [width * rows], type: int64 },
    };
    const outputs: Record<string, DeviceValue> = {
      logits: { data: this.logits, dims: [1, width * rows, manifest.vocab], type: ONNX_TYPES['float32']! },
    };
    if (this.argmaxBuffer !== undefined)
      outputs['argmax'] = { data: this.argmaxBuffer, dims: [1, width * rows], type: int64 };
    const kvDims = [1, manifest.kvHeads, kvSlots, manifest.headDim];
    for (let s = 0; s < width; s++) {
      inputs[`seqlens_k.${s}`] = { data: graph.session.view(this.seqlens, s * 4, 4), dims: [1], type: int32 };
      // A host scalar (ORT reads it on the host): the slot's size, as the single-sequence graph passes after a first forward.
      inputs[`total_sequence_length.${s}`] = { data: this.totalLength, dims: [], type: int32 };
      const kv = this.model.slotKv(s);
      for (let l = 0; l < manifest.layers; l++) {
        const key = { data: kv[2 * l]!, dims: kvDims, type: elementType };
        const value = { data: kv[2 * l + 1]!, dims: kvDims, type: elementType };
        inputs[`past_key_values.${s}.${l}.key`] = key;
        inputs[`past_key_values.${s}.${l}.value`] = value;
        outputs[`present.${s}.${l}.key`] = key;
        outputs[`present.${s}.${l}.value`] = value;
      }
    }
    return graph.session.bind(inputs, outputs);
  }

  dispose(): void {
    for (const g of this.graphs) {
      g.bound.release();
      g.session.release();
    }
    for (const b of [this.ids, this.seqlens, this.logitsIndex, this.logits, this.argmaxBuffer])
      if (b !== undefined) this.model.session.free(b);
  }
}
