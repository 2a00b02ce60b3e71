/**
 * The step scheduler: the one place that decides what runs in a model replica's next forward.
 *
 * - Membership: each decoding sequence joins (and leaves) the scheduler and publishes its plan for
 *   the coming forward: the query rows it will add (its last token, its drafts, pad rows) and the
 *   tokens it expects to get out of them.
 * - Budget: a member choosing its draft length sees the sum of the others' plans, scaled to the
 *   sequences that can share one forward with it (widest graph − 1), so it picks the length for the
 *   shared forward's throughput. Plans are a step old at worst; that is all a draft length needs.
 * - Step: the forwards submitted (the members' rounds, and prefill chunks) run together at the next
 *   macrotask after the first submission. Generations interleave on one thread: after a forward
 *   returns each resumes, drafts and submits in the same turn, so every ready member is in; a member
 *   paused by a slow consumer never holds up the others; and the event loop turns between steps
 *   (the CPU runner is synchronous: chained on microtasks, steps would starve cancels, flow-control
 *   credits, deadlines and new requests for a whole generation).
 * - Shape: up to `widest` short forwards run as one forward of the narrowest batch graph that holds
 *   them (an idle place costs nearly what a busy one does); a lone forward, or a long one (prefill),
 *   runs on the single-sequence graph so it does not stall the decodes.
 * - Prefill packing (executors with a prefillPack: the paged graph): prefill chunks of several
 *   prompts run as packed forwards after the step's decodes, first fit in arrival order, at most
 *   PREFILL_FORWARDS_PER_STEP_MAX per step; chunks that do not fit wait, first in line, for the
 *   next step. So a burst of prompts is prefilled many per forward and a few forwards per step,
 *   and the decoding streams get a step between any two such groups.
 *
 * The runtime executes (BatchExecutor); this module holds the policy and imports runtime types only.
 * Without batch graphs every forward is its sequence's own and goes straight to the runtime.
 * Sums are kept incrementally: joining, planning and reading the budget allocate nothing.
 */
import type { OthersLoad } from '../draft/draft-length-controller.js';
import type {
  BatchExecutor,
  DecoderModel,
  DecoderSequence,
  PrefillPack,
  StepForward,
  StepResult,
  StepSubmitter,
} from '../runtime/types.js';

/** Largest forward (padded rows) that joins a batch; longer ones (prefill chunks) run alone so they do not stall the decodes. */
export const BATCH_TOKENS_MAX = 32;

/**
 * Packed prefill forwards one step runs at most. Under a burst of prompts, more than one: the
 * measured H100 step of 64 streams (4–7 ms with its host work) between single prefill forwards
 * put the last of 64 prompts' first token at 60–130 ms; several per step trade a few decode steps'
 * latency during the burst for every prompt's first token.
 */
export const PREFILL_FORWARDS_PER_STEP_MAX = 4;

/** Forwards one step runs: each group on the graph of `width` sequences (1: the single-sequence graph). */
export interface StepGroup<F> {
  readonly width: number;
  readonly forwards: readonly F[];
}

/**
 * Groups one step's forwards onto the graphs that exist (`widths`: the batch graphs, ascending):
 * short forwards in arrival order, `widths.at(-1)` per group, each on the narrowest graph that holds
 * it; a group of one and every long forward run on the single-sequence graph, after the batches.
 */
export function planStep<F extends Pick<StepForward, 'padded'>>(
  forwards: readonly F[],
  widths: readonly number[],
): StepGroup<F>[] {
  const widest = widths.at(-1) ?? 1;
  const batchable = forwards.filter((f) => f.padded <= BATCH_TOKENS_MAX);
  const alone = forwards.filter((f) => f.padded > BATCH_TOKENS_MAX);
  if (batchable.length === 1 || widest < 2) alone.unshift(...batchable.splice(0));
  const groups: StepGroup<F>[] = [];
  for (let i = 0; i < batchable.length; i += widest) {
    const group = batchable.slice(i, i + widest);
    if (group.length === 1) alone.push(group[0]!);
    else groups.push({ width: widths.find((w) => w >= group.length)!, forwards: group });
  }
  for (const f of alone) groups.push({ width: 1, forwards: [f] });
  return groups;
}

