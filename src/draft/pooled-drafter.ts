/**
 * A request's own n-gram drafter with its scope's shared pool beside it (issue 34). Each round the
 * pool is asked for the continuation of the request's last tokens; its draft is taken when its
 * match is longer than the request's own span copy (a request's own text wins ties), otherwise the
 * request's own draft is. Counts what the pool proposed and what of it was accepted; at the end,
 * the request's tokens join the pool (`finish`).
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
  poolDraftTokens = 0;
  poolAcceptedTokens = 0;

  constructor(own: NgramDrafter, pool: DraftPool, contributes: boolean) {
    this.own = own;
    this.pool = pool;
    this.contributes = contributes;
  }

  propose(maxTokens: number): readonly number[] {
    const own = this.own.propose(maxTokens);
    const match = this.pool.continuation(this.own.committed(), this.own.size, maxTokens, this.fromPool);
    if (match > this.own.lastCopyMatch) {
      this.pending = this.fromPool.length;
      return this.fromPool;
    }
    this.pending = 0;
    return own;
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
