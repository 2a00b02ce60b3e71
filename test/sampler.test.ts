import test from 'ava';
import {
  applyTokenMask,
  argmax,
  GREEDY,
  maskedArgmax,
  Rng,
  Sampler,
  type SamplingParams,
  TokenHistory,
} from '../src/sampling/sampler.js';

function params(overrides: Partial<SamplingParams>): SamplingParams {
  return { ...GREEDY, ...overrides };
}

/** Logits whose softmax at temperature 1 is exactly (up to float32 rounding) the given distribution. */
function logitsFromProbs(probs: readonly number[]): Float32Array {
  return Float32Array.from(probs.map((p) => Math.log(p)));
}

/** Draws `count` tokens from row 0 of `logits` (no presence, so the row is never modified). */
function draw(sampler: Sampler, logits: Float32Array, count: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < count; i++) out.push(sampler.pick(logits, 0, undefined));
  return out;
}

function histogram(tokens: readonly number[], vocab: number): number[] {
  const counts = new Array<number>(vocab).fill(0);
  for (const t of tokens) counts[t] = counts[t]! + 1;
  return counts;
}

/** Deterministic pseudo-random logits rows, independent of the sampler's own RNG. */
function randomLogits(seed: number, n: number, scale = 4): Float32Array {
  let x = seed >>> 0 || 1;
  const row = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    // xorshift32
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    row[i] = (x / 4294967296 - 0.5) * 2 * scale;
  }
  return row;
}

test('argmax returns the index of the largest value and breaks ties toward the lowest index', (t) => {
  t.is(argmax(Float32Array.from([0.1, 3, 2, 3, 3]), 0, 5), 1);
  t.is(argmax(Float32Array.from([5, 5, 5]), 0, 3), 0);
  t.is(argmax(Float32Array.from([-2, -1, -1, -3]), 0, 4), 1);
  t.is(argmax(Float32Array.from([1, 2, 9, 9]), 0, 4), 2);
});

test('argmax is relative to the row offset and ignores values outside the row', (t) => {
  // Two rows of 4: the 100 in row 0 must not leak into row 1.
  const rows = Float32Array.from([0, 100, 0, 0, 7, 1, 7, 2]);
  t.is(argmax(rows, 4, 4), 0);
  t.is(argmax(rows, 0, 4), 1);
  // Row 1 restricted to its first 2 entries.
  t.is(argmax(rows, 4, 2), 0);
});

test('a greedy sampler picks the argmax whatever its seed, top-k or top-p settings', (t) => {
  for (let r = 0; r < 50; r++) {
    const row = randomLogits(1000 + r, 37);
    const expected = argmax(row, 0, 37);
    for (const seed of [0, 1, 42, 0xdeadbeef]) {
      const sampler = new Sampler(params({ temperature: 0, seed, topK: 3, topP: 0.5 }), 37);
      t.true(sampler.greedy);
      t.is(sampler.pick(row, 0, undefined), expected);
    }
  }
});

test('a greedy sampler returns the same token on every call, so it consumes no randomness', (t) => {
  const row = Float32Array.from([0.5, 0.49, 0.48, 0.5, 0.1]);
  const sampler = new Sampler(params({ temperature: 0, seed: 7 }), 5);
  t.deepEqual(draw(sampler, row, 100), new Array<number>(100).fill(0));
});

test('the sampler picks from the requested row of a multi-row logits buffer', (t) => {
  const vocab = 4;
  // Row 0 favours token 3, row 1 favours token 1 overwhelmingly.
  const rows = Float32Array.from([0, 0, 0, 50, 0, 50, 0, 0]);
  const greedy = new Sampler(GREEDY, vocab);
  t.is(greedy.pick(rows, 0, undefined), 3);
  t.is(greedy.pick(rows, 1, undefined), 1);
  const sampled = new Sampler(params({ temperature: 1, seed: 3 }), vocab);
  for (let i = 0; i < 200; i++) t.is(sampled.pick(rows, 1, undefined), 1);
});

test('the same seed gives the same sequence of sampled tokens and a different seed gives a different one', (t) => {
  const vocab = 50;
  const row = randomLogits(99, vocab, 0.5); // nearly flat, so sequences are very unlikely to coincide
  for (const extra of [{}, { topK: 10 }, { topP: 0.9 }, { topK: 20, topP: 0.8 }]) {
    const a = draw(new Sampler(params({ temperature: 1, seed: 1234, ...extra }), vocab), row, 200);
    const b = draw(new Sampler(params({ temperature: 1, seed: 1234, ...extra }), vocab), row, 200);
    const c = draw(new Sampler(params({ temperature: 1, seed: 1235, ...extra }), vocab), row, 200);
    t.deepEqual(a, b, `same seed, params ${JSON.stringify(extra)}`);
    t.notDeepEqual(a, c, `different seed, params ${JSON.stringify(extra)}`);
    // The sequence really is random rather than constant.
    t.true(new Set(a).size > 5, `only ${new Set(a).size} distinct tokens, params ${JSON.stringify(extra)}`);
  }
});

