/**
 * What the other sequences decoding on the same model replica put into each batched forward, so a
 * sequence can choose its draft length for the batch rather than for itself alone (issue 9).
 *
 * Each decoding sequence publishes its plan for the coming forward: the query rows it will add
 * (its last token, its drafts, pad rows) and the tokens it expects to get out of them. A sequence
 * deciding its own draft sees the sum over the others, scaled to the sequences that can share one
 * forward with it (slots − 1). Plans are a step old at worst; that is all a draft length needs.
 * Sums are kept incrementally: joining, planning and reading allocate nothing.
 */

/** The others' share of the next batched forward. */
export interface OthersLoad {
  /** Query rows the other sequences add to the forward. */
  rows: number;
  /** Tokens they expect to commit from it. */
  tokens: number;
}

export const NO_LOAD: Readonly<OthersLoad> = Object.freeze({ rows: 0, tokens: 0 });

export class BatchLoad {
  /** Sequences one forward carries (1 = no batching: every forward is a sequence's own). */
  readonly slots: number;
  private members = 0;
  private rows = 0;
  private tokens = 0;

  constructor(slots: number) {
    if (!Number.isInteger(slots) || slots < 1) throw new RangeError(`slots must be a positive integer, got ${slots}`);
    this.slots = slots;
  }

  get sequences(): number {
    return this.members;
  }

  /** A sequence starts decoding: it plans `rows` rows yielding `tokens` tokens until it says otherwise. */
  join(rows: number, tokens: number): BatchMember {
    this.members++;
    this.rows += rows;
    this.tokens += tokens;
    return new BatchMember(this, rows, tokens);
  }

  /** @internal BatchMember's bookkeeping. */
  update(rowsDelta: number, tokensDelta: number, membersDelta: number): void {
    this.rows += rowsDelta;
    this.tokens += tokensDelta;
    this.members += membersDelta;
  }

  /** The others' load as seen by a member planning `ownRows` rows / `ownTokens` tokens; written into `out`. */
  othersOf(ownRows: number, ownTokens: number, out: OthersLoad): OthersLoad {
    const others = this.members - 1;
    if (this.slots === 1 || others <= 0) {
      out.rows = 0;
      out.tokens = 0;
      return out;
    }
    // More sequences than slots: the forward carries slots − 1 of them, on average like all.
    const share = Math.min(1, (this.slots - 1) / others);
    // (Incremental float sums drift by ulps; never below zero.)
    out.rows = Math.max(0, (this.rows - ownRows) * share);
    out.tokens = Math.max(0, (this.tokens - ownTokens) * share);
    return out;
  }
}

export class BatchMember {
  private readonly load: BatchLoad;
  private rows: number;
  private tokens: number;
  private left = false;

  constructor(load: BatchLoad, rows: number, tokens: number) {
    this.load = load;
    this.rows = rows;
    this.tokens = tokens;
  }

  /** The others' load right now (written into `out`). */
  others(out: OthersLoad): OthersLoad {
    return this.load.othersOf(this.rows, this.tokens, out);
  }

  /** This member's plan for its next forward. */
  plan(rows: number, tokens: number): void {
    if (this.left) return;
    this.load.update(rows - this.rows, tokens - this.tokens, 0);
    this.rows = rows;
    this.tokens = tokens;
  }

  /** Idempotent. */
  leave(): void {
    if (this.left) return;
    this.left = true;
    this.load.update(-this.rows, -this.tokens, -1);
  }
}
