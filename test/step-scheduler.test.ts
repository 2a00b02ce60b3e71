/**
 * The step scheduler without a model: members' draft budgets (the numbers the draft length
 * controller has always been given), grouping onto the graph widths that exist, and when a step
 * runs — at the next macrotask after the first submission, so a paused member never holds up the
 * others and the event loop turns between steps.
 */
import test from 'ava';
import { NO_LOAD, type OthersLoad } from '../src/draft/draft-length-controller.js';
import {
  BATCH_TOKENS_MAX,
  PREFILL_FORWARDS_PER_STEP_MAX,
  packPrefill,
  planStep,
  StepScheduler,
} from '../src/schedule/step-scheduler.js';
import type { BatchExecutor, DecoderSequence, PrefillPack, StepForward, StepSubmitter } from '../src/runtime/types.js';

/** A batch executor that records what each run carried (sequence names by width). */
class FakeExecutor implements BatchExecutor {
  readonly widths: readonly number[];
  readonly counts = { alone: 0, batched: 0, batchedSequences: 0, byWidth: {} };
  readonly runs: { width: number; names: string[] }[] = [];
  submitter: StepSubmitter | undefined;
  constructor(widths: readonly number[]) {
    this.widths = widths;
  }
  attach(submitter: StepSubmitter): void {
    this.submitter = submitter;
  }
  async run(width: number, forwards: readonly StepForward[]): Promise<readonly Float32Array[]> {
    this.runs.push({ width, names: forwards.map((f) => (f.sequence as FakeSequence).name) });
    return forwards.map((f) => new Float32Array(f.rows));
  }
}

/** Submits each forward synchronously, as the runtime's sequences do (one chunk, 2 rows at least). */
class FakeSequence implements DecoderSequence {
  readonly name: string;
  readonly executor: FakeExecutor | undefined;
  length = 0;
  readonly capacity = 1024;
  direct = 0;
  constructor(name: string, executor?: FakeExecutor) {
    this.name = name;
    this.executor = executor;
  }
  forward(tokens: ArrayLike<number>, rows: number): Promise<Float32Array> {
    const submitter = this.executor?.submitter;
    if (submitter === undefined) {
      this.direct++;
      return Promise.resolve(new Float32Array(rows));
    }
    return submitter.submit({
      sequence: this,
      tokens,
      start: 0,
      count: tokens.length,
      padded: Math.max(2, tokens.length),
      rows,
    }) as Promise<Float32Array>;
  }
  rewind(): void {}
  dispose(): void {}
}

const seq = (name = 's'): FakeSequence => new FakeSequence(name);

/** An executor that packs prefill chunks (as the paged graph does), recording each step's runs in order. */
class PackingExecutor extends FakeExecutor {
  readonly prefillPack: PrefillPack;
  readonly log: string[] = [];
  constructor(pack: PrefillPack) {
    super([2, 4]);
    this.prefillPack = pack;
  }
  override async run(width: number, forwards: readonly StepForward[]): Promise<readonly Float32Array[]> {
    this.log.push(`decode ${forwards.map((f) => (f.sequence as FakeSequence).name).join('')}`);
    return super.run(width, forwards);
  }
  async runPrefill(forwards: readonly StepForward[]): Promise<void> {
    this.log.push(`prefill ${forwards.map((f) => `${(f.sequence as FakeSequence).name}${f.count}`).join(' ')}`);
  }
}

const fill = (sequence: FakeSequence, count: number): StepForward => ({
  sequence,
  tokens: new Array<number>(count).fill(1),
  start: 0,
  count,
  padded: count,
  rows: 0,
  fill: true,
});

test("each member's budget is the sum of the others' plans, not its own", (t) => {
  const steps = new StepScheduler(16);
  const a = steps.join(seq(), 2, 1);
  const b = steps.join(seq(), 8, 3.5);
  const c = steps.join(seq(), 2, 1);
  const out: OthersLoad = { rows: 0, tokens: 0 };
  t.deepEqual(a.budget(out), { rows: 10, tokens: 4.5 });
  t.deepEqual(b.budget(out), { rows: 4, tokens: 2 });
  b.plan(2, 1.25);
  t.deepEqual(a.budget(out), { rows: 4, tokens: 2.25 });
  t.is(steps.sequences, 3);
  c.leave();
  c.leave();
  t.is(steps.sequences, 2);
  t.deepEqual(a.budget(out), { rows: 2, tokens: 1.25 });
  c.plan(50, 50); // a member that left changes nothing
  t.deepEqual(a.budget(out), { rows: 2, tokens: 1.25 });
  b.leave();
  t.deepEqual(a.budget(out), NO_LOAD);
});