test('top-k of 1 always picks the same token as greedy decoding, ties included', (t) => {
  const vocab = 64;
  for (let r = 0; r < 200; r++) {
    const row = randomLogits(500 + r, vocab);
    if (r % 10 === 0) {
      // Force a tie for the maximum between two indices.
      const top = argmax(row, 0, vocab);
      const other = (top + 17) % vocab;
      row[other] = row[top]!;
    }
    const expected = argmax(row, 0, vocab);
    const sampler = new Sampler(params({ temperature: 1.5, topK: 1, seed: r }), vocab);
    t.is(sampler.pick(row, 0, undefined), expected);
  }
});

test('top-k never returns a token outside the k largest logits, and reaches each of them', (t) => {
  const vocab = 40;
  const k = 5;
  const row = randomLogits(7, vocab, 1); // fairly flat so the tail would be sampled without top-k
  const ranked = Array.from(row.keys()).sort((a, b) => row[b]! - row[a]! || a - b);
  const allowed = new Set(ranked.slice(0, k));
  const sampler = new Sampler(params({ temperature: 2, topK: k, seed: 11 }), vocab);
  const tokens = draw(sampler, row, 3000);
  for (const token of tokens) t.true(allowed.has(token), `token ${token} is outside the top ${k}`);
  t.deepEqual(
    [...new Set(tokens)].sort((a, b) => a - b),
    [...allowed].sort((a, b) => a - b),
  );
});

test('top-k larger than the vocabulary behaves like no top-k at all', (t) => {
  const vocab = 6;
  const row = randomLogits(3, vocab, 1);
  const tokens = draw(new Sampler(params({ temperature: 1, topK: 1000, seed: 5 }), vocab), row, 2000);
  t.is(new Set(tokens).size, vocab);
});

test('a very small top-p always returns the argmax', (t) => {
  const vocab = 30;
  for (let r = 0; r < 20; r++) {
    const row = randomLogits(300 + r, vocab, 1);
    const expected = argmax(row, 0, vocab);
    const sampler = new Sampler(params({ temperature: 1, topP: 0.01, seed: r }), vocab);
    for (const token of draw(sampler, row, 100)) t.is(token, expected);
  }
});

test('top-p samples exactly the nucleus: only its tokens over 2000 draws, and every one of them', (t) => {
  // Indices are shuffled relative to probability order so index order cannot stand in for rank.
  //            idx:  0     1     2     3     4
  const probs = [0.15, 0.3, 0.1, 0.25, 0.2];
  // Ranked: 1 (0.30), 3 (0.25), 4 (0.20), 0 (0.15), 2 (0.10); cumulative 0.30, 0.55, 0.75, 0.90, 1.00.
  const cases: { topP: number; nucleus: number[] }[] = [
    { topP: 0.25, nucleus: [1] },
    { topP: 0.5, nucleus: [1, 3] },
    { topP: 0.56, nucleus: [1, 3, 4] },
    { topP: 0.7, nucleus: [1, 3, 4] },
    { topP: 0.8, nucleus: [0, 1, 3, 4] },
    { topP: 0.95, nucleus: [0, 1, 2, 3, 4] },
  ];
  const row = logitsFromProbs(probs);
  for (const { topP, nucleus } of cases) {
    const sampler = new Sampler(params({ temperature: 1, topP, seed: 2024 }), probs.length);
    const seen = new Set(draw(sampler, row, 2000));
    t.deepEqual(
      [...seen].sort((a, b) => a - b),
      nucleus,
      `top-p ${topP}`,
    );
  }
});

test('top-k and top-p combine: top-p applies to the renormalised top-k set', (t) => {
  const probs = [0.15, 0.3, 0.1, 0.25, 0.2];
  const row = logitsFromProbs(probs);
  // Top-3 is {1, 3, 4} with mass 0.75; renormalised 0.4, 0.333, 0.267. Top-p 0.7 needs 1 and 3
  // (0.733) but not 4; over the full distribution 0.7 would have needed 4 as well.
  const sampler = new Sampler(params({ temperature: 1, topK: 3, topP: 0.7, seed: 8 }), probs.length);
  const seen = new Set(draw(sampler, row, 2000));
  t.deepEqual(
    [...seen].sort((a, b) => a - b),
    [1, 3],
  );
});

