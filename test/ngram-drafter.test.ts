import { Rng } from '../src/sampling/sampler.js';
import test from 'ava';
import {
  ANPD_PAPER_OPTIONS,
  DEFAULT_NGRAM_OPTIONS,
  NgramDrafter,
  SLOTS_PER_CONTEXT,
  type NgramDrafterOptions,
} from '../src/draft/ngram-drafter.js';

/** The paper's multi-level n-gram alone: N = 5, every entry confident, no span copy. */
const PAPER: NgramDrafterOptions = {
  n: 5,
  minCount: [1, 1, 1, 1, 1, 1, 1],
  minShare: 0,
  copyMinMatch: 0,
  copyMaxMatch: 0,
};
/** Bigrams only (context of one token), every entry confident, no span copy. */
const BIGRAM: NgramDrafterOptions = { n: 2, minCount: [1], minShare: 0, copyMinMatch: 0, copyMaxMatch: 0 };

/** propose() hands back an internal buffer; copy it so later calls cannot change what a test holds. */
function draftOf(drafter: NgramDrafter, maxTokens: number): number[] {
  return [...drafter.propose(maxTokens)];
}

function proposeFor(prompt: readonly number[], options: NgramDrafterOptions, maxTokens: number): number[] {
  return draftOf(new NgramDrafter(prompt, options), maxTokens);
}

/** Deterministic uniform [0, 1) source: the project's own seeded RNG. */
function rng(seed: number): () => number {
  const r = new Rng(seed);
  return () => r.next();
}

/** Text-like pseudo-random tokens: fresh symbols mixed with copies of earlier spans, so every level repeats. */
function structuredSequence(length: number, vocab: number, seed: number): number[] {
  const random = rng(seed);
  const out: number[] = [];
  while (out.length < length) {
    if (out.length > 20 && random() < 0.35) {
      const span = 3 + Math.floor(random() * 10);
      const from = Math.floor(random() * (out.length - span));
      for (let i = 0; i < span && out.length < length; i++) out.push(out[from + i]!);
    } else {
      out.push(Math.floor(random() * vocab));
    }
  }
  return out;
}

/**
 * A history whose tail context d = 4 has a different best continuation at every level:
 * [4] → 101 (4 times), [3 4] → 102 (3 times), [2 3 4] → 103 (twice), [1 2 3 4] → 104 (once).
 * Separators (50+) are fresh tokens so the segments share no longer context.
 */
const STAIRCASE: readonly number[] = [
  1, 2, 3, 4, 104, 50, 2, 3, 4, 103, 51, 2, 3, 4, 103, 52, 53, 3, 4, 102, 54, 55, 3, 4, 102, 56, 57, 3, 4, 102, 58, 59,
  60, 4, 101, 61, 62, 63, 4, 101, 64, 65, 66, 4, 101, 67, 68, 69, 4, 101,
];

test('a 4-token context seen before drafts its continuation from the highest level', (t) => {
  // Every lower level would propose something else (103, 102, 101).
  t.deepEqual(proposeFor([...STAIRCASE, 1, 2, 3, 4], PAPER, 1), [104]);
});

test('when only a shorter context matches, the highest level that matches is used', (t) => {
  t.deepEqual(proposeFor([...STAIRCASE, 90, 2, 3, 4], PAPER, 1), [103], 'level 4 (3-token context)');
  t.deepEqual(proposeFor([...STAIRCASE, 90, 91, 3, 4], PAPER, 1), [102], 'level 3 (2-token context)');
  t.deepEqual(proposeFor([...STAIRCASE, 90, 91, 92, 4], PAPER, 1), [101], 'level 2 (1-token context)');
});

test('when no context matches at any level the draft is empty', (t) => {
  t.deepEqual(proposeFor([...STAIRCASE, 90, 91, 92, 93], PAPER, 5), []);
  t.deepEqual(proposeFor([1, 2, 3, 4, 5], PAPER, 5), []);
  t.deepEqual(proposeFor([], PAPER, 5), []);
  t.deepEqual(proposeFor([], DEFAULT_NGRAM_OPTIONS, 5), []);
  t.deepEqual(proposeFor([7], DEFAULT_NGRAM_OPTIONS, 5), []);
});

