/**
 * Greedy regression references: the token ids plain greedy decoding gave on a fixed prompt set,
 * committed, with the model's top-2 logit gap at every output position. Exactness tests compare
 * speculative with plain decoding in the same build, so a converter or runtime change that damages
 * both alike passes them; a comparison with these files does not.
 *
 * A difference is forgiven only where the reference was at a near-tie (gap < NEAR_TIE_GAP): there
 * kernel rounding on another CPU may pick the other token. Anywhere else it fails.
 * Regenerate with `node dist/test/support/record-greedy-reference.js --provider cpu|cpu-native-attention|webgpu`, and
 * only with a converter or runtime change whose note on the issue explains why outputs move.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Engine } from '../../src/engine/engine.js';
import { projectRoot } from '../../src/paths.js';

/** Logits: where the reference's top two were closer than this, another CPU may pick the other one. */
export const NEAR_TIE_GAP = 0.05;

export interface ReferencePrompt {
  readonly id: string;
  readonly prompt: string;
  readonly maxNewTokens: number;
}

export interface ReferenceCase {
  readonly id: string;
  /** sha256 of the prompt text: an edited prompt must not be compared with an old output. */
  readonly promptSha256: string;
  readonly maxNewTokens: number;
  readonly tokens: readonly number[];
  /** Top-2 logit gap at each output position, and at the one after the last token. */
  readonly gaps: readonly number[];
}

export interface GreedyReference {
  readonly provenance: Record<string, unknown>;
  readonly cases: readonly ReferenceCase[];
}

/**
 * cpu: ONNX Runtime's attention kernel (onnxruntime-node's run, the native runner with
 * nativeAttention 'off', and every batched forward); cpu-native-attention: the native runner's own
 * kernel (native/gqa-attention.c), the default where the addon is built. The int8-activation graph
 * turns their last-bit differences into different greedy outputs on about half the prompts.
 */
export const REFERENCE_FILES = {
  cpu: 'test/fixtures/greedy-reference-cpu.json',
  'cpu-native-attention': 'test/fixtures/greedy-reference-cpu-native-attention.json',
  webgpu: 'test/fixtures/greedy-reference-webgpu-lavapipe.json',
} as const;

export function readReference(provider: keyof typeof REFERENCE_FILES): GreedyReference {
  return JSON.parse(readFileSync(join(projectRoot(), REFERENCE_FILES[provider]), 'utf8')) as GreedyReference;
}

export function sha256(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}

/** Rows per forward of topTwoGaps: well under any prefill chunk, so every row's logits come back. */
const GAP_CHUNK_TOKENS = 64;

/**
 * The top-2 logit gap at each output position (and the one after): the prompt, then the output in
 * chunks with every row's logits (a position's logits do not depend on the forward size).
 */
export async function topTwoGaps(engine: Engine, prompt: string, tokens: readonly number[]): Promise<number[]> {
  const promptTokens = engine.tokenizePrompt({ kind: 'text', text: prompt, chat: true });
  const vocab = engine.info.vocabSize;
  const sequence = engine.model.createSequence({ capacity: promptTokens.length + tokens.length });
  const gaps: number[] = [];
  const collect = (logits: Float32Array, rows: number) => {
    for (let r = 0; r < rows; r++) {
      let first = -Infinity;
      let second = -Infinity;
      for (let i = r * vocab; i < (r + 1) * vocab; i++) {
        const v = logits[i]!;
        if (v > first) {
          second = first;
          first = v;
        } else if (v > second) second = v;
      }
      gaps.push(+(first - second).toFixed(4));
    }
  };
  try {
    collect(await sequence.forward(promptTokens, 1), 1);
    for (let at = 0; at < tokens.length; at += GAP_CHUNK_TOKENS) {
      const chunk = tokens.slice(at, at + GAP_CHUNK_TOKENS);
      collect(await sequence.forward(chunk, chunk.length), chunk.length);
    }
    return gaps;
  } finally {
    sequence.dispose();
  }
}

export type Comparison =
  | { kind: 'identical' }
  | { kind: 'near-tie' | 'regression'; at: number; gap: number; message: string };

/** Where `actual` leaves the reference, and whether the reference was at a near-tie there. */
export function compareWithReference(expected: ReferenceCase, actual: readonly number[]): Comparison {
  const { tokens } = expected;
  let at = 0;
  while (at < tokens.length && at < actual.length && tokens[at] === actual[at]) at++;
  if (at === tokens.length && at === actual.length) return { kind: 'identical' };
  const gap = expected.gaps[at] ?? Infinity;
  const kind = gap < NEAR_TIE_GAP ? 'near-tie' : 'regression';
  const message = `${expected.id}: first difference from the committed greedy reference at output token ${at} (reference ${tokens[at] ?? 'end'}, now ${actual[at] ?? 'end'}); the reference's top-2 logit gap there was ${gap}`;
  return { kind, at, gap, message };
}