/**
 * One step's prefill forward: the fill chunks (in arrival order) that fit `pack` first-fit, and
 * those left for a later step (in order).
 */
export function packPrefill<F extends Pick<StepForward, 'count'>>(
  fills: readonly F[],
  pack: PrefillPack,
): { readonly packed: F[]; readonly deferred: F[] } {
  const packed: F[] = [];
  const deferred: F[] = [];
  let tokens = 0;
  for (const f of fills) {
    if (packed.length < pack.entries && tokens + f.count <= pack.tokens) {
      packed.push(f);
      tokens += f.count;
    } else deferred.push(f);
  }
  return { packed, deferred };
}

const isFill = (q: QueuedForward): boolean => q.forward.fill === true;
const NO_FILLS: readonly QueuedForward[] = [];

/** A fill forward's result: nothing (it only appends to the KV). */
const EMPTY_RESULT = new Float32Array(0);

interface QueuedForward {
  readonly forward: StepForward;
  readonly padded: number;
  resolve(result: StepResult): void;
  reject(error: unknown): void;
}

export class StepScheduler implements StepSubmitter {
  /** Sequences one forward carries at most (1 = no batching: every forward is a sequence's own). */
  readonly widthMax: number;
  private readonly executor: BatchExecutor | undefined;
  private members = 0;
  private rows = 0;
  private tokens = 0;
  private queue: QueuedForward[] = [];
  private stepQueued = false;
  private running = false;

  /** `executor`: the model's batch graphs (attached here: the model's sequences then submit through this scheduler). */
  constructor(widthMax: number, executor?: BatchExecutor) {
    if (!Number.isInteger(widthMax) || widthMax < 1)
      throw new RangeError(`widthMax must be a positive integer, got ${widthMax}`);
    this.widthMax = widthMax;
    this.executor = executor;
    executor?.attach(this);
  }

  /** The scheduler of a model's forwards: batching where it has batch graphs. */
  static forModel(model: Pick<DecoderModel, 'info' | 'batchExecutor'>): StepScheduler {
    return new StepScheduler(model.info.batchSlots, model.batchExecutor);
  }

  /** Live members. */
  get sequences(): number {
    return this.members;
  }

  /** A sequence starts decoding: it plans `rows` rows yielding `tokens` tokens until it says otherwise. */
  join(sequence: DecoderSequence, rows: number, tokens: number): StepMember {
    this.members++;
    this.rows += rows;
    this.tokens += tokens;
    return new StepMember(this, sequence, rows, tokens);
  }

  /** @internal StepMember's bookkeeping. */
  update(rowsDelta: number, tokensDelta: number, membersDelta: number): void {
    this.rows += rowsDelta;
    this.tokens += tokensDelta;
    this.members += membersDelta;
  }

  /** The others' share of the forward as seen by a member planning `ownRows` rows / `ownTokens` tokens; written into `out`. */
  budgetOf(ownRows: number, ownTokens: number, out: OthersLoad): OthersLoad {
    const others = this.members - 1;
    if (this.widthMax === 1 || others <= 0) {
      out.rows = 0;
      out.tokens = 0;
      return out;
    }
    // More sequences than places: the forward carries widthMax − 1 of them, on average like all.
    const share = Math.min(1, (this.widthMax - 1) / others);
    // (Incremental float sums drift by ulps; never below zero.)
    out.rows = Math.max(0, (this.rows - ownRows) * share);
    out.tokens = Math.max(0, (this.tokens - ownTokens) * share);
    return out;
  }

  /** From the model's sequences (BatchExecutor.attach): one forward for the next step. */
  submit(forward: StepForward): Promise<StepResult> {
    return new Promise<StepResult>((resolve, reject) => {
      this.queue.push({ forward, padded: forward.padded, resolve, reject });
      this.scheduleStep();
    });
  }