test('a draft never exceeds maxTokens and maxTokens of zero or less gives an empty draft', (t) => {
  const prompt = [10, 11, 12, 13, 14, 10, 11];
  for (const options of [PAPER, DEFAULT_NGRAM_OPTIONS]) {
    t.deepEqual(proposeFor(prompt, options, 0), []);
    t.deepEqual(proposeFor(prompt, options, -3), []);
    for (let max = 1; max <= 12; max++) t.is(proposeFor(prompt, options, max).length, max);
  }
});

test('a multi-token draft chains lookups over the tokens drafted so far', (t) => {
  // After "10 11" history only knows "12"; "13 14 10 11 12 …" need the drafted tokens as context.
  const prompt = [10, 11, 12, 13, 14, 10, 11];
  t.deepEqual(proposeFor(prompt, PAPER, 2), [12, 13]);
  t.deepEqual(proposeFor(prompt, PAPER, 8), [12, 13, 14, 10, 11, 12, 13, 14]);
});

test('chaining runs on while each extended context is known and stops at the first that is not', (t) => {
  t.deepEqual(proposeFor([5, 6, 7, 9, 5, 6], { ...PAPER, n: 3 }, 6), [7, 9, 5, 6, 7, 9]);
  t.deepEqual(proposeFor([5, 6, 7, 8, 5, 6], PAPER, 6), [7, 8, 5, 6, 7, 8]);
  t.deepEqual(proposeFor([1, 2, 3, 1], BIGRAM, 6), [2, 3, 1, 2, 3, 1]);
  t.deepEqual(proposeFor([2, 3, 1, 2, 4, 1], BIGRAM, 3), [2, 4, 1], '1 → 2 only; 2 → 4 is the latest of 3 and 4');
  t.deepEqual(proposeFor([1, 2, 1, 3], BIGRAM, 6), [], 'context 3 was never continued');
  // With minCount 2, "1 → 2" (twice) is drafted but "2 → 1" / "2 → 3" (once each) is not: the chain stops.
  t.deepEqual(proposeFor([1, 2, 1, 2, 3, 1], { ...BIGRAM, minCount: [2] }, 6), [2]);
});

test('the most frequent continuation wins even when another one is more recent', (t) => {
  t.deepEqual(proposeFor([7, 2, 7, 2, 7, 1, 7], BIGRAM, 1), [2]);
  t.deepEqual(
    proposeFor([7, 2, 7, 1, 7, 1, 7, 2, 7, 1, 7, 3, 7], BIGRAM, 1),
    [1],
    '1 three times beats 2 twice and the latest 3',
  );
  // Same at a higher level of the full drafter: "5 6" → 8 twice, → 9 once (latest).
  t.deepEqual(proposeFor([5, 6, 8, 0, 5, 6, 8, 1, 5, 6, 9, 2, 5, 6], { ...PAPER, n: 3 }, 1), [8]);
});

test('ties between equally frequent continuations go to the most recent one', (t) => {
  t.deepEqual(proposeFor([7, 2, 7, 1, 7], BIGRAM, 1), [1]);
  t.deepEqual(proposeFor([7, 1, 7, 2, 7], BIGRAM, 1), [2]);
  t.deepEqual(proposeFor([7, 1, 7, 2, 7, 2, 7, 1, 7], BIGRAM, 1), [1]);
  t.deepEqual(proposeFor([7, 2, 7, 1, 7, 1, 7, 2, 7], BIGRAM, 1), [2]);
});

