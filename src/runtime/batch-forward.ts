/**
 * The batch graphs of our converted model as a BatchExecutor: it runs the groups the step scheduler
 * (src/schedule/step-scheduler.ts) makes, on the graph of the width it picks, and decides nothing.
 */
import type { ModelManifest } from '../model/model-manifest.js';
import { cachedTensor, type GraphForwards, kvTensor, releaseForwards } from './graph-forwards.js';
import { ort } from './ort-session.js';
import type { BatchExecutor, StepForward, StepSubmitter } from './types.js';

/**
 * A batch graph of the same weights (load-model.ts checks that) carrying `width` sequences per
 * forward, run like the single-sequence graph: by the native runner when it runs those (then with
 * the same attention kernel, so a sequence's batched and lone forwards agree), else by
 * onnxruntime-node.
 */
export type BatchGraph = GraphForwards & { readonly width: number };

/** What the executor needs of a sequence of the same model (GqaSequence). */
export interface BatchableSequence {
  readonly length: number;
  /** The KV tensors in graph order (layer 0 key, layer 0 value, layer 1 key, ...). */
  kvTensors(): ort.Tensor[];
  /** The sequence's own logits buffer for `rows` rows: a forward's result lives there until its next forward. */
  logitsOf(rows: number): { data: Float32Array; tensor: ort.Tensor };
  /** A batched forward appended `count` positions to the KV. */
  advance(count: number): void;
  /** GPU: a batched forward's present KV tensor (graph order) becomes the sequence's past. */
  adoptDeviceKv(index: number, next: ort.Tensor | undefined): void;
  /** One forward of the sequence alone, on the single-sequence graph. */
  runAlone(tokens: ArrayLike<number>, start: number, count: number, rows: number): Promise<Float32Array>;
}

export class GqaBatchExecutor implements BatchExecutor {
  readonly widths: readonly number[];
  readonly counts: { alone: number; batched: number; batchedSequences: number; byWidth: Record<number, number> } = {
    alone: 0,
    batched: 0,
    batchedSequences: 0,
    byWidth: {},
  };
  /** Prefill chunk size of the model's sequences while batching (≤ the scheduler's batch entry limit: prefill chunks join the batches). */
  readonly prefillChunkTokens: number;
  private readonly runners: readonly BatchGraphRunner[];
  private stepSubmitter: StepSubmitter | undefined;

  constructor(graphs: readonly BatchGraph[], manifest: ModelManifest, deviceKv: boolean, prefillChunkTokens: number) {
    this.runners = [...graphs]
      .sort((a, b) => a.width - b.width)
      .map((g) => new BatchGraphRunner(g, manifest, deviceKv));
    this.widths = this.runners.map((r) => r.width);
    this.prefillChunkTokens = prefillChunkTokens;
  }

  /** Where the model's sequences hand their forwards; undefined until a scheduler attaches (each then runs alone). */
  get submitter(): StepSubmitter | undefined {
    return this.stepSubmitter;
  }

  attach(submitter: StepSubmitter): void {
    if (this.stepSubmitter !== undefined) throw new Error('a step scheduler is already attached to this model');
    this.stepSubmitter = submitter;
  }

  async run(width: number, forwards: readonly StepForward[]): Promise<readonly Float32Array[]> {
    if (width === 1) {
      if (forwards.length !== 1)
        throw new RangeError(`the single-sequence graph runs one forward, got ${forwards.length}`);
      const f = forwards[0]!;
      this.counts.alone++;
      return [await (f.sequence as BatchableSequence).runAlone(f.tokens, f.start, f.count, f.rows)];
    }
    const runner = this.runners.find((r) => r.width === width);
    if (runner === undefined)
      throw new RangeError(`no batch graph of width ${width} (widths: ${this.widths.join(', ')})`);
    if (forwards.length < 1 || forwards.length > width)
      throw new RangeError(`a width-${width} forward carries 1..${width} sequences, got ${forwards.length}`);
    this.counts.batched++;
    this.counts.batchedSequences += forwards.length;
    this.counts.byWidth[width] = (this.counts.byWidth[width] ?? 0) + 1;
    return runner.run(forwards);
  }

