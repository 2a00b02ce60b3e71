/**
 * Verification of a draft against the model's own choices, one forward pass for all of them.
 * Row i of the logits predicts the token after [last, d1..di]; the model's token at row i is
 * `pickAt(i)`. Draft token d(i+1) is accepted iff it equals that choice, so the emitted tokens are
 * exactly what plain decoding would produce, one row at a time. With sampling, `pickAt` samples
 * from the processed distribution at that row; accepting iff the sample equals the draft keeps the
 * output distribution (and, with one RNG draw per emitted token, the exact seeded output) of plain sampling.
 *
 * Writes the accepted draft tokens followed by the model's token at the first mismatch (or the
 * bonus token after a fully accepted draft) into `out`; returns how many draft tokens were accepted.
 * `pickAt` is called for rows 0..accepted in order, never past the first mismatch.
 */
export function verifyDraft(draft: readonly number[], pickAt: (row: number) => number, out: number[]): number {
  out.length = 0;
  for (let i = 0; i <= draft.length; i++) {
    const chosen = pickAt(i);
    out.push(chosen);
    if (i === draft.length || chosen !== draft[i]) return i;
  }
  return draft.length; // unreachable: the loop returns at i === draft.length
}