test('a context remembers at most SLOTS_PER_CONTEXT continuations and evicts the weakest (lowest count, then oldest)', (t) => {
  t.is(SLOTS_PER_CONTEXT, 4);
  // 7 → A once, then B, C, D, E twice each, then A again. Without eviction A (2, latest) would win.
  // E evicts A (count 1); the new A evicts the oldest of the count-2 slots (B); the best is then E
  // (count 2, the latest of C, D, E).
  const [A, B, C, D, E] = [1, 2, 3, 4, 5];
  const prompt = [7, A, 7, B, 7, B, 7, C, 7, C, 7, D, 7, D, 7, E, 7, E, 7, A, 7];
  t.deepEqual(proposeFor(prompt, BIGRAM, 1), [E]);
  // Without E there are only four continuations: nothing is evicted and A (2, latest) wins the tie.
  t.deepEqual(proposeFor([7, A, 7, B, 7, B, 7, C, 7, C, 7, D, 7, D, 7, A, 7], BIGRAM, 1), [A]);
});

test('propose never changes state: the same draft twice, the same context counts, the same size', (t) => {
  for (const options of [PAPER, DEFAULT_NGRAM_OPTIONS]) {
    const prompt = structuredSequence(300, 12, 7);
    const drafter = new NgramDrafter(prompt, options);
    const counts = drafter.contextCounts();
    const first = draftOf(drafter, 10);
    t.true(first.length > 0, 'the prompt is repetitive enough to draft from');
    for (let i = 0; i < 5; i++) t.deepEqual(draftOf(drafter, 10), first);
    t.deepEqual(drafter.contextCounts(), counts);
    t.is(drafter.size, prompt.length);
    // Shorter drafts are prefixes of longer ones.
    for (let k = 1; k <= 10; k++) t.deepEqual(draftOf(drafter, k), first.slice(0, k));
    t.deepEqual(drafter.contextCounts(), counts);
    // The same drafter as one built fresh from the same committed tokens.
    t.deepEqual(draftOf(new NgramDrafter(prompt, options), 10), first);
  }
});

test('only commit changes what is proposed and stored', (t) => {
  const drafter = new NgramDrafter([1, 2, 3, 4, 1, 2], PAPER);
  const counts = drafter.contextCounts();
  t.deepEqual(draftOf(drafter, 2), [3, 4]);
  drafter.commit([9]);
  t.is(drafter.size, 7);
  t.notDeepEqual(drafter.contextCounts(), counts);
  t.deepEqual(draftOf(drafter, 2), []);
  drafter.commit([]);
  t.is(drafter.size, 7);
});

test('a proposed but rejected token never becomes a continuation', (t) => {
  const drafter = new NgramDrafter([1, 2, 3, 4, 1, 2], PAPER);
  t.deepEqual(draftOf(drafter, 2), [3, 4]);
  // The verifier rejects 3; the model's own token is 7.
  drafter.commit([7]);
  drafter.commit([1, 2]);
  // "1 2" was followed by 3 once and by 7 once: the tie goes to the latest, 7. Had the rejected 3
  // been stored it would have count 2 and win.
  t.deepEqual(draftOf(drafter, 1), [7]);
  // The index equals one built from the committed tokens alone.
  const fresh = new NgramDrafter([1, 2, 3, 4, 1, 2, 7, 1, 2], PAPER);
  t.deepEqual(drafter.contextCounts(), fresh.contextCounts());
  for (let k = 1; k <= 6; k++) t.deepEqual(draftOf(drafter, k), draftOf(fresh, k));
});

test('an index built by single-token commits proposes exactly what one built from the whole prefix at construction does', (t) => {
  const sequence = structuredSequence(2000, 20, 20240601);
  for (const options of [ANPD_PAPER_OPTIONS, DEFAULT_NGRAM_OPTIONS]) {
    const incremental = new NgramDrafter([], options);
    let compared = 0;
    let nonEmpty = 0;
    let long = 0;
    for (let prefix = 1; prefix <= sequence.length; prefix++) {
      incremental.commit([sequence[prefix - 1]!]);
      // Proposals in between must not disturb the index either.
      if (prefix % 5 === 0) incremental.propose(1 + (prefix % 9));
      if (prefix % 37 !== 0) continue;
      const whole = new NgramDrafter(sequence.slice(0, prefix), options);
      t.is(incremental.size, prefix);
      t.deepEqual(incremental.contextCounts(), whole.contextCounts(), `context counts at prefix ${prefix}`);
      for (const k of [1, 3, 8]) {
        const a = draftOf(incremental, k);
        t.deepEqual(a, draftOf(whole, k), `draft of ${k} at prefix ${prefix}`);
        if (a.length > 0) nonEmpty++;
        if (a.length >= 3) long++;
      }
      compared++;
    }
    t.is(compared, Math.floor(sequence.length / 37));
    // The comparison exercised real drafts, not just empty ones.
    t.true(nonEmpty > compared, `non-empty drafts: ${nonEmpty}`);
    t.true(long > compared / 2, `drafts of 3+ tokens: ${long}`);
  }
});

