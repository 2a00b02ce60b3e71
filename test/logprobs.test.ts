/** Log-probabilities of a logits row (pure: no model). */
import test from 'ava';
import { expNonPositive, tokenLogprob } from '../src/sampling/logprobs.js';

test('logprob, rank and top-N of a row, against a direct softmax', (t) => {
  const row = Float32Array.from([1, 3, 2, 3, -1, 0.5]);
  const z = Array.from(row).reduce((s, v) => s + Math.exp(v), 0);
  const lp = (i: number) => Math.log(Math.exp(row[i]!) / z);
  const e = tokenLogprob(row, 0, row.length, 2, 3);
  t.is(e.tokenId, 2);
  t.true(Math.abs(e.logprob - lp(2)) < 1e-8);
  t.is(e.rank, 3, 'two tokens are more likely');
  // Ties: lower id first; the list is most likely first.
  t.deepEqual(
    e.top.map((x) => x.tokenId),
    [1, 3, 2],
  );
  for (const x of e.top) t.true(Math.abs(x.logprob - lp(x.tokenId)) < 1e-8);
  t.is(tokenLogprob(row, 0, row.length, 1, 0).rank, 1, 'a token tied for the top has rank 1');
  t.deepEqual(tokenLogprob(row, 0, row.length, 1, 0).top, []);
  // Probabilities of the full row sum to 1.
  const all = tokenLogprob(row, 0, row.length, 0, row.length).top;
  t.true(Math.abs(all.reduce((s, x) => s + Math.exp(x.logprob), 0) - 1) < 1e-8);
});

test('a row at an offset of a multi-row buffer; large logits do not overflow', (t) => {
  const rows = Float32Array.from([0, 0, 0, 1000, 1001, 999]);
  const e = tokenLogprob(rows, 3, 3, 1, 2);
  t.true(Number.isFinite(e.logprob));
  t.is(e.rank, 1);
  t.deepEqual(
    e.top.map((x) => x.tokenId),
    [1, 0],
  );
  t.true(Math.abs(Math.exp(e.logprob) - 1 / (1 + Math.exp(-1) + Math.exp(-2))) < 1e-9);
});

test('expNonPositive agrees with Math.exp to 1e-10 relative (a logprob travels as float32: 6e-8) over [−700, 0] (what a row sum can feel), and is 0 below', (t) => {
  let worst = 0;
  for (let x = 0; x > -700; x -= 0.0137) worst = Math.max(worst, Math.abs(expNonPositive(x) / Math.exp(x) - 1));
  for (const x of [0, -1e-12, -0.5, -Math.LN2 / 2, -Math.LN2, -87.3, -699.9])
    worst = Math.max(worst, Math.abs(expNonPositive(x) / Math.exp(x) - 1));
  t.true(worst < 1e-10, `worst relative error ${worst}`);
  t.is(expNonPositive(-701), 0);
  t.is(expNonPositive(-Infinity), 0);
  t.is(expNonPositive(0), 1);
});
