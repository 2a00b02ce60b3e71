/**
 * The samples of one request (GenerateRequest.n > 1) as one event stream: each sample's deltas as
 * they come (tagged with its index), then one final event that sums their usage and statistics.
 */
import type { GenerationEvent, GenerationFinal, GenerationStats } from '../contract.js';
import { CancelledError } from '../errors.js';

/**
 * Runs the samples' generators side by side (their forwards overlap, and batch where the runtime
 * batches), passes their deltas through as they come and ends with one final event: the first
 * sample's finish reason, the prompt counted once, the completions summed, and each sample's own
 * in `samples`. A sample's failure ends them all.
 */
export async function* mergeSamples(
  samples: readonly AsyncGenerator<GenerationEvent>[],
  promptTokens: number,
  started: number,
  prefillMs: number,
): AsyncGenerator<GenerationEvent> {
  type Step = { readonly index: number; readonly result?: IteratorResult<GenerationEvent>; readonly error?: unknown };
  const pending = new Map<number, Promise<Step>>();
  const pull = (index: number) => {
    pending.set(
      index,
      samples[index]!.next().then(
        (result) => ({ index, result }),
        (error: unknown) => ({ index, error }),
      ),
    );
  };
  const finals: GenerationFinal[] = [];
  const emitted = new Array<number>(samples.length).fill(0);
  samples.forEach((_, i) => pull(i));
  try {
    while (pending.size > 0) {
      const step = await Promise.race(pending.values());
      if (step.error !== undefined) {
        if (step.error instanceof CancelledError) {
          throw new CancelledError(step.error.cause ?? step.error, {
            promptTokens,
            completionTokens: emitted.reduce((a, b) => a + b, 0),
          });
        }
        throw step.error;
      }
      const { done, value } = step.result!;
      if (done) {
        pending.delete(step.index);
        continue;
      }
      if (value.type === 'final') {
        finals[step.index] = value;
      } else {
        emitted[step.index]! += value.tokenIds.length;
        yield value;
      }
      pull(step.index);
    }
  } finally {
    // Stop the others (each ends at its next round boundary and leaves its batch) before the caller disposes their sequences.
    await Promise.allSettled(samples.map((g) => g.return(undefined)));
  }
  const first = finals[0]!;
  const stats = mergeStats(finals.map((f) => f.stats));
  const withTokens = finals.filter((f) => f.completionTokens > 0);
  yield {
    type: 'final',
    finishReason: first.finishReason,
    promptTokens,
    completionTokens: finals.reduce((a, f) => a + f.completionTokens, 0),
    firstTokenMs: withTokens.length > 0 ? Math.min(...withTokens.map((f) => f.firstTokenMs)) : 0,
    prefillMs,
    totalMs: performance.now() - started,
    stats,
    samples: finals.map((f, index) => ({
      index,
      finishReason: f.finishReason,
      completionTokens: f.completionTokens,
      stats: f.stats,
    })),
  };
}

export function mergeStats(all: readonly Readonly<GenerationStats>[]): GenerationStats {
  const sum = (pick: (s: Readonly<GenerationStats>) => number) => all.reduce((a, s) => a + pick(s), 0);
  const sumArrays = (pick: (s: Readonly<GenerationStats>) => readonly number[]) =>
    all[0]!.draftedAtPosition.map((_, j) => all.reduce((a, s) => a + (pick(s)[j] ?? 0), 0));
  return {
    rounds: sum((s) => s.rounds),
    draftRounds: sum((s) => s.draftRounds),
    zeroAcceptRounds: sum((s) => s.zeroAcceptRounds),
    draftTokensProposed: sum((s) => s.draftTokensProposed),
    draftTokensAccepted: sum((s) => s.draftTokensAccepted),
    draftedAtPosition: sumArrays((s) => s.draftedAtPosition),
    acceptedAtPosition: sumArrays((s) => s.acceptedAtPosition),
    forwardMs: sum((s) => s.forwardMs),
    draftMs: sum((s) => s.draftMs),
    poolDraftTokens: sum((s) => s.poolDraftTokens),
    poolAcceptedTokens: sum((s) => s.poolAcceptedTokens),
  };
}
