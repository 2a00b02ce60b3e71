import test from 'ava';
import { readGguf } from '../src/convert/gguf-reader.js';
import { loadDecoderModel } from '../src/runtime/load-model.js';
import type { DecoderModel } from '../src/runtime/types.js';
import { convertedVariant, defaultGguf, defaultModelDir } from './support/default-model.js';
import { ReferenceLlama } from './support/reference-llama.js';

const VOCAB = 49152;
// "<|im_start|>user\nWhat is the capital" in SmolLM2's vocabulary, and a longer mixed tail.
const TOKENS = [1, 4093, 198, 1780, 314, 260];
const LONG = [
  1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198, 504, 3575, 282, 4649, 314, 7042, 28,
];

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

function argmax(a: Float32Array): number {
  let best = 0;
  for (let i = 1; i < a.length; i++) if (a[i]! > a[best]!) best = i;
  return best;
}

async function open(dir: string): Promise<DecoderModel> {
  return loadDecoderModel(dir, { executionProvider: 'cpu', intraOpThreads: 0, kvCapacity: 256 });
}

const references = new Map<readonly number[], Float32Array[]>();
async function referenceLogits(tokens: readonly number[]): Promise<Float32Array[]> {
  let rows = references.get(tokens);
  if (rows === undefined) {
    const ref = new ReferenceLlama(readGguf(await defaultGguf()));
    rows = tokens.map((t) => ref.step(t));
    references.set(tokens, rows);
  }
  return rows;
}

function topK(a: Float32Array, k: number): number[] {
  return [...a.keys()].sort((x, y) => a[y]! - a[x]!).slice(0, k);
}

test('the converted graph matches an independent JS forward pass within 2e-3 when weights are computed in fp32', async (t) => {
  // accuracy_level 0 makes MatMulNBits compute in float32, so any difference is the graph's fault.
  const model = await open(await convertedVariant({ accuracyLevel: 0 }));
  const seq = model.createSequence();
  const logits = await seq.forward(TOKENS, TOKENS.length);
  const ref = await referenceLogits(TOKENS);
  for (let p = 0; p < TOKENS.length; p++) {
    const row = logits.subarray(p * VOCAB, (p + 1) * VOCAB);
    const diff = maxAbsDiff(row, ref[p]!);
    t.true(diff < 2e-3, `position ${p}: max |onnx − reference| = ${diff}`);
    t.is(argmax(row), argmax(ref[p]!));
  }
  await model.dispose();
});

/**
 * Int8 activations (accuracy_level 4) move every logit a little. Measured 2026-11-30 on the LONG
 * prompt's 23 positions (2 cores, x86-64): max |diff| 0.40–1.07 logits (≤ 4.7% of the row's
 * largest |logit|), RMS 0.10–0.39, top-10 overlap 8–10 (mean 9.6), argmax equal everywhere.
 * The bounds are about twice that, so a wrong rope, norm or scale (which moves logits by several
 * units and reorders the top) fails while kernel rounding on another CPU does not.
 */
const INT8_MAX_ABS_DIFF = 2.0;
const INT8_RMS_DIFF = 0.8;
const TOP10_OVERLAP_MIN = 7;
const TOP10_OVERLAP_MEAN_MIN = 9;

test('the default model (int8 activations) stays within twice its measured distance of the reference and agrees on the top tokens', async (t) => {
  const model = await open(await defaultModelDir());
  const seq = model.createSequence();
  const logits = await seq.forward(LONG, LONG.length);
  const ref = await referenceLogits(LONG);
  let overlapSum = 0;
  for (let p = 0; p < LONG.length; p++) {
    const row = logits.subarray(p * VOCAB, (p + 1) * VOCAB);
    const diff = maxAbsDiff(row, ref[p]!);
    let squares = 0;
    for (let i = 0; i < VOCAB; i++) squares += (row[i]! - ref[p]![i]!) ** 2;
    const rms = Math.sqrt(squares / VOCAB);
    const expectedTop = new Set(topK(ref[p]!, 10));
    const overlap = topK(row, 10).filter((id) => expectedTop.has(id)).length;
    overlapSum += overlap;
    t.true(diff < INT8_MAX_ABS_DIFF, `position ${p}: max |onnx − reference| = ${diff.toFixed(3)}`);
    t.true(rms < INT8_RMS_DIFF, `position ${p}: RMS difference ${rms.toFixed(3)}`);
    t.true(overlap >= TOP10_OVERLAP_MIN, `position ${p}: top-10 overlap ${overlap}`);
    t.is(argmax(row), argmax(ref[p]!), `position ${p}`);
  }
  t.true(
    overlapSum / LONG.length >= TOP10_OVERLAP_MEAN_MIN,
    `mean top-10 overlap ${(overlapSum / LONG.length).toFixed(2)}`,
  );
  await model.dispose();
});

test('logits of a position are bitwise identical whatever the forward size and row', async (t) => {
  const model = await open(await defaultModelDir());
  const prefix = 9;
  const single = model.createSequence();
  await single.forward(LONG.slice(0, prefix), 1);
  const oneByOne: Float32Array[] = [];
  for (let i = prefix; i < LONG.length; i++) oneByOne.push((await single.forward([LONG[i]!], 1)).slice());
  for (const T of [2, 3, 5, 8]) {
    const seq = model.createSequence();
    await seq.forward(LONG.slice(0, prefix), 1);
    for (let p = prefix; p + T <= LONG.length; p += T) {
      const logits = await seq.forward(LONG.slice(p, p + T), T);
      for (let r = 0; r < T; r++) {
        t.is(
          maxAbsDiff(logits.subarray(r * VOCAB, (r + 1) * VOCAB), oneByOne[p - prefix + r]!),
          0,
          `T=${T} position ${p + r}`,
        );
      }
    }
  }
  await model.dispose();
});

test('rewinding and resuming gives the same logits as a clean run', async (t) => {
  const model = await open(await defaultModelDir());
  const clean = model.createSequence();
  await clean.forward(LONG.slice(0, 12), 1);
  const expected = (await clean.forward(LONG.slice(12, 16), 4)).slice();

  const seq = model.createSequence();
  await seq.forward(LONG.slice(0, 12), 1);
  await seq.forward([5, 6, 7, 8, 9], 5); // a rejected draft
  t.is(seq.length, 17);
  seq.rewind(12);
  t.is(seq.length, 12);
  const resumed = await seq.forward(LONG.slice(12, 16), 4);
  t.is(maxAbsDiff(resumed, expected), 0);
  t.throws(() => seq.rewind(17), { instanceOf: RangeError });
  await model.dispose();
});

test('a forward past the KV capacity is refused with a clear error and leaves the sequence usable', async (t) => {
  const model = await open(await defaultModelDir());
  const seq = model.createSequence({ capacity: 16 });
  await seq.forward(LONG.slice(0, 10), 1);
  await t.throwsAsync(seq.forward(LONG.slice(0, 7), 1), { message: /exceeds the KV capacity of 16/ });
  t.is(seq.length, 10);
  await t.notThrowsAsync(seq.forward(LONG.slice(0, 6), 1));
  await model.dispose();
});
