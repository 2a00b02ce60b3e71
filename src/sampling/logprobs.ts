/**
 * Log-probabilities of a logits row: the chosen token's, its rank, and the N most likely tokens.
 * Of the raw model distribution — softmax of the logits before temperature, top-k/top-p and
 * penalties (what vLLM and TGI report by default) — so the same row gives the same numbers whether
 * it came from a plain step or a verification: speculation leaves them bitwise unchanged.
 */

/** At most this many alternatives per position (OpenAI's and vLLM's usual limit). */
export const TOP_LOGPROBS_MAX = 20;

export interface TopLogprob {
  readonly tokenId: number;
  readonly logprob: number;
}

export interface TokenLogprob {
  readonly tokenId: number;
  readonly logprob: number;
  /** 1 = the most likely token; ties share the better rank. */
  readonly rank: number;
  /** The `top` most likely tokens, most likely first (ties: lower id first). Empty when top = 0. */
  readonly top: readonly TopLogprob[];
}

/** 2^(−i/64) for i in [0, 64 · 1100): exp's range reduction in steps of ln2/64, one load each. */
const STEPS = 64;
const POW2_STEPS = Float64Array.from({ length: STEPS * 1100 }, (_, i) => 2 ** (-i / STEPS));
const LOG2E_STEPS = Math.LOG2E * STEPS;
const LN2_HI = 0.6931471803691238 / STEPS; // ln 2 / 64 split so that n · LN2_HI is exact
const LN2_LO = 1.9082149292705877e-10 / STEPS;
const ROUND = 6755399441055744; // 1.5 · 2^52: adding and subtracting it rounds a double to an integer
/** Below this, e^x adds nothing a row sum (≥ 1) can hold. */
const EXP_FLOOR = -700;

/**
 * e^x for x ≤ 0, to ~4e-11 relative: x = −(n/64)·ln2 + r with |r| ≤ ln2/128, e^x = 2^(−n/64) · e^r
 * (a table load and a degree-3 polynomial: r⁴/24 < 4e-11). Several times faster than Math.exp
 * here: a row's Σexp is most of what log-probabilities cost (49k or 262k terms a token). 0 below
 * −700. Far finer than the float32 a logprob travels as.
 */
export function expNonPositive(x: number): number {
  if (!(x >= EXP_FLOOR)) return 0;
  const n = x * LOG2E_STEPS + ROUND - ROUND;
  const r = x - n * LN2_HI - n * LN2_LO;
  return (1 + r * (1 + r * (0.5 + r * (1 / 6)))) * POW2_STEPS[-n | 0]!;
}

/** Σ e^(v − max) over the row: expNonPositive inlined, in a function of its own (this loop is the cost). */
function sumExp(logits: Float32Array, start: number, end: number, max: number): number {
  let sum = 0;
  for (let i = start; i < end; i++) {
    const x = logits[i]! - max;
    if (!(x >= EXP_FLOOR)) continue; // also −∞ and NaN rows' entries
    const n = x * LOG2E_STEPS + ROUND - ROUND;
    const r = x - n * LN2_HI - n * LN2_LO;
    sum += (1 + r * (1 + r * (0.5 + r * (1 / 6)))) * POW2_STEPS[-n | 0]!;
  }
  return sum;
}

/** The row's largest value and how many values exceed `chosen` (tight loop: no other work). */
function maxAndRank(logits: Float32Array, start: number, end: number, chosen: number): { max: number; better: number } {
  let max = -Infinity;
  let better = 0;
  // Branch-free: a sampled token sits mid-row, where `v > chosen` is a coin toss for the predictor.
  for (let i = start; i < end; i++) {
    const v = logits[i]!;
    max = Math.max(v, max);
    better += Number(v > chosen);
  }
  return { max, better };
}

/** Scratch for the top N (≤ TOP_LOGPROBS_MAX), reused: callers copy out before returning. */
const TOP_IDS = new Int32Array(TOP_LOGPROBS_MAX);
const TOP_VALUES = new Float64Array(TOP_LOGPROBS_MAX);

/**
 * One pass: how many values exceed `chosen`, and the `top` largest values (into TOP_IDS /
 * TOP_VALUES, value descending, id ascending) by insertion behind a floor most values fail at once.
 * The row's max is TOP_VALUES[0]. Returns the count kept (< top only for rows shorter than top).
 */
function rankAndTop(
  logits: Float32Array,
  start: number,
  end: number,
  chosen: number,
  top: number,
): { better: number; kept: number } {
  let better = 0;
  let kept = 0;
  let floor = -Infinity;
  for (let i = start; i < end; i++) {
    const v = logits[i]!;
    better += Number(v > chosen);
    if (v <= floor) continue;
    let at = kept < top ? kept : top - 1;
    while (at > 0 && TOP_VALUES[at - 1]! < v) {
      TOP_VALUES[at] = TOP_VALUES[at - 1]!;
      TOP_IDS[at] = TOP_IDS[at - 1]!;
      at--;
    }
    TOP_VALUES[at] = v;
    TOP_IDS[at] = i - start;
    if (kept < top) kept++;
    if (kept === top) floor = TOP_VALUES[top - 1]!;
  }
  return { better, kept };
}

/**
 * The logprob entry for `tokenId` from row [offset, offset + vocab) of `logits`: a pass for the
 * rank and the top N (or the max), one for Σexp. No allocation beyond the result.
 */
export function tokenLogprob(
  logits: Float32Array,
  offset: number,
  vocab: number,
  tokenId: number,
  top: number,
): TokenLogprob {
  const end = offset + vocab;
  const chosen = logits[offset + tokenId]!;
  let max: number;
  let better: number;
  let kept = 0;
  if (top > 0) {
    ({ better, kept } = rankAndTop(logits, offset, end, chosen, top));
    max = TOP_VALUES[0]!;
  } else {
    ({ max, better } = maxAndRank(logits, offset, end, chosen));
  }
  const logZ = max + Math.log(sumExp(logits, offset, end, max));
  const alternatives: TopLogprob[] = [];
  for (let k = 0; k < kept; k++) alternatives.push({ tokenId: TOP_IDS[k]!, logprob: TOP_VALUES[k]! - logZ });
  return { tokenId, logprob: chosen - logZ, rank: better + 1, top: alternatives };
}