// Regression: the nucleus target was once topP times the mass of the threshold candidates, not of
// the whole distribution, so tokens below sum/(64·vocab) shrank it.
test('top-p alone measures the nucleus against the whole distribution, tiny tail tokens included', (t) => {
  // Token 2 (0.005) is below the candidate threshold sum/(64·3) ≈ 0.0052, so it is left out of the
  // candidate mass. Cumulative: 0.6, 0.995, 1.0, so top-p 0.602 needs tokens 0 and 1.
  const probs = [0.6, 0.395, 0.005];
  const row = logitsFromProbs(probs);
  const sampler = new Sampler(params({ temperature: 1, topP: 0.602, seed: 1 }), probs.length);
  const seen = new Set(draw(sampler, row, 2000));
  t.deepEqual(
    [...seen].sort((a, b) => a - b),
    [0, 1],
  );
});

test('the repetition penalty divides positive logits and multiplies negative ones of present tokens only', (t) => {
  const vocab = 6;
  const row = Float32Array.from([2, -1, 3, -2, 0.5, 4]);
  const presence = new TokenHistory(vocab);
  presence.addPrompt(0);
  presence.addPrompt(1);
  presence.addPrompt(4);
  const sampler = new Sampler(params({ repetitionPenalty: 2 }), vocab);
  sampler.pick(row, 0, presence);
  t.deepEqual(Array.from(row), [1, -2, 3, -2, 0.25, 4]);
});

test('the repetition penalty only touches the row being picked', (t) => {
  const vocab = 3;
  const rows = Float32Array.from([2, 2, 2, 4, -4, 4]);
  const presence = new TokenHistory(vocab);
  presence.addPrompt(0);
  presence.addPrompt(1);
  new Sampler(params({ repetitionPenalty: 4 }), vocab).pick(rows, 1, presence);
  t.deepEqual(Array.from(rows), [2, 2, 2, 1, -16, 4]);
});

test('the repetition penalty can change the greedy choice, for positive and for negative logits', (t) => {
  const sampler = new Sampler(params({ repetitionPenalty: 1.5 }), 2);
  const presence = new TokenHistory(2);
  presence.addPrompt(0);
  // 2.0 / 1.5 = 1.33 < 1.9
  t.is(sampler.pick(Float32Array.from([2, 1.9]), 0, presence), 1);
  // -1.0 * 1.5 = -1.5 < -1.2
  t.is(sampler.pick(Float32Array.from([-1, -1.2]), 0, presence), 1);
  // Without presence (or with penalty 1) the original argmax stands.
  t.is(sampler.pick(Float32Array.from([2, 1.9]), 0, undefined), 0);
  t.is(new Sampler(GREEDY, 2).pick(Float32Array.from([2, 1.9]), 0, presence), 0);
});

test('TokenHistory: distinct seen ids of prompt and output, output counts; duplicates and out-of-range ids ignored', (t) => {
  const history = new TokenHistory(10);
  const seen = (): number[] => {
    const out: number[] = [];
    history.forEachSeen((id) => out.push(id));
    return out;
  };
  const counts = (): [number, number][] => {
    const out: [number, number][] = [];
    history.forEachOutput((id, count) => out.push([id, count]));
    return out;
  };
  history.addPrompt(3);
  history.addPrompt(5);
  history.addPrompt(3);
  history.addPrompt(-1);
  history.addPrompt(10);
  t.deepEqual(seen(), [3, 5]);
  t.deepEqual(counts(), [], 'prompt tokens are not output');
  history.addOutput(5);
  history.addOutput(7);
  history.addOutput(5);
  history.addOutput(10);
  t.deepEqual(seen(), [3, 5, 7]);
  t.deepEqual(counts(), [
    [5, 2],
    [7, 1],
  ]);
});

test('presence and frequency penalties subtract per output token (presence once, frequency per occurrence); the repetition penalty also sees the prompt', (t) => {
  const history = new TokenHistory(4);
  history.addPrompt(0);
  history.addOutput(1);
  history.addOutput(1);
  history.addOutput(2);
  const row = Float32Array.from([1, 1, 1, 1]);
  new Sampler(params({ presencePenalty: 0.5, frequencyPenalty: 0.25 }), 4).pick(row, 0, history);
  t.deepEqual(Array.from(row), [1, 1 - 0.5 - 0.5, 1 - 0.5 - 0.25, 1]);
  const row2 = Float32Array.from([2, 2, 2, 2]);
  new Sampler(params({ repetitionPenalty: 2, frequencyPenalty: 1 }), 4).pick(row2, 0, history);
  t.deepEqual(Array.from(row2), [1, 2 / 2 - 2, 2 / 2 - 1, 2], 'repetition penalty first, then frequency');
  t.true(new Sampler(params({ presencePenalty: -1 }), 4).modifiesRow);
  t.false(new Sampler(params({ minP: 0.5 }), 4).modifiesRow);
});