test("a continuation below its level's minCount is not drafted; at minCount it is", (t) => {
  const gated: NgramDrafterOptions = {
    n: 5,
    minCount: [2, 1, 1, 1, 1, 1, 1],
    minShare: 0,
    copyMinMatch: 0,
    copyMaxMatch: 0,
  };
  // Bigram "1 → 2" seen once: below minCount[0] = 2.
  t.deepEqual(proposeFor([1, 2, 9, 1], gated, 1), []);
  t.deepEqual(proposeFor([1, 2, 9, 1], PAPER, 1), [2], 'the same history drafts with minCount 1');
  // Seen twice: drafted.
  t.deepEqual(proposeFor([1, 2, 3, 1, 2, 9, 1], gated, 1), [2]);
  // The gate is per level: the trigram "5 1 → 2" seen once passes minCount[1] = 1.
  t.deepEqual(proposeFor([5, 1, 2, 9, 5, 1], gated, 1), [2]);
  // A gated higher level falls back to a lower one that passes.
  const high: NgramDrafterOptions = { ...gated, minCount: [1, 2, 1, 1] };
  // "8 1" → 3 once (gated at level 3), "1" → 2 latest of {3, 2} (level 2 passes).
  t.deepEqual(proposeFor([8, 1, 3, 0, 1, 2, 0, 8, 1], high, 1), [2]);
  t.deepEqual(proposeFor([8, 1, 3, 0, 1, 2, 0, 8, 1], PAPER, 1), [3]);
});

test('minShare excludes a continuation whose share of its context is below it and falls back a level', (t) => {
  // Context "8 7" → 1, 2, 3 once each (best share 1/3); context "7" → 4 six times of nine (2/3).
  const prompt = [8, 7, 1, 8, 7, 2, 8, 7, 3, 0, 7, 4, 0, 7, 4, 0, 7, 4, 0, 7, 4, 0, 7, 4, 0, 7, 4, 8, 7];
  const withShare = (minShare: number): NgramDrafterOptions => ({
    n: 3,
    minCount: [1, 1],
    minShare,
    copyMinMatch: 0,
    copyMaxMatch: 0,
  });
  t.deepEqual(proposeFor(prompt, withShare(0), 1), [3], 'no share gate: the latest of the tie at the higher level');
  t.deepEqual(proposeFor(prompt, withShare(1 / 3), 1), [3], 'a share equal to minShare passes');
  t.deepEqual(proposeFor(prompt, withShare(0.5), 1), [4], 'the higher level is excluded, the lower level passes');
  t.deepEqual(proposeFor(prompt, withShare(2 / 3), 1), [4]);
  t.deepEqual(proposeFor(prompt, withShare(0.7), 1), [], 'both levels excluded');
});

/** A 30-token span of fresh symbols with an embedded "1 2 3 4" that elsewhere is followed by 50. */
const SPAN: readonly number[] = [
  20, 21, 22, 23, 24, 25, 1, 2, 3, 4, 60, 61, 62, 63, 64, 65, 66, 67, 68, 69, 70, 71, 72, 73, 74, 75, 76, 77, 78, 79,
];
const COPY_TEXT: readonly number[] = [
  1,
  2,
  3,
  4,
  50,
  40,
  1,
  2,
  3,
  4,
  50,
  41,
  ...SPAN,
  42,
  43,
  44,
  45,
  // The tail repeats the first six tokens of the span, preceded by a token other than the span's.
  46,
  20,
  21,
  22,
  23,
  24,
  25,
];

