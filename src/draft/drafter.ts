/**
 * A drafter proposes tokens the model is likely to produce next; the verifier decides. Pure and
 * synchronous: proposing never changes committed state, and only verified tokens are committed.
 */
export interface Drafter {
  /** Up to `maxTokens` proposed continuations of the committed sequence (may be empty). */
  propose(maxTokens: number): readonly number[];
  /** Appends verified tokens (accepted drafts and the model's own token) to the committed sequence. */
  commit(tokens: readonly number[]): void;
}

/** Plain decoding: never drafts. */
export const NO_DRAFTER: Drafter = {
  propose: () => [],
  commit: () => {},
};
