import test from 'ava';
import { BatchLoad, NO_LOAD, type OthersLoad } from '../src/draft/batch-load.js';

test('each member sees the sum of the others\' plans, not its own', (t) => {
  const load = new BatchLoad(16);
  const a = load.join(2, 1);
  const b = load.join(8, 3.5);
  const c = load.join(2, 1);
  const out: OthersLoad = { rows: 0, tokens: 0 };
  t.deepEqual(a.others(out), { rows: 10, tokens: 4.5 });
  t.deepEqual(b.others(out), { rows: 4, tokens: 2 });
  b.plan(2, 1.25);
  t.deepEqual(a.others(out), { rows: 4, tokens: 2.25 });
  t.is(load.sequences, 3);
  c.leave();
  c.leave();
  t.is(load.sequences, 2);
  t.deepEqual(a.others(out), { rows: 2, tokens: 1.25 });
  c.plan(50, 50); // a member that left changes nothing
  t.deepEqual(a.others(out), { rows: 2, tokens: 1.25 });
  b.leave();
  t.deepEqual(a.others(out), NO_LOAD);
});

test('with more sequences than slots, the others count for the slots − 1 that share a forward', (t) => {
  const load = new BatchLoad(4);
  const members = Array.from({ length: 7 }, () => load.join(2, 1));
  // 6 others, 3 of them per forward on average: half their sum.
  t.deepEqual(members[0]!.others({ rows: 0, tokens: 0 }), { rows: 6, tokens: 3 });
});

test('without batching (one slot) nobody shares a forward', (t) => {
  const load = new BatchLoad(1);
  const a = load.join(2, 1);
  load.join(8, 3);
  t.deepEqual(a.others({ rows: 0, tokens: 0 }), { rows: 0, tokens: 0 });
  t.throws(() => new BatchLoad(0), { instanceOf: RangeError });
});