test('span copy drafts exactly the tokens that followed the earlier occurrence, up to maxTokens', (t) => {
  const drafter = new NgramDrafter(COPY_TEXT, DEFAULT_NGRAM_OPTIONS);
  for (const k of [1, 4, 5, 10, 24]) t.deepEqual(draftOf(drafter, k), SPAN.slice(6, 6 + k), `maxTokens ${k}`);
  // Past the span the copy runs on through whatever followed it in history.
  t.deepEqual(draftOf(drafter, 30), [...SPAN.slice(6), 42, 43, 44, 45, 46, 20]);
  // The n-gram tables alone would follow the more frequent "1 2 3 4 → 50" instead.
  t.deepEqual(proposeFor(COPY_TEXT, ANPD_PAPER_OPTIONS, 5), [1, 2, 3, 4, 50]);
});

test('span copy requires an exact suffix match of copyMinMatch tokens, measured up to copyMaxMatch', (t) => {
  // The tail matches the span's first six tokens exactly (the tokens before them differ).
  t.deepEqual(proposeFor(COPY_TEXT, { ...DEFAULT_NGRAM_OPTIONS, copyMinMatch: 6 }, 5), [1, 2, 3, 4, 60]);
  // One more is not there: the tables draft instead (and prefer the more frequent 50).
  t.deepEqual(proposeFor(COPY_TEXT, { ...DEFAULT_NGRAM_OPTIONS, copyMinMatch: 7 }, 5), [1, 2, 3, 4, 50]);
  // A match measured only up to copyMaxMatch = 5 never reaches copyMinMatch = 6.
  t.deepEqual(
    proposeFor(COPY_TEXT, { ...DEFAULT_NGRAM_OPTIONS, copyMinMatch: 6, copyMaxMatch: 5 }, 5),
    [1, 2, 3, 4, 50],
  );
});

test("span copy ignores the tables' confidence gates", (t) => {
  // Every context is seen once, so minCount 2 everywhere would block the tables.
  const strict: NgramDrafterOptions = { ...DEFAULT_NGRAM_OPTIONS, minCount: [2, 2, 2, 2] };
  const prompt = [30, 31, 32, 33, 34, 35, 36, 9, 30, 31, 32, 33];
  t.deepEqual(proposeFor(prompt, strict, 4), [34, 35, 36, 9]);
  t.deepEqual(proposeFor(prompt, { ...strict, copyMinMatch: 0 }, 4), []);
});

test('a periodic pattern extends itself past the end of history', (t) => {
  t.deepEqual(proposeFor([1, 2, 3, 1, 2, 3, 1, 2], DEFAULT_NGRAM_OPTIONS, 7), [3, 1, 2, 3, 1, 2, 3]);
  t.deepEqual(proposeFor([5, 5, 5, 5, 5], DEFAULT_NGRAM_OPTIONS, 6), [5, 5, 5, 5, 5, 5]);
  // A whole-line repeat: after the line recurs, the copy keeps producing it.
  const line = [40, 41, 42, 43, 44, 45];
  t.deepEqual(
    proposeFor([...line, ...line.slice(0, 4)], DEFAULT_NGRAM_OPTIONS, 10),
    [44, 45, 40, 41, 42, 43, 44, 45, 40, 41],
  );
});