test('with more sequences than the widest graph holds, the others count for the width − 1 that share a forward', (t) => {
  const steps = new StepScheduler(4);
  const members = Array.from({ length: 7 }, () => steps.join(seq(), 2, 1));
  // 6 others, 3 of them per forward on average: half their sum.
  t.deepEqual(members[0]!.budget({ rows: 0, tokens: 0 }), { rows: 6, tokens: 3 });
});

test('without batching (width 1) nobody shares a forward, and forwards go straight to the sequence', async (t) => {
  const steps = new StepScheduler(1);
  const s = seq();
  const a = steps.join(s, 2, 1);
  steps.join(seq(), 8, 3);
  t.deepEqual(a.budget({ rows: 0, tokens: 0 }), { rows: 0, tokens: 0 });
  await a.forward([1, 2], 2);
  t.is(s.direct, 1);
  t.throws(() => new StepScheduler(0), { instanceOf: RangeError });
});

test('a step groups short forwards onto the narrowest graph that holds them, long and lone ones on the single-sequence graph', (t) => {
  const f = (name: string, padded: number) => ({ name, padded });
  const names = (groups: ReturnType<typeof planStep<{ name: string; padded: number }>>) =>
    groups.map((g) => `${g.width}:${g.forwards.map((x) => x.name).join('')}`);
  // Six short forwards on a 2/4 ladder: 4 + 2.
  t.deepEqual(
    names(
      planStep(
        ['a', 'b', 'c', 'd', 'e', 'f'].map((n) => f(n, 2)),
        [2, 4],
      ),
    ),
    ['4:abcd', '2:ef'],
  );
  // Three on the 4-wide graph (one idle place); five: 4 + a lone one alone.
  t.deepEqual(
    names(
      planStep(
        ['a', 'b', 'c'].map((n) => f(n, 4)),
        [2, 4],
      ),
    ),
    ['4:abc'],
  );
  t.deepEqual(
    names(
      planStep(
        ['a', 'b', 'c', 'd', 'e'].map((n) => f(n, 2)),
        [2, 4],
      ),
    ),
    ['4:abcd', '1:e'],
  );
  // A prefill chunk longer than a batch takes runs alone, after the batch; one short forward runs alone first.
  t.deepEqual(names(planStep([f('p', BATCH_TOKENS_MAX + 1), f('a', 2), f('b', BATCH_TOKENS_MAX)], [2])), [
    '2:ab',
    '1:p',
  ]);
  t.deepEqual(names(planStep([f('p', 64), f('a', 2)], [2, 4])), ['1:a', '1:p']);
});

test('forwards submitted in one turn run as one step, and the event loop turns before it (steps never chain on microtasks)', async (t) => {
  const executor = new FakeExecutor([2, 4]);
  const steps = new StepScheduler(4, executor);
  const a = steps.join(new FakeSequence('a', executor), 2, 1);
  const b = steps.join(new FakeSequence('b', executor), 2, 1);
  let macrotask = false;
  setImmediate(() => (macrotask = true));
  await Promise.all([a.forward([1], 1), b.forward([1, 2], 2)]);
  t.true(macrotask);
  t.deepEqual(executor.runs, [{ width: 2, names: ['a', 'b'] }]);
  // The next step (both resubmit at once, as after a synchronous forward) waits for the loop again.
  let second = false;
  setImmediate(() => (second = true));
  await Promise.all([a.forward([3], 1), b.forward([4], 1)]);
  t.true(second);
  t.is(executor.runs.length, 2);
});

test('a member that does not submit (a paused consumer) does not block the others: they run at the next macrotask', async (t) => {
  const executor = new FakeExecutor([2, 4]);
  const steps = new StepScheduler(4, executor);
  const a = steps.join(new FakeSequence('a', executor), 2, 1);
  const b = steps.join(new FakeSequence('b', executor), 2, 1);
  steps.join(new FakeSequence('paused', executor), 2, 1);
  let macrotask = false;
  setImmediate(() => (macrotask = true));
  await Promise.all([a.forward([1], 1), b.forward([1], 1)]);
  t.true(macrotask);
  t.deepEqual(executor.runs, [{ width: 2, names: ['a', 'b'] }]);
  t.is(steps.sequences, 3);
});

