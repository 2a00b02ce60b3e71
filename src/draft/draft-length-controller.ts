/**
 * Chooses the draft length per round from the running per-position acceptance of this sequence and
 * the measured cost of verifying T tokens, so that drafting pays for itself.
 *
 * With p_j the running probability that draft token j is accepted given tokens 1..j−1 were, a
 * draft of K yields E(K) = 1 + Σ_{j≤K} Π_{i≤j} p_i tokens for cost(K+1); plain decoding yields
 * 1 token for cost(1). The controller picks the K with the highest E(K)/cost(K+1) — K = 0 when no
 * draft beats plain decoding — and re-probes with one token now and then so a sequence whose text
 * turns repetitive later can win drafting back. Positions past a fully accepted draft drift toward
 * the last tested position's estimate, so a length that was never tried can still be reached.
 *
 * Under batching (issue 9) the forward is shared: with the other sequences adding R rows that yield
 * A tokens, a draft of K gives the batch A + E(K) tokens for cost(R + rows(K)), where rows(K) =
 * max(K + 1, rowsMin). Maximizing that (the batch's throughput, not this sequence's) shrinks drafts
 * as load grows where the forward is compute-bound (cost rising with rows, as on a CPU) and keeps
 * them where it is not (a GPU's cost is flat to 32 rows), and lengthens them again as load falls.
 * Alone (R = A = 0) it is the single-sequence rule.
 */

/** The other sequences' share of the next shared forward (the step scheduler's budget for a member: src/schedule/step-scheduler.ts). */
export interface OthersLoad {
  /** Query rows the other sequences add to the forward. */
  rows: number;
  /** Tokens they expect to commit from it. */
  tokens: number;
}

export const NO_LOAD: Readonly<OthersLoad> = Object.freeze({ rows: 0, tokens: 0 });

export interface DraftLengthControllerOptions {
  /** Largest draft the controller may ask for. */
  readonly draftTokensMax: number;
  /**
   * cost[T] = time of a forward over T query rows relative to T = 1, for T = 1..draftTokensMax+1
   * at least; a batched forward over more rows than the table holds extends its last slope.
   */
  readonly forwardCost: readonly number[];
  /** Query rows every forward runs at least (pad rows cost like real ones). @default 1 */
  readonly rowsMin?: number;
  /** Starting acceptance estimate per position. */
  readonly prior: number;
  /** Weight of the newest observation in the running estimates. */
  readonly emaWeight: number;
  /** When drafting is off, try a 1-token draft every this many rounds. */
  readonly probeEveryRounds: number;
}

export const DEFAULT_CONTROLLER_OPTIONS: Omit<DraftLengthControllerOptions, 'draftTokensMax' | 'forwardCost'> = {
  prior: 0.5,
  emaWeight: 0.15,
  probeEveryRounds: 8,
};

export class DraftLengthController {
  private readonly options: DraftLengthControllerOptions;
  /** p[j−1]: conditional acceptance of draft position j. */
  private readonly p: Float64Array;
  private roundsWithoutDraft = 0;
  private readonly rowsMin: number;

  constructor(options: DraftLengthControllerOptions) {
    if (options.forwardCost.length < options.draftTokensMax + 2) {
      throw new RangeError(`forwardCost needs entries for T = 1..${options.draftTokensMax + 1}`);
    }
    this.options = options;
    this.rowsMin = options.rowsMin ?? 1;
    this.p = new Float64Array(options.draftTokensMax).fill(options.prior);
  }

  /** Draft length to request this round (0 = plain step), given the others' share of the forward. */
  current(load: Readonly<OthersLoad> = NO_LOAD): number {
    const { draftTokensMax, probeEveryRounds } = this.options;
    let bestK = 0;
    let bestRate = (load.tokens + 1) / this.cost(load.rows + this.rowsFor(0));
    let expected = 1;
    let chain = 1;
    for (let k = 1; k <= draftTokensMax; k++) {
      chain *= this.p[k - 1]!;
      expected += chain;
      const rate = (load.tokens + expected) / this.cost(load.rows + this.rowsFor(k));
      if (rate > bestRate * 1.0001) {
        bestRate = rate;
        bestK = k;
      }
    }
    if (bestK === 0 && draftTokensMax > 0 && this.roundsWithoutDraft >= probeEveryRounds) return 1;
    return bestK;
  }

  /** Query rows a forward with a k-token draft takes. */
  rowsFor(k: number): number {
    return Math.max(k + 1, this.rowsMin);
  }

  /** Tokens a k-token draft is expected to commit: E(k) = 1 + Σ_{j≤k} Π_{i≤j} p_i. */
  expectedTokens(k: number): number {
    let expected = 1;
    let chain = 1;
    for (let j = 1; j <= Math.min(k, this.p.length); j++) {
      chain *= this.p[j - 1]!;
      expected += chain;
    }
    return expected;
  }

  /** cost(T) for any T ≥ 1 rows (fractional: an average of others' rows): interpolated, extended past the table by its last slope. */
  private cost(rows: number): number {
    const table = this.options.forwardCost;
    const last = table.length - 1;
    const t = Math.max(1, rows);
    if (t >= last) return table[last]! + (t - last) * (table[last]! - table[last - 1]!);
    const lo = Math.floor(t);
    return table[lo]! + (t - lo) * (table[lo + 1]! - table[lo]!);
  }

  /** Records a round: `drafted` tokens proposed, the first `accepted` of them accepted. */
  record(drafted: number, accepted: number): void {
    if (drafted === 0) {
      this.roundsWithoutDraft++;
      return;
    }
    this.roundsWithoutDraft = 0;
    const w = this.options.emaWeight;
    // Position j was tested iff all before it were accepted: j ≤ accepted + 1 (and j ≤ drafted).
    const tested = Math.min(drafted, accepted + 1);
    for (let j = 1; j <= tested; j++) {
      const hit = j <= accepted ? 1 : 0;
      this.p[j - 1] = (1 - w) * this.p[j - 1]! + w * hit;
    }
    // A fully accepted draft says nothing about the positions after it, yet a controller that never
    // drafts them could never learn they pay: let them follow the last tested position, so K can grow.
    if (accepted === drafted) {
      const last = this.p[drafted - 1]!;
      for (let j = drafted + 1; j <= this.p.length; j++) this.p[j - 1] = (1 - w) * this.p[j - 1]! + w * last;
    }
  }

  /** Running acceptance estimate per position (for statistics, and to start another controller from). */
  estimates(): readonly number[] {
    return Array.from(this.p);
  }

  /** Starts from another controller's estimates (positions past them keep theirs). */
  restore(estimates: readonly number[]): void {
    for (let j = 0; j < Math.min(estimates.length, this.p.length); j++) this.p[j] = estimates[j]!;
  }

  reset(): void {
    this.p.fill(this.options.prior);
    this.roundsWithoutDraft = 0;
  }
}

/** A controller that always asks for the same length (the paper's fixed K). */
export function fixedDraftLength(
  k: number,
  rowsMin = 1,
): Pick<DraftLengthController, 'current' | 'record' | 'rowsFor' | 'expectedTokens'> {
  return { current: () => k, record: () => {}, rowsFor: (d) => Math.max(d + 1, rowsMin), expectedTokens: () => 1 };
}