test("a hash collision between two contexts costs at most a miss, never the other context's continuation", (t) => {
  // Contexts differing in one token (ids 2^20 apart) must never lend each other continuations,
  // whether or not their hashes collide.
  const A = 5;
  const B = A + 2 ** 20;
  const prompt = [9, 8, 7, A, 1, 9, 8, 7, B, 2, 9, 8, 7, A];
  for (const [name, options] of [
    ['paper', PAPER],
    ['default', DEFAULT_NGRAM_OPTIONS],
    ['bigram', BIGRAM],
  ] as const) {
    const draft = proposeFor(prompt, options, 4);
    t.false(draft.includes(2), `${name}: ${draft.join(' ')}`);
    t.true(draft.length === 0 || draft[0] === 1, `${name}: ${draft.join(' ')}`);
    // The colliding context itself still drafts its own continuation.
    t.deepEqual(proposeFor([...prompt.slice(0, 10), 9, 8, 7, B], options, 1), [2], name);
  }
});

test('memory stays bounded over 100000 committed tokens from a vocabulary of 50, and proposals still work', (t) => {
  const vocab = 50;
  const total = 100_000;
  const random = rng(99);
  const started = performance.now();
  const drafter = new NgramDrafter([], DEFAULT_NGRAM_OPTIONS);
  const chunk: number[] = [];
  let committed = 0;
  while (committed < total) {
    chunk.length = 0;
    const size = Math.min(total - committed, 1 + Math.floor(random() * 6));
    for (let i = 0; i < size; i++) chunk.push(Math.floor(random() * vocab));
    drafter.commit(chunk);
    committed += size;
    if (committed % 97 < 6) {
      const draft = drafter.propose(8);
      t.true(draft.length <= 8);
    }
  }
  t.is(drafter.size, total);
  const counts = drafter.contextCounts();
  t.is(counts.length, DEFAULT_NGRAM_OPTIONS.n - 1);
  counts.forEach((count, level) => {
    t.true(count <= total, `level ${level}: ${count} contexts`);
    t.true(count <= vocab ** (level + 1), `level ${level}: ${count} contexts`);
  });
  // Uniform random text fills the short levels completely.
  t.is(counts[0], vocab);
  t.is(counts[1], vocab * vocab);
  // A phrase committed now is found again among all that history.
  drafter.commit([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
  drafter.commit([3, 4, 5, 6]);
  t.deepEqual(draftOf(drafter, 6), [7, 8, 9, 10, 11, 12]);
  const elapsed = performance.now() - started;
  t.true(elapsed < 5000, `took ${elapsed.toFixed(0)} ms`);
});

test('n outside [2, 8] throws a RangeError', (t) => {
  for (const n of [0, 1, 9, 100, -2, 2.5, Number.NaN]) {
    t.throws(() => new NgramDrafter([1, 2, 3], { ...PAPER, n }), { instanceOf: RangeError }, `n = ${n}`);
  }
  for (const n of [2, 3, 5, 8]) t.notThrows(() => new NgramDrafter([1, 2, 3], { ...PAPER, n }), `n = ${n}`);
  t.is(new NgramDrafter([1, 2, 3], { ...PAPER, n: 8 }).contextCounts().length, 7);
});

/**
 * A brute-force model of the documented rules: contexts keyed by their tokens (no hashing), at most
 * SLOTS_PER_CONTEXT continuations per context (the weakest — lowest count, then oldest — replaced),
 * span copy from the latest occurrence of the longest context, else the highest confident level.
 */
class ReferenceDrafter {
  private readonly history: number[] = [];
  private readonly tables: Map<
    string,
    { slots: { token: number; count: number; last: number }[]; total: number; latest: number }
  >[];

  constructor(private readonly options: NgramDrafterOptions) {
    this.tables = Array.from({ length: options.n - 1 }, () => new Map());
  }

  push(token: number): void {
    const pos = this.history.length;
    this.history.push(token);
    for (let ctx = 1; ctx <= this.options.n - 1 && ctx <= pos; ctx++) {
      const key = this.history.slice(pos - ctx, pos).join(',');
      let entry = this.tables[ctx - 1]!.get(key);
      if (entry === undefined) this.tables[ctx - 1]!.set(key, (entry = { slots: [], total: 0, latest: 0 }));
      entry.total++;
      entry.latest = pos;
      const slot = entry.slots.find((s) => s.token === token);
      if (slot !== undefined) {
        slot.count++;
        slot.last = pos;
      } else if (entry.slots.length < SLOTS_PER_CONTEXT) {
        entry.slots.push({ token, count: 1, last: pos });
      } else {
        const weakest = entry.slots.reduce((w, s) =>
          s.count < w.count || (s.count === w.count && s.last < w.last) ? s : w,
        );
        entry.total -= weakest.count;
        Object.assign(weakest, { token, count: 1, last: pos });
      }
    }
  }

  contextCounts(): number[] {
    return this.tables.map((t) => t.size);
  }

  propose(maxTokens: number): number[] {
    const o = this.options;
    const h = this.history;
    const draft: number[] = [];
    if (maxTokens <= 0 || h.length === 0) return draft;
    if (o.copyMinMatch > 0) {
      const ctx = Math.min(o.n - 1, h.length);
      const entry = this.tables[ctx - 1]!.get(h.slice(h.length - ctx).join(','));
      if (entry !== undefined) {
        let match = ctx;
        while (
          match < o.copyMaxMatch &&
          entry.latest - match - 1 >= 0 &&
          h[entry.latest - match - 1] === h[h.length - match - 1]
        )
          match++;
        if (match >= o.copyMinMatch) {
          for (let i = entry.latest; draft.length < maxTokens; i++)
            draft.push(i < h.length ? h[i]! : draft[i - h.length]!);
          return draft;
        }
      }
    }
    while (draft.length < maxTokens) {
      const all = [...h, ...draft];
      let next = -1;
      for (let ctx = Math.min(o.n - 1, all.length); ctx >= 1 && next < 0; ctx--) {
        const entry = this.tables[ctx - 1]!.get(all.slice(all.length - ctx).join(','));
        if (entry === undefined) continue;
        const best = entry.slots.reduce((b, s) =>
          s.count > b.count || (s.count === b.count && s.last > b.last) ? s : b,
        );
        if (best.count < (o.minCount[ctx - 1] ?? 1) || best.count < o.minShare * entry.total) continue;
        next = best.token;
      }
      if (next < 0) break;
      draft.push(next);
    }
    return draft;
  }
}

test('proposals and context counts agree with a brute-force reference that keys contexts by their tokens', (t) => {
  const configurations: [string, NgramDrafterOptions][] = [
    ['paper', ANPD_PAPER_OPTIONS],
    ['default', DEFAULT_NGRAM_OPTIONS],
    ['n = 3, copy from 5', { ...DEFAULT_NGRAM_OPTIONS, n: 3, copyMinMatch: 5 }],
    ['n = 8, gated', { ...DEFAULT_NGRAM_OPTIONS, n: 8, minCount: [2, 2, 1, 1, 1, 1, 1], minShare: 0.4 }],
    ['bigram', BIGRAM],
  ];
  // A tiny vocabulary (heavy eviction), a small one, and a real tokenizer's size (hash keys spread wide).
  const texts: [number, number][] = [
    [5, 1200],
    [20, 1200],
    [150_000, 3000],
  ];
  let checks = 0;
  let nonEmpty = 0;
  for (const [name, options] of configurations) {
    for (const [vocab, length] of texts) {
      const sequence = structuredSequence(length, vocab, vocab + length);
      const drafter = new NgramDrafter([], options);
      const reference = new ReferenceDrafter(options);
      for (let i = 0; i < sequence.length; i++) {
        drafter.commit([sequence[i]!]);
        reference.push(sequence[i]!);
        if (i % 11 !== 0) continue;
        for (const k of [1, 6]) {
          const draft = draftOf(drafter, k);
          t.deepEqual(draft, reference.propose(k), `${name}, vocabulary ${vocab}, ${i + 1} tokens, maxTokens ${k}`);
          checks++;
          if (draft.length > 0) nonEmpty++;
        }
      }
      t.deepEqual(drafter.contextCounts(), reference.contextCounts(), `${name}, vocabulary ${vocab}`);
    }
  }
  t.true(nonEmpty > checks / 2, `${nonEmpty} of ${checks} drafts non-empty`);
});
