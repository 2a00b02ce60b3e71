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

/** 2^(−i/16) for i in [0, 16 · 1100): exp's range reduction in steps of ln2/16, one load each. */
const STEPS = 16;
const POW2_STEPS = Float64Array.from({ length: STEPS * 1100 }, (_, i) => 2 ** (-i / STEPS));
const LOG2E_STEPS = Math.LOG2E * STEPS;
const LN2_HI = 0.6931471803691238 / STEPS; // ln 2 / 16 split so that n · LN2_HI is exact
const LN2_LO = 1.9082149292705877e-10 / STEPS;
const ROUND = 6755399441055744; // 1.5 · 2^52: adding and subtracting it rounds a double to an integer
/** Below this, e^x adds nothing a row sum (≥ 1) can hold. */
const EXP_FLOOR = -700;

/**
 * e^x for x ≤ 0, to ~1e-13 relative: x = −(n/16)·ln2 + r with |r| ≤ ln2/32, e^x = 2^(−n/16) · e^r
 * (a table load and a degree-5 polynomial). ~2.6× faster than Math.exp here: a row's Σexp is most
 * of what log-probabilities cost (49k or 262k terms a token). 0 below −700.
 */
export function expNonPositive(x: number): number {
  if (x < EXP_FLOOR) return 0;
  const n = x * LOG2E_STEPS + ROUND - ROUND;
  const r = x - n * LN2_HI - n * LN2_LO;
  return (1 + r * (1 + r * (0.5 + r * (1 / 6 + r * (1 / 24 + r / 120))))) * POW2_STEPS[-n | 0]!;
}

/** Σ e^(v − max) over the row: expNonPositive inlined, in a function of its own (this loop is the cost). */
function sumExp(logits: Float32Array, offset: number, vocab: number, max: number): number {
  let sum = 0;
  for (let i = offset; i < offset + vocab; i++) {
    const x = logits[i]! - max;
    if (x < EXP_FLOOR) continue;
    const n = x * LOG2E_STEPS + ROUND - ROUND;
    const r = x - n * LN2_HI - n * LN2_LO;
    sum += (1 + r * (1 + r * (0.5 + r * (1 / 6 + r * (1 / 24 + r / 120))))) * POW2_STEPS[-n | 0]!;
  }
  return sum;
}

/**
 * The logprob entry for `tokenId` from row [offset, offset + vocab) of `logits`: one pass for the
 * max, the rank and the top N, one for Σexp. No allocation beyond the result.
 */
export function tokenLogprob(logits: Float32Array, offset: number, vocab: number, tokenId: number, top: number): TokenLogprob {
  const chosen = logits[offset + tokenId]!;
  let max = -Infinity;
  let better = 0;
  // Top-N by insertion into a short sorted list (N ≤ 20): value descending, id ascending.
  const ids: number[] = [];
  const values: number[] = [];
  for (let i = 0; i < vocab; i++) {
    const v = logits[offset + i]!;
    if (v > max) max = v;
    if (v > chosen) better++;
    if (top === 0 || (ids.length === top && v <= values[top - 1]!)) continue;
    let at = ids.length;
    while (at > 0 && values[at - 1]! < v) at--;
    ids.splice(at, 0, i);
    values.splice(at, 0, v);
    if (ids.length > top) {
      ids.pop();
      values.pop();
    }
  }
  const logZ = max + Math.log(sumExp(logits, offset, vocab, max));
  return {
    tokenId,
    logprob: chosen - logZ,
    rank: better + 1,
    top: ids.map((id, k) => ({ tokenId: id, logprob: values[k]! - logZ })),
  };
}
