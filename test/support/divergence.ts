/**
 * Where two greedy outputs of the same prompt part, and how close the model was to a tie there:
 * the reference engine's top-2 logit gap at that position. Exactness tests put this in their
 * failure message, so a difference reads as "kernel rounding at a near-tie" or as a real bug.
 */
import type { Engine } from '../../src/engine/engine.js';
import type { GenerateRequest } from '../../src/contract.js';

export async function describeDivergence(
  reference: Engine,
  request: GenerateRequest,
  expected: readonly number[],
  actual: readonly number[],
): Promise<string> {
  let at = 0;
  while (at < expected.length && at < actual.length && expected[at] === actual[at]) at++;
  if (at === expected.length && at === actual.length) return 'outputs are identical';
  const { promptTokens } = reference.prepare(request);
  const context = [...promptTokens, ...expected.slice(0, at)];
  const sequence = reference.model.createSequence({ capacity: context.length + 1 });
  try {
    const logits = await sequence.forward(context, 1);
    let first = -Infinity;
    let second = -Infinity;
    for (const v of logits) {
      if (v > first) {
        second = first;
        first = v;
      } else if (v > second) second = v;
    }
    return `first difference at output token ${at} (expected ${expected[at] ?? 'end'}, got ${actual[at] ?? 'end'}); the reference's top-2 logit gap there is ${(first - second).toFixed(4)}`;
  } finally {
    sequence.dispose();
  }
}
