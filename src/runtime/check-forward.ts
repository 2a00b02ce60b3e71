/**
 * DecoderSequence's contract, checked the same way by every runtime sequence: forward()'s
 * arguments, the prefill chunking, rewind()'s bound. The messages are what clients see.
 */
import { ContextOverflowError, InvalidRequestError } from '../errors.js';

/** Largest single forward (prefill chunk) on every runner; larger prompts are fed in chunks of this size. */
export const FORWARD_TOKENS_MAX = 512;

/**
 * Checks a forward of `tokens` tokens asking for `logitsRows` logits rows onto a sequence of
 * `length` of `capacity` positions, fed in chunks of at most `chunkTokens` (logits come from the
 * last chunk). Returns where the last chunk starts: the chunks before it are whole.
 */
export function checkForward(
  tokens: number,
  logitsRows: number,
  length: number,
  capacity: number,
  chunkTokens: number,
  capacityName = 'the KV capacity',
): number {
  if (tokens === 0) throw new InvalidRequestError('forward needs at least one token');
  if (logitsRows < 1 || logitsRows > tokens)
    throw new InvalidRequestError(`logitsRows ${logitsRows} must be in [1, ${tokens}]`);
  if (length + tokens > capacity)
    throw new ContextOverflowError(`sequence of ${length + tokens} tokens exceeds ${capacityName} of ${capacity}`);
  const lastStart = tokens > chunkTokens ? Math.floor((tokens - 1) / chunkTokens) * chunkTokens : 0;
  if (logitsRows > tokens - lastStart)
    throw new InvalidRequestError(`at most ${tokens - lastStart} logits rows for a forward of ${tokens} tokens`);
  return lastStart;
}

/** Checks copyPrefixFrom: `length` positions of a source of `sourceLength` into an empty sequence of `capacity`. */
export function checkCopyPrefix(length: number, sourceLength: number, targetLength: number, capacity: number): void {
  if (targetLength !== 0) throw new Error('copyPrefixFrom needs an empty sequence');
  if (!Number.isInteger(length) || length < 0 || length > sourceLength || length > capacity)
    throw new RangeError(
      `copy of ${length} positions from a sequence of ${sourceLength} into a capacity of ${capacity}`,
    );
}

/** Checks rewind(`to`) on a sequence of `length` positions. */
export function checkRewind(to: number, length: number): void {
  if (!Number.isInteger(to) || to < 0 || to > length) throw new RangeError(`rewind to ${to} outside [0, ${length}]`);
}