  async dispose(): Promise<void> {
    for (const runner of this.runners) await runner.dispose();
  }
}

/**
 * One forward of a batch graph: the sequences' new tokens concatenated, each place bound to its
 * sequence's own KV tensors (appended in place, as alone), idle places to a 2-position scratch KV
 * with one token. Logits come back for the requested rows of each sequence, in order.
 * On a GPU each place's present KV stays on the device and becomes its sequence's next past, as alone.
 */
class BatchGraphRunner {
  readonly width: number;
  private readonly deviceKv: boolean;
  private readonly forwards: GraphForwards;
  private readonly vocab: number;
  private readonly feeds: Record<string, ort.Tensor> = {};
  private readonly fetches: Record<string, ort.Tensor> = {};
  private readonly slotTokens: BigInt64Array;
  private readonly seqlensK: Int32Array[] = [];
  private readonly totalLength: Int32Array[] = [];
  private readonly kvNames: (readonly [string, string])[][] = [];
  private readonly idleKv: ort.Tensor[];
  /** GPU: each place's idle KV after its first idle forward stays on the device (no upload per forward). */
  private readonly idleKvByPlace: ort.Tensor[][];
  private readonly logitsByRows = new Map<number, { data: Float32Array; tensor: ort.Tensor }>();
  // By length (≤ width × the scheduler's entry limit): allocated once each.
  private readonly idsByLength = new Map<number, { data: BigInt64Array; tensor: ort.Tensor }>();
  private readonly indexByRows = new Map<number, { data: BigInt64Array; tensor: ort.Tensor }>();

  constructor(graph: BatchGraph, m: ModelManifest, deviceKv: boolean) {
    this.forwards = graph;
    this.deviceKv = deviceKv;
    this.width = graph.width;
    this.vocab = m.vocab;
    this.slotTokens = new BigInt64Array(graph.width);
    // Graph input names keep the converter's "slot" (src/convert/llama-graph.ts).
    this.feeds['slot_tokens'] = new ort.Tensor('int64', this.slotTokens, [graph.width]);
    const idleDims = [1, m.kvHeads, 2, m.headDim];
    this.idleKv = Array.from({ length: 2 * m.layers }, () => kvTensor(m, m.kvHeads * 2 * m.headDim, idleDims));
    this.idleKvByPlace = Array.from({ length: graph.width }, () => [...this.idleKv]);
    for (let s = 0; s < graph.width; s++) {
      const seqlens = new Int32Array(1);
      const total = new Int32Array(1);
      this.seqlensK.push(seqlens);
      this.totalLength.push(total);
      this.feeds[`seqlens_k.${s}`] = new ort.Tensor('int32', seqlens, [1]);
      this.feeds[`total_sequence_length.${s}`] = new ort.Tensor('int32', total, []);
      const names: (readonly [string, string])[] = [];
      for (let l = 0; l < m.layers; l++) {
        names.push(
          [`past_key_values.${s}.${l}.key`, `present.${s}.${l}.key`],
          [`past_key_values.${s}.${l}.value`, `present.${s}.${l}.value`],
        );
      }
      this.kvNames.push(names);
    }
  }