test('logit bias adds to the named tokens and can force or forbid a greedy choice; suppressed tokens are never picked', (t) => {
  const sampler = new Sampler(
    params({
      logitBias: [
        [2, 5],
        [0, -100],
      ],
    }),
    3,
  );
  t.true(sampler.modifiesRow);
  const row = Float32Array.from([3, 1, 0]);
  t.is(sampler.pick(row, 0, new TokenHistory(3)), 2);
  t.deepEqual(Array.from(row), [-97, 1, 5]);
  const plain = new Sampler(GREEDY, 3);
  t.is(plain.pick(Float32Array.from([3, 1, 0]), 0, undefined, [0]), 1, 'suppressed top token');
  const sampled = new Sampler(params({ temperature: 1, seed: 3 }), 3);
  for (let i = 0; i < 200; i++) t.not(sampled.pick(Float32Array.from([5, 0, 0]), 0, undefined, [0]), 0);
});

test('min-p keeps exactly the tokens whose probability is at least min_p × the top one, alone and with top-k / top-p', (t) => {
  // probabilities 0.4, 0.3, 0.2, 0.06, 0.04: min_p 0.5 keeps 0.4, 0.3, 0.2 (≥ 0.2).
  const logits = logitsFromProbs([0.4, 0.3, 0.2, 0.06, 0.04]);
  const counts = (p: Partial<SamplingParams>): number[] => {
    const c = [0, 0, 0, 0, 0];
    for (const tok of draw(new Sampler(params({ temperature: 1, seed: 11, ...p }), 5), logits, 6000)) c[tok]!++;
    return c;
  };
  const alone = counts({ minP: 0.5 });
  t.deepEqual(alone.slice(3), [0, 0]);
  t.true(alone.every((c, i) => i >= 3 || c > 0));
  // Shares renormalized over 0.9: 0.444, 0.333, 0.222.
  t.true(Math.abs(alone[0]! / 6000 - 0.4 / 0.9) < 0.03, `share ${alone[0]! / 6000}`);
  t.deepEqual(counts({ minP: 0.5, topK: 2 }).slice(2), [0, 0, 0], 'top-k 2 is the shorter prefix');
  t.deepEqual(counts({ minP: 0.2, topP: 0.5 }).slice(2), [0, 0, 0], 'top-p 0.5 is the shorter prefix');
  t.deepEqual(counts({ minP: 0.9, topK: 4 }).slice(1), [0, 0, 0, 0], 'min-p 0.9 keeps the top token only');
  t.deepEqual(counts({ minP: 0 }), counts({}), 'min_p 0 is off');
});

test('sampling at temperature 0.7 matches softmax(logits / T) by a chi-square goodness-of-fit test', (t) => {
  const logits = [1.0, 0.5, 0.0, -0.5, 2.0, -1.0];
  const temperature = 0.7;
  const draws = 20000;
  // Expected probabilities computed independently of the sampler, in double precision.
  const weights = logits.map((l) => Math.exp(l / temperature));
  const total = weights.reduce((a, b) => a + b, 0);
  const expected = weights.map((w) => (w / total) * draws);

  const sampler = new Sampler(params({ temperature, seed: 20240601 }), logits.length);
  const counts = histogram(draw(sampler, Float32Array.from(logits), draws), logits.length);
  const chiSquare = counts.reduce((acc, observed, i) => acc + (observed - expected[i]!) ** 2 / expected[i]!, 0);
  // Critical value for 5 degrees of freedom at p = 0.001.
  t.true(chiSquare < 20.52, `chi-square ${chiSquare.toFixed(2)} for counts ${counts.join(', ')}`);

  // Sanity check that the statistic has power: the same counts are far from the T = 1 distribution.
  const weights1 = logits.map((l) => Math.exp(l));
  const total1 = weights1.reduce((a, b) => a + b, 0);
  const chiSquareWrongT = counts.reduce((acc, observed, i) => {
    const e = (weights1[i]! / total1) * draws;
    return acc + (observed - e) ** 2 / e;
  }, 0);
  t.true(chiSquareWrongT > 100, `chi-square against T = 1 is only ${chiSquareWrongT.toFixed(2)}`);
});

