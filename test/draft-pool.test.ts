/**
 * Shared draft pools (issue 34), without a model: the pool's continuation of a context across
 * documents, its bounds (oldest documents out, scopes least recently used out), and the pooled
 * drafter's choice between the pool and the request's own tables, with what it counts.
 */
import test from 'ava';
import { DraftPool, DraftPools } from '../src/draft/draft-pool.js';
import { NgramDrafter } from '../src/draft/ngram-drafter.js';
import { PooledDrafter } from '../src/draft/pooled-drafter.js';

const OPTIONS = { tokensMax: 256, contextTokens: 4, minMatch: 4, maxMatch: 32 };
const seq = (from: number, n: number) => Array.from({ length: n }, (_, i) => from + i);

test('the continuation of a matching context is the span after its latest occurrence, within its document', (t) => {
  const pool = new DraftPool(OPTIONS);
  pool.add([1, 2, 3, 4, 5, 6, 7, 8]);
  pool.add([9, 9, 1, 2, 3, 4, 50, 51]);
  const out: number[] = [];
  // The latest occurrence of 1 2 3 4 is in the second document.
  t.is(pool.continuation([7, 1, 2, 3, 4], 5, 8, out), 4);
  t.deepEqual(out, [50, 51], 'the copy stops at the end of its document');
  t.is(pool.continuation([9, 9, 1, 2, 3, 4], 6, 1, out), 6, 'the match is measured back past the key');
  t.deepEqual(out, [50]);
  t.is(pool.continuation([2, 3, 4, 5], 4, 8, out), 4);
  t.deepEqual(out, [6, 7, 8]);
  t.is(pool.continuation([1, 2, 3, 4, 99], 5, 8, out), 0, 'no match');
  t.deepEqual(out, []);
  t.is(pool.continuation([2, 3, 4], 3, 8, out), 0, 'shorter than minMatch');
  t.is(pool.continuation([5, 6, 7, 8], 4, 8, out), 0, 'a match at the very end has no continuation');
  // Contexts never span two documents: 7 8 | 9 9.
  t.is(pool.continuation([7, 8, 9, 9], 4, 8, out), 0);
});

test('a pool stays within tokensMax: the oldest documents leave, the newest stay found', (t) => {
  const pool = new DraftPool(OPTIONS);
  const docs = Array.from({ length: 20 }, (_, d) => seq(1000 * (d + 1), 40));
  for (const d of docs) {
    pool.add(d);
    t.true(pool.size <= OPTIONS.tokensMax, `${pool.size} tokens`);
  }
  t.true(pool.evictions > 0);
  t.is(pool.evictedTokens + pool.size, docs.length * 41, 'every token (and separator) is held or counted evicted');
  const out: number[] = [];
  const last = docs.at(-1)!;
  t.is(pool.continuation(last.slice(0, 10), 10, 5, out), 10);
  t.deepEqual(out, last.slice(10, 15));
  t.is(pool.continuation(docs[0]!.slice(0, 10), 10, 5, out), 0, 'the first document was evicted');
  // A document larger than the pool keeps its end.
  const huge = seq(50_000, 1000);
  pool.add(huge);
  t.true(pool.size <= OPTIONS.tokensMax);
  t.is(pool.continuation(huge.slice(990, 995), 5, 3, out), 5);
  t.deepEqual(out, [50_995, 50_996, 50_997]);
});

test('scopes are separate pools, at most scopesMax of them, least recently used out', (t) => {
  const pools = new DraftPools({ tokensMax: 256 }, 2);
  pools.get('a').add([1, 2, 3, 4, 5, 6]);
  const out: number[] = [];
  t.is(pools.get('b').continuation([1, 2, 3, 4], 4, 4, out), 0, "b sees nothing of a's text");
  t.is(pools.get('a').continuation([1, 2, 3, 4], 4, 4, out), 4);
  pools.get('c'); // a was used after b: b goes
  t.true(pools.has('a') && pools.has('c') && !pools.has('b'));
  t.is(pools.scopeEvictions, 1);
  t.is(pools.scopes, 2);
  t.is(pools.tokens, 7, "a's text and its separator");
  t.is(pools.evictedTokens, 0, 'b held nothing');
  pools.get('d'); // a goes, with its 7 tokens
  t.is(pools.evictedTokens, 7);
});