test('a member that leaves does not hold up the step; forwards of non-members (prefill) join the step', async (t) => {
  const executor = new FakeExecutor([2, 4]);
  const steps = new StepScheduler(4, executor);
  const a = steps.join(new FakeSequence('a', executor), 2, 1);
  const gone = steps.join(new FakeSequence('gone', executor), 2, 1);
  const prefill = new FakeSequence('p', executor).forward([5, 6, 7], 1);
  const forward = a.forward([1], 1);
  gone.leave();
  await Promise.all([forward, prefill]);
  t.deepEqual(executor.runs, [{ width: 2, names: ['p', 'a'] }]);
  // A lone forward runs on the single-sequence graph.
  await new FakeSequence('q', executor).forward([1], 1);
  t.deepEqual(executor.runs.at(-1), { width: 1, names: ['q'] });
});

test('prefill chunks pack first fit in arrival order, within the entries and tokens of one forward', (t) => {
  const c = (name: string, count: number) => ({ name, count });
  const names = (r: ReturnType<typeof packPrefill<{ name: string; count: number }>>) => [
    r.packed.map((x) => x.name).join(''),
    r.deferred.map((x) => x.name).join(''),
  ];
  t.deepEqual(names(packPrefill([c('a', 60), c('b', 50), c('c', 40), c('d', 1)], { tokens: 101, entries: 4 })), [
    'acd',
    'b',
  ]);
  t.deepEqual(names(packPrefill([c('a', 1), c('b', 1), c('c', 1)], { tokens: 100, entries: 2 })), ['ab', 'c']);
  t.deepEqual(names(packPrefill([], { tokens: 100, entries: 2 })), ['', '']);
});

test("a step runs its decodes, then one packed prefill forward; chunks that did not fit run first in the next step's", async (t) => {
  const executor = new PackingExecutor({ tokens: 100, entries: 3 });
  const steps = new StepScheduler(4, executor);
  const [a, b, c, d] = ['a', 'b', 'c', 'd'].map((n) => new FakeSequence(n, executor));
  const submitter = executor.submitter!;
  const done = Promise.all([
    submitter.submit(fill(a!, 70)),
    submitter.submit(fill(b!, 50)),
    submitter.submit(fill(c!, 30)),
    d!.forward([5], 1),
    submitter.submit(fill(d!, 20)),
  ]);
  const results = await done;
  t.is(results[0]!.length, 0, 'a fill forward has no result rows');
  // Two packs in the step (PREFILL_FORWARDS_PER_STEP_MAX allows them), after the decode.
  t.deepEqual(executor.log, ['decode d', 'prefill a70 c30', 'prefill b50 d20']);
  // More packs than a step runs: the rest wait, first in line, for the next step (after its decodes).
  executor.log.length = 0;
  const many = Array.from({ length: PREFILL_FORWARDS_PER_STEP_MAX + 2 }, (_, i) => new FakeSequence(`${i}`, executor));
  const e = new FakeSequence('e', executor);
  const fills = many.map((s) => submitter.submit(fill(s, 60)));
  const decode = e.forward([5], 1);
  await Promise.all([...fills, decode]);
  t.deepEqual(executor.log, [
    'decode e',
    ...Array.from({ length: PREFILL_FORWARDS_PER_STEP_MAX }, (_, i) => `prefill ${i}60`),
    `prefill ${PREFILL_FORWARDS_PER_STEP_MAX}60`,
    `prefill ${PREFILL_FORWARDS_PER_STEP_MAX + 1}60`,
  ]);
  t.is(steps.sequences, 0);
});

test('a prefill chunk larger than any pack fails with a clear error instead of waiting forever', async (t) => {
  const executor = new PackingExecutor({ tokens: 100, entries: 3 });
  new StepScheduler(4, executor);
  const a = new FakeSequence('a', executor);
  await t.throwsAsync(executor.submitter!.submit(fill(a, 101)), {
    message: /prefill chunk of 101 tokens exceeds the pack of 100/,
  });
  // Without a pack, a fill forward is refused, not run as a decode.
  const plain = new FakeExecutor([2]);
  new StepScheduler(2, plain);
  await t.throwsAsync(plain.submitter!.submit(fill(new FakeSequence('b', plain), 3)), { message: /packs no prefill/ });
  t.deepEqual(plain.runs, []);
});