test('top-k sampling matches the renormalised top-k distribution by a chi-square goodness-of-fit test', (t) => {
  const logits = [1.0, 0.5, 0.0, -0.5, 2.0, -1.0];
  const temperature = 0.7;
  const draws = 20000;
  const keep = new Set([4, 0, 1, 2]); // the 4 largest logits
  const weights = logits.map((l, i) => (keep.has(i) ? Math.exp(l / temperature) : 0));
  const total = weights.reduce((a, b) => a + b, 0);
  const sampler = new Sampler(params({ temperature, topK: 4, seed: 77 }), logits.length);
  const counts = histogram(draw(sampler, Float32Array.from(logits), draws), logits.length);
  t.is(counts[3], 0);
  t.is(counts[5], 0);
  let chiSquare = 0;
  for (const i of keep) {
    const e = (weights[i]! / total) * draws;
    chiSquare += (counts[i]! - e) ** 2 / e;
  }
  // Critical value for 3 degrees of freedom at p = 0.001.
  t.true(chiSquare < 16.27, `chi-square ${chiSquare.toFixed(2)} for counts ${counts.join(', ')}`);
});

test('Rng outputs lie in [0, 1) and are roughly uniform', (t) => {
  for (const seed of [0, 1, 2, 0xffffffff, 123456789]) {
    const rng = new Rng(seed);
    const buckets = new Array<number>(10).fill(0);
    const n = 50000;
    // Each bucket count is Binomial(n, 1/10); the seeds are fixed, so the check is deterministic, and
    // 4.5σ keeps even 50 buckets (5 seeds × 10) of a true uniform source inside it by a wide margin.
    const sigma = Math.sqrt(n * 0.1 * 0.9);
    let min = Infinity;
    let max = -Infinity;
    for (let i = 0; i < n; i++) {
      const u = rng.next();
      if (!(u >= 0 && u < 1)) {
        t.fail(`seed ${seed} produced ${u}`);
        return;
      }
      min = Math.min(min, u);
      max = Math.max(max, u);
      const b = Math.floor(u * 10);
      buckets[b] = buckets[b]! + 1;
    }
    t.true(min < 0.001 && max > 0.999, `seed ${seed}: range [${min}, ${max}]`);
    for (const count of buckets)
      t.true(
        Math.abs(count - n / 10) < 4.5 * sigma,
        `seed ${seed}: buckets ${buckets.join(', ')} (σ = ${sigma.toFixed(1)})`,
      );
  }
});

test('Rng with the same seed repeats its sequence and different seeds diverge', (t) => {
  const seq = (seed: number): number[] => {
    const rng = new Rng(seed);
    return Array.from({ length: 20 }, () => rng.next());
  };
  t.deepEqual(seq(5), seq(5));
  t.notDeepEqual(seq(5), seq(6));
  // Seeds are taken as 32-bit unsigned.
  t.deepEqual(seq(-1), seq(0xffffffff));
});

test('a token bitmask: maskedArgmax equals argmax of the row with every other token at −∞ (applyTokenMask), and the pick never leaves the mask', (t) => {
  const vocab = 1000;
  let seed = 7;
  const rand = () => (seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32;
  for (let trial = 0; trial < 200; trial++) {
    const logits = Float32Array.from({ length: vocab }, () => Math.round(rand() * 40) / 4 - 5);
    const mask = new Int32Array(Math.ceil(vocab / 32));
    for (let w = 0; w < mask.length; w++) {
      const kind = rand();
      mask[w] = kind < 0.3 ? -1 : kind < 0.6 ? 0 : (rand() * 2 ** 32) | 0;
    }
    const masked = Float32Array.from(logits);
    applyTokenMask(masked, 0, vocab, mask);
    const expected = argmax(masked, 0, vocab);
    const anyAllowed = masked.some((v) => v !== -Infinity);
    if (anyAllowed) t.is(maskedArgmax(logits, 0, vocab, mask), expected);
    for (let id = 0; id < vocab; id++)
      if (((mask[id >> 5]! >>> (id & 31)) & 1) === 0) t.is(masked[id], -Infinity);
      else t.is(masked[id], logits[id]);
    if (anyAllowed) {
      const sampler = new Sampler({ ...GREEDY, temperature: 1, topP: 0.9, seed: trial }, vocab);
      const picked = sampler.pick(Float32Array.from(logits), 0, undefined, undefined, mask);
      t.is((mask[picked >> 5]! >>> (picked & 31)) & 1, 1);
    }
  }
});