  async run(group: readonly StepForward[]): Promise<Float32Array[]> {
    const idle = this.width - group.length;
    let tokens = idle;
    let rows = 0;
    for (const f of group) {
      tokens += f.padded;
      rows += f.rows;
    }
    const ids = cachedTensor(
      this.idsByLength,
      tokens,
      (n) => new BigInt64Array(n),
      (d) => new ort.Tensor('int64', d, [1, tokens]),
    );
    const logitsIndex = cachedTensor(
      this.indexByRows,
      rows,
      (n) => new BigInt64Array(n),
      (d) => new ort.Tensor('int64', d, [rows]),
    );
    let offset = 0;
    let row = 0;
    for (let s = 0; s < this.width; s++) {
      const f = group[s];
      const names = this.kvNames[s]!;
      if (f === undefined) {
        ids.data[offset++] = 0n;
        this.slotTokens[s] = 1n;
        this.seqlensK[s]![0] = 0;
        this.totalLength[s]![0] = 1;
        names.forEach(([past, present], i) => {
          this.feeds[past] = this.idleKvByPlace[s]![i]!;
          if (!this.deviceKv) this.fetches[present] = this.idleKv[i]!;
        });
        continue;
      }
      const sequence = f.sequence as BatchableSequence;
      for (let i = 0; i < f.count; i++) ids.data[offset + i] = BigInt(f.tokens[f.start + i]!);
      for (let i = f.count; i < f.padded; i++) ids.data[offset + i] = ids.data[offset + f.count - 1]!;
      for (let i = f.count - f.rows; i < f.count; i++) logitsIndex.data[row++] = BigInt(offset + i);
      this.slotTokens[s] = BigInt(f.padded);
      this.seqlensK[s]![0] = sequence.length + (this.forwards.native?.ownAttention ? f.count : f.padded) - 1;
      this.totalLength[s]![0] = sequence.length + f.padded;
      const kv = sequence.kvTensors();
      names.forEach(([past, present], i) => {
        this.feeds[past] = kv[i]!;
        if (!this.deviceKv) this.fetches[present] = kv[i]!;
      });
      offset += f.padded;
    }
    this.feeds['input_ids'] = ids.tensor;
    this.feeds['logits_index'] = logitsIndex.tensor;
    if (this.deviceKv) return this.runOnDevice(group, rows);
    const logits = cachedTensor(
      this.logitsByRows,
      rows,
      (n) => new Float32Array(n * this.vocab),
      (d) => new ort.Tensor('float32', d, [1, rows, this.vocab]),
    );
    this.fetches['logits'] = logits.tensor;
    if (this.forwards.native !== undefined) this.forwards.native.run(this.feeds, this.fetches);
    else await this.forwards.session.run(this.feeds, this.fetches);
    // Each sequence gets its rows in its own buffer: the batch's is reused by the next batch,
    // which may run before a caller has read them (the native runner runs synchronously).
    const out: Float32Array[] = [];
    let at = 0;
    for (const f of group) {
      const sequence = f.sequence as BatchableSequence;
      sequence.advance(f.count);
      const own = sequence.logitsOf(f.rows).data;
      own.set(logits.data.subarray(at * this.vocab, (at + f.rows) * this.vocab));
      out.push(own);
      at += f.rows;
    }
    return out;
  }

  async dispose(): Promise<void> {
    for (const idle of this.idleKvByPlace) for (const t of idle) if (t.location === 'gpu-buffer') t.dispose();
    await releaseForwards(this.forwards);
  }

  /** GPU: ORT allocates every present on the device; each becomes its place's next past (idle places' are freed). */
  private async runOnDevice(group: readonly StepForward[], rows: number): Promise<Float32Array[]> {
    const session = this.forwards.session;
    if (session === undefined) throw new Error('device KV needs an onnxruntime-node session');
    const results = await session.run(this.feeds);
    for (let s = 0; s < this.width; s++) {
      const f = group[s];
      this.kvNames[s]!.forEach(([, present], i) => {
        const next = results[present]!;
        if (f !== undefined) (f.sequence as BatchableSequence).adoptDeviceKv(i, next);
        else {
          const idle = this.idleKvByPlace[s]!;
          if (idle[i]!.location === 'gpu-buffer') idle[i]!.dispose();
          idle[i] = next;
        }
      });
    }
    const logits = results['logits']!.data as Float32Array;
    if (logits.length !== rows * this.vocab)
      throw new Error(`batched forward returned ${logits.length} logits, expected ${rows} rows`);
    const out: Float32Array[] = [];
    let at = 0;
    for (const f of group) {
      (f.sequence as BatchableSequence).advance(f.count);
      out.push(logits.subarray(at * this.vocab, (at + f.rows) * this.vocab));
      at += f.rows;
    }
    return out;
  }
}