test("the pooled drafter takes the pool's draft when it matches longer than the request's own copy, and counts what was accepted", (t) => {
  const pool = new DraftPool(OPTIONS);
  const earlier = [10, 11, 12, 13, 14, 15, 16, 17, 18, 19];
  pool.add(earlier);
  const own = new NgramDrafter([1, 2, 3, 10, 11, 12, 13]);
  const drafter = new PooledDrafter(own, pool, true);
  t.deepEqual(drafter.propose(4), [14, 15, 16, 17], 'the pool continues 10 11 12 13');
  // The model accepts two and says 99: the pool proposed 4, 2 accepted.
  drafter.commit([14, 15, 99]);
  t.is(drafter.poolDraftTokens, 4);
  t.is(drafter.poolAcceptedTokens, 2);
  // Nothing in the pool continues ... 14 15 99; the request's own (empty) tables draft nothing.
  t.deepEqual(drafter.propose(4), []);
  drafter.commit([5]);
  t.is(drafter.poolDraftTokens, 4, 'a round without a pool draft counts nothing');
  drafter.finish();
  t.is(pool.documents, 2, "the request's tokens joined the pool");
  const out: number[] = [];
  t.is(pool.continuation([3, 10, 11, 12, 13, 14, 15], 7, 2, out), 7);
  t.deepEqual(out, [99, 5]);
});

test("the request's own span copy wins over a pool match that is no longer", (t) => {
  const pool = new DraftPool(OPTIONS);
  pool.add([20, 21, 22, 23, 70, 71]);
  // The prompt repeats 20 21 22 23 followed by 30 31: its own copy matches 4 tokens, as the pool does.
  const own = new NgramDrafter([20, 21, 22, 23, 30, 31, 5, 20, 21, 22, 23]);
  const drafter = new PooledDrafter(own, pool, false);
  t.deepEqual(drafter.propose(2), [30, 31]);
  drafter.commit([30, 31, 6]);
  t.is(drafter.poolDraftTokens, 0);
  drafter.finish();
  t.is(pool.documents, 1, 'a sample that does not contribute adds nothing');
});

test('a pool draft is no longer than the match behind it, and prepare bounds the two sources apart', (t) => {
  const pool = new DraftPool(OPTIONS);
  const earlier = Array.from({ length: 40 }, (_, i) => 100 + i);
  pool.add(earlier);
  // A 4-token match (the minimum) earns at most 4 tokens, however long a draft is allowed.
  const short = new PooledDrafter(new NgramDrafter([1, 2, 100, 101, 102, 103]), pool, false);
  t.true(short.prepare(7, 16));
  t.deepEqual(short.propose(16), [104, 105, 106, 107]);
  // A 12-token match earns up to 12 from the pool (its own bound 16), past the request's own 7.
  const long = new PooledDrafter(new NgramDrafter(earlier.slice(0, 12)), pool, false);
  t.true(long.prepare(7, 16));
  t.deepEqual(long.propose(16), earlier.slice(12, 24));
});

test('of several occurrences of a context, the one with the longest match continues (the latest on a tie)', (t) => {
  const pool = new DraftPool(OPTIONS);
  // Three documents share the context 50 51 52 53; what precedes it tells them apart.
  pool.add([1, 2, 3, 50, 51, 52, 53, 61, 62]);
  pool.add([7, 8, 9, 50, 51, 52, 53, 71, 72]);
  pool.add([4, 5, 6, 50, 51, 52, 53, 81, 82]);
  const out: number[] = [];
  t.is(pool.continuation([0, 8, 9, 50, 51, 52, 53], 7, 2, out), 6, 'the second document matches 6 back');
  t.deepEqual(out, [71, 72]);
  t.is(pool.continuation([2, 3, 50, 51, 52, 53], 6, 2, out), 6);
  t.deepEqual(out, [61, 62]);
  t.is(pool.continuation([0, 50, 51, 52, 53], 5, 2, out), 4, 'no longer match anywhere: the latest');
  t.deepEqual(out, [81, 82]);
});
