import test from 'ava';
import { verifyDraft } from '../src/generate/verify.js';

/** A pickAt over fixed model choices that records every row it is asked for. */
function recorder(choices: readonly number[]): { pickAt: (row: number) => number; calls: number[] } {
  const calls: number[] = [];
  return {
    calls,
    pickAt: (row: number): number => {
      calls.push(row);
      const choice = choices[row];
      if (choice === undefined) throw new Error(`pickAt called for row ${row}, past the logits`);
      return choice;
    },
  };
}

test('an empty draft emits exactly the model token and accepts nothing', (t) => {
  const { pickAt, calls } = recorder([42]);
  const out: number[] = [];
  t.is(verifyDraft([], pickAt, out), 0);
  t.deepEqual(out, [42]);
  t.deepEqual(calls, [0]);
});

test('a fully accepted draft emits every draft token followed by the bonus token', (t) => {
  const { pickAt, calls } = recorder([5, 6, 7, 99]);
  const out: number[] = [];
  t.is(verifyDraft([5, 6, 7], pickAt, out), 3);
  t.deepEqual(out, [5, 6, 7, 99]);
  t.deepEqual(calls, [0, 1, 2, 3]);
});

test('the first mismatch emits the accepted prefix plus the model token in place of the draft token', (t) => {
  const { pickAt } = recorder([5, 6, 8, 100, 101]);
  const out: number[] = [];
  t.is(verifyDraft([5, 6, 7, 100], pickAt, out), 2);
  t.deepEqual(out, [5, 6, 8]);
});

test('a mismatch on the first draft token emits only the model token', (t) => {
  const { pickAt } = recorder([1, 2, 3]);
  const out: number[] = [];
  t.is(verifyDraft([9, 2], pickAt, out), 0);
  t.deepEqual(out, [1]);
});

test('pickAt is called for rows 0..accepted in order and never past the first mismatch', (t) => {
  // Later rows would match the draft again; they must not be consulted.
  const { pickAt, calls } = recorder([10, 11, 0, 13, 14, 15]);
  const out: number[] = [];
  const accepted = verifyDraft([10, 11, 12, 13, 14], pickAt, out);
  t.is(accepted, 2);
  t.deepEqual(calls, [0, 1, 2]);
  t.is(calls.length, accepted + 1);
  t.deepEqual(out, [10, 11, 0]);
});

test('out is cleared before anything is written to it', (t) => {
  const out: number[] = [7, 7, 7, 7, 7, 7];
  const { pickAt } = recorder([3, 4]);
  t.is(verifyDraft([3], pickAt, out), 1);
  t.deepEqual(out, [3, 4]);

  const again = recorder([8]);
  t.is(verifyDraft([9, 9, 9], again.pickAt, out), 0);
  t.deepEqual(out, [8]);
});

test('out is already empty when pickAt is first called', (t) => {
  const out: number[] = [1, 2, 3];
  const lengths: number[] = [];
  verifyDraft(
    [4, 5],
    (row) => {
      lengths.push(out.length);
      return [4, 5, 6][row]!;
    },
    out,
  );
  t.deepEqual(lengths, [0, 1, 2]);
  t.deepEqual(out, [4, 5, 6]);
});

test('the emitted tokens equal what one-row-at-a-time decoding would produce', (t) => {
  // Model choices per row; drafts of every length and every mismatch position.
  const model = [20, 21, 22, 23, 24, 25];
  for (let length = 0; length <= 5; length++) {
    for (let wrongAt = -1; wrongAt < length; wrongAt++) {
      const draft = model.slice(0, length).map((tok, i) => (i === wrongAt ? tok + 1000 : tok));
      const out: number[] = [];
      const accepted = verifyDraft(draft, (row) => model[row]!, out);
      const expectedAccepted = wrongAt === -1 ? length : wrongAt;
      t.is(accepted, expectedAccepted, `length ${length}, wrong at ${wrongAt}`);
      t.deepEqual(out, model.slice(0, expectedAccepted + 1), `length ${length}, wrong at ${wrongAt}`);
    }
  }
});
