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
 */

export interface DraftLengthControllerOptions {
  /** Largest draft the controller may ask for. */
  readonly draftTokensMax: number;
  /** cost[T] = time of a forward over T tokens relative to T = 1, for T = 1..draftTokensMax+1. */
  readonly forwardCost: readonly number[];
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

  constructor(options: DraftLengthControllerOptions) {
    if (options.forwardCost.length < options.draftTokensMax + 2) {
      throw new RangeError(`forwardCost needs entries for T = 1..${options.draftTokensMax + 1}`);
    }
    this.options = options;
    this.p = new Float64Array(options.draftTokensMax).fill(options.prior);
  }

  /** Draft length to request this round (0 = plain step). */
  current(): number {
    const { forwardCost, draftTokensMax, probeEveryRounds } = this.options;
    const base = 1 / forwardCost[1]!;
    let bestK = 0;
    let bestRate = base;
    let expected = 1;
    let chain = 1;
    for (let k = 1; k <= draftTokensMax; k++) {
      chain *= this.p[k - 1]!;
      expected += chain;
      const rate = expected / forwardCost[k + 1]!;
      if (rate > bestRate * 1.0001) {
        bestRate = rate;
        bestK = k;
      }
    }
    if (bestK === 0 && draftTokensMax > 0 && this.roundsWithoutDraft >= probeEveryRounds) return 1;
    return bestK;
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

  /** Running acceptance estimate per position (for statistics). */
  estimates(): readonly number[] {
    return Array.from(this.p);
  }

  reset(): void {
    this.p.fill(this.options.prior);
    this.roundsWithoutDraft = 0;
  }
}

/** A controller that always asks for the same length (the paper's fixed K). */
export function fixedDraftLength(k: number): Pick<DraftLengthController, 'current' | 'record'> {
  return { current: () => k, record: () => {} };
}