  private scheduleStep(): void {
    if (this.running || this.stepQueued || this.queue.length === 0) return;
    this.stepQueued = true;
    setImmediate(() => void this.step());
  }

  /** Up to PREFILL_FORWARDS_PER_STEP_MAX packed prefill forwards; the chunks left go first in line for the next step. */
  private async runPrefill(executor: BatchExecutor, fills: readonly QueuedForward[]): Promise<void> {
    if (executor.prefillPack === undefined || executor.runPrefill === undefined) {
      const error = new Error('a prefill chunk reached a step scheduler whose executor packs no prefill');
      for (const q of fills) q.reject(error);
      return;
    }
    let waiting = fills.map((q) => ({ q, count: q.forward.count }));
    for (let forward = 0; forward < PREFILL_FORWARDS_PER_STEP_MAX && waiting.length > 0; forward++) {
      const { packed, deferred } = packPrefill(waiting, executor.prefillPack);
      waiting = deferred;
      if (packed.length === 0) {
        // Larger than any pack: it would wait forever.
        const { tokens } = executor.prefillPack;
        for (const d of deferred)
          d.q.reject(new RangeError(`a prefill chunk of ${d.count} tokens exceeds the pack of ${tokens}`));
        return;
      }
      try {
        await executor.runPrefill(packed.map((p) => p.q.forward));
        for (const p of packed) p.q.resolve(EMPTY_RESULT);
      } catch (error) {
        for (const p of packed) p.q.reject(error);
      }
    }
    this.queue.unshift(...waiting.map((d) => d.q));
  }

  /** Runs what is queued: one step. Forwards never overlap (each sequence's KV is bound by the run). */
  private async step(): Promise<void> {
    this.stepQueued = false;
    if (this.running || this.queue.length === 0) return;
    this.running = true;
    const executor = this.executor!;
    const work = this.queue;
    this.queue = [];
    try {
      // Most steps carry no prompt: no second array then.
      const fills = work.some(isFill) ? work.filter(isFill) : NO_FILLS;
      const others = fills.length === 0 ? work : work.filter((q) => !isFill(q));
      for (const group of planStep(others, executor.widths)) {
        try {
          const logits = await executor.run(
            group.width,
            group.forwards.map((q) => q.forward),
          );
          group.forwards.forEach((q, i) => q.resolve(logits[i]!));
        } catch (error) {
          for (const q of group.forwards) q.reject(error);
        }
      }
      if (fills.length > 0) await this.runPrefill(executor, fills);
    } finally {
      this.running = false;
      this.scheduleStep();
    }
  }
}

/** A decoding sequence's handle on the scheduler: its budget, its plan, its forwards. */
export class StepMember {
  private readonly scheduler: StepScheduler;
  private readonly sequence: DecoderSequence;
  private rows: number;
  private tokens: number;
  private left = false;

  constructor(scheduler: StepScheduler, sequence: DecoderSequence, rows: number, tokens: number) {
    this.scheduler = scheduler;
    this.sequence = sequence;
    this.rows = rows;
    this.tokens = tokens;
  }

  /** The others' share of the next forward right now (written into `out`): the room this member's draft is chosen in. */
  budget(out: OthersLoad): OthersLoad {
    return this.scheduler.budgetOf(this.rows, this.tokens, out);
  }

  /** This member's plan for its next forward. */
  plan(rows: number, tokens: number): void {
    if (this.left) return;
    this.scheduler.update(rows - this.rows, tokens - this.tokens, 0);
    this.rows = rows;
    this.tokens = tokens;
  }

  /** This member's forward (as DecoderSequence.forward): a batching model's sequence submits it to the next step. */
  forward(tokens: ArrayLike<number>, logitsRows: number): Promise<Float32Array> {
    return this.sequence.forward(tokens, logitsRows);
  }

  /** Idempotent. */
  leave(): void {
    if (this.left) return;
    this.left = true;
    this.scheduler.update(-this.rows, -this.tokens, -1);
  }
}
