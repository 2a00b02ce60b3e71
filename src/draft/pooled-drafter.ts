/**
 * A request's own n-gram drafter with its scope's shared pool beside it (issue 34). Each round the
 * pool is asked for the continuation of the request's last tokens; its draft is taken when its
 * match is longer than the request's own span copy (a request's own text wins ties), otherwise the
 * request's own draft is. The source is chosen first (`prepare`) so the decoder can size the draft
 * with that source's acceptance. Counts what the pool proposed and what of it was accepted; at the
 * end, the request's tokens join the pool (`finish`).
 */
import type { Drafter } from './drafter.js';
import type { DraftPool } from './draft-pool.js';
import type { NgramDrafter } from './ngram-drafter.js';

export class PooledDrafter implements Drafter {
  private readonly own: NgramDrafter;
  private readonly pool: DraftPool;
  /** Whether this request's tokens join the pool at the end (one sample of several does). */
  private readonly contributes: boolean;
  private readonly fromPool: number[] = [];
  /** Tokens of the current round's proposal that came from the pool (0: the round's draft is the request's own). */
  private pending = 0;
  /** This round's prepared drafts (undefined: none prepared) and which one is taken. */
  private ownDraft: readonly number[] | undefined;
  private fromPoolChosen = false;
  poolDraftTokens = 0;
  poolAcceptedTokens = 0;

  constructor(own: NgramDrafter, pool: DraftPool, contributes: boolean) {
    this.own = own;
    this.pool = pool;
    this.contributes = contributes;
  }

  /**
   * Chooses this round's source before its length is: the pool's continuation of the committed
   * tokens (up to `poolMaxTokens`) when it matches longer than the request's own span copy, else the
   * request's own draft (up to `ownMaxTokens`). Returns whether the pool is the source (its drafts
   * are accepted at their own rate, so the decoder sizes them with their own estimates).
   */
  prepare(ownMaxTokens: number, poolMaxTokens: number = ownMaxTokens): boolean {
    this.ownDraft = this.own.propose(ownMaxTokens);
    const match = this.pool.continuation(this.own.committed(), this.own.size, poolMaxTokens, this.fromPool);
    // SuffixDecoding's rule: a draft no longer than the match behind it (a 4-token match is weak
    // evidence for 16 tokens; a repeated file matches far back).
    if (this.fromPool.length > match) this.fromPool.length = match;
    this.fromPoolChosen = match > this.own.lastCopyMatch;
    return this.fromPoolChosen;
  }

  /** The prepared draft's first `maxTokens` tokens (a prefix: what propose(maxTokens) would have given). */
  propose(maxTokens: number): readonly number[] {
    if (this.ownDraft === undefined) this.prepare(maxTokens, maxTokens);
    const draft = this.fromPoolChosen ? this.fromPool : (this.ownDraft as number[]);
    // Both arrays are scratch, rewritten by the next prepare: trimming them allocates nothing.
    if (draft.length > maxTokens) draft.length = maxTokens;
    this.ownDraft = undefined;
    this.pending = this.fromPoolChosen ? draft.length : 0;
    return draft;
  }

  commit(tokens: readonly number[]): void {
    if (this.pending > 0) {
      // The accepted drafts are the committed tokens before the model's own (the last one).
      let accepted = 0;
      while (accepted < this.pending && accepted < tokens.length - 1 && tokens[accepted] === this.fromPool[accepted])
        accepted++;
      this.poolDraftTokens += this.pending;
      this.poolAcceptedTokens += accepted;
      this.pending = 0;
    }
    this.own.commit(tokens);
  }

  /** The request is over: its prompt and output join the pool. */
  finish(): void {
    if (this.contributes) this.pool.add(this.own.committed().subarray(0, this.own.size));
  }
}
