import test, { type ErrorConstructor, type ExecutionContext, type ThrownError, type ThrowsExpectation } from 'ava';
import { setImmediate as tick } from 'node:timers/promises';
import { type Lease, AdmissionQueue } from '../src/engine/admission-queue.js';
import { CancelledError, OverloadedError, UnavailableError } from '../src/errors.js';

/** Tracks whether a promise has settled, without awaiting it. */
function track<T>(promise: Promise<T>): { readonly promise: Promise<T>; settled(): boolean } {
  let done = false;
  promise.then(
    () => {
      done = true;
    },
    () => {
      done = true;
    },
  );
  return { promise, settled: () => done };
}

/** Lets pending promise callbacks run. */
async function flush(): Promise<void> {
  await tick();
}

/**
 * Asserts `promise` has rejected by the next turn of the event loop, as `expectations` say. A
 * regression that queues a request instead of refusing it, or ignores an abort, fails here rather
 * than leaving the test to await a rejection that only ava's timeout ends.
 */
async function rejectsAtOnce<E extends ErrorConstructor>(
  t: ExecutionContext,
  promise: Promise<unknown>,
  expectations: ThrowsExpectation<E>,
): Promise<ThrownError<E> | undefined> {
  const tracked = track(promise);
  await flush();
  if (!tracked.settled()) {
    t.fail('still pending on the next turn of the event loop: it waits instead of being rejected at once');
    return undefined;
  }
  return t.throwsAsync(promise, expectations);
}

test('acquire grants up to maxActive sequence slots at once', async (t) => {
  const pool = new AdmissionQueue({ maxActive: 3, maxQueued: 4 });
  const leases = await Promise.all([pool.acquire(), pool.acquire(), pool.acquire()]);
  t.like(pool.state, { active: 3, queued: 0, maxActive: 3, maxQueued: 4, draining: false, rejected: 0 });
  // "Up to": the fourth waits.
  const fourth = track(pool.acquire());
  await flush();
  t.false(fourth.settled());
  t.like(pool.state, { active: 3, queued: 1 });
  for (const lease of leases) lease.release();
  (await fourth.promise).release();
  t.like(pool.state, { active: 0, queued: 0 });
});

test('a request beyond maxActive waits until a lease is released', async (t) => {
  const pool = new AdmissionQueue({ maxActive: 1, maxQueued: 1 });
  const first = await pool.acquire();
  const second = track(pool.acquire());
  await flush();
  t.false(second.settled());
  t.like(pool.state, { active: 1, queued: 1 });
  first.release();
  const lease = await second.promise;
  t.true(second.settled());
  t.like(pool.state, { active: 1, queued: 0 });
  lease.release();
  t.like(pool.state, { active: 0, queued: 0 });
});

test('waiting requests are granted in FIFO order as leases release', async (t) => {
  const pool = new AdmissionQueue({ maxActive: 2, maxQueued: 3 });
  const running = [await pool.acquire(), await pool.acquire()];
  const order: string[] = [];
  const granted = new Map<string, Lease>();
  const waiters = ['a', 'b', 'c'].map((name) =>
    pool.acquire().then((lease) => {
      order.push(name);
      granted.set(name, lease);
      return lease;
    }),
  );
  await flush();
  t.deepEqual(order, []);
  t.is(pool.state.queued, 3);

  running[1]!.release();
  await flush();
  t.deepEqual(order, ['a']);
  t.like(pool.state, { active: 2, queued: 2 });

  running[0]!.release();
  await flush();
  t.deepEqual(order, ['a', 'b']);

  granted.get('a')!.release();
  await flush();
  t.deepEqual(order, ['a', 'b', 'c']);
  t.like(pool.state, { active: 2, queued: 0 });

  await Promise.all(waiters);
  granted.get('b')!.release();
  granted.get('c')!.release();
  t.like(pool.state, { active: 0, queued: 0 });
});

test('releasing a lease twice frees only one slot', async (t) => {
  const pool = new AdmissionQueue({ maxActive: 2, maxQueued: 0 });
  const a = await pool.acquire();
  await pool.acquire();
  t.is(pool.state.active, 2);
  a.release();
  t.is(pool.state.active, 1);
  a.release();
  t.is(pool.state.active, 1);
  // The pool still counts the other lease: only one more slot is available.
  await pool.acquire();
  t.is(pool.state.active, 2);
  await rejectsAtOnce(t, pool.acquire(), { instanceOf: OverloadedError });
});

test('a double release does not grant two queued waiters', async (t) => {
  const pool = new AdmissionQueue({ maxActive: 1, maxQueued: 2 });
  const first = await pool.acquire();
  const second = track(pool.acquire());
  const third = track(pool.acquire());
  first.release();
  first.release();
  await flush();
  t.true(second.settled());
  t.false(third.settled());
  t.like(pool.state, { active: 1, queued: 1 });
  (await second.promise).release();
  (await third.promise).release();
  t.like(pool.state, { active: 0, queued: 0 });
});

test('a full queue rejects the next acquire at once with OverloadedError and counts it', async (t) => {
  const pool = new AdmissionQueue({ maxActive: 1, maxQueued: 2 });
  const running = await pool.acquire();
  const queued = [pool.acquire(), pool.acquire()];
  t.like(pool.state, { active: 1, queued: 2, rejected: 0 });

  const error = await rejectsAtOnce(t, pool.acquire(), { instanceOf: OverloadedError, message: /capacity/ });
  t.is(error?.code, 'OVERLOADED');
  t.like(pool.state, { active: 1, queued: 2, rejected: 1 });
  await rejectsAtOnce(t, pool.acquire(), { instanceOf: OverloadedError });
  t.is(pool.state.rejected, 2);

  running.release();
  (await queued[0]!).release();
  (await queued[1]!).release();
  t.like(pool.state, { active: 0, queued: 0, rejected: 2 });
});

test('refuseIfFull throws exactly when acquire would refuse, and counts it', async (t) => {
  const pool = new AdmissionQueue({ maxActive: 1, maxQueued: 1 });
  t.notThrows(() => pool.refuseIfFull());
  const running = await pool.acquire();
  t.notThrows(() => pool.refuseIfFull(), 'a queue place is still free');
  const queued = pool.acquire();
  t.throws(() => pool.refuseIfFull(), { instanceOf: OverloadedError, message: /capacity/ });
  t.is(pool.state.rejected, 1);
  running.release();
  t.notThrows(() => pool.refuseIfFull(), 'the queued request took the slot: the queue has room again');
  (await queued).release();
  t.like(pool.state, { active: 0, queued: 0, rejected: 1 });
});

test('maxQueued 0 means a request never waits', async (t) => {
  const pool = new AdmissionQueue({ maxActive: 1, maxQueued: 0 });
  const lease = await pool.acquire();
  await rejectsAtOnce(t, pool.acquire(), { instanceOf: OverloadedError });
  t.like(pool.state, { active: 1, queued: 0, rejected: 1 });
  lease.release();
  const again = await pool.acquire();
  t.is(pool.state.active, 1);
  again.release();
});

test('aborting the signal of a queued request rejects it with CancelledError and removes the waiter', async (t) => {
  const pool = new AdmissionQueue({ maxActive: 1, maxQueued: 2 });
  const running = await pool.acquire();
  const controller = new AbortController();
  const cancelled = pool.acquire(controller.signal);
  const kept = track(pool.acquire());
  t.is(pool.state.queued, 2);

  controller.abort(new Error('client went away'));
  const error = await rejectsAtOnce(t, cancelled, { instanceOf: CancelledError, message: 'client went away' });
  t.is(error?.code, 'CANCELLED');
  t.like(pool.state, { active: 1, queued: 1 });

  // The slot goes to the waiter that is still there, not to the cancelled one.
  running.release();
  const lease = await kept.promise;
  t.like(pool.state, { active: 1, queued: 0 });
  lease.release();
  t.like(pool.state, { active: 0, queued: 0 });
});

test('aborting frees room in the queue for another request', async (t) => {
  const pool = new AdmissionQueue({ maxActive: 1, maxQueued: 1 });
  const running = await pool.acquire();
  const controller = new AbortController();
  const cancelled = pool.acquire(controller.signal);
  await rejectsAtOnce(t, pool.acquire(), { instanceOf: OverloadedError });
  controller.abort();
  await rejectsAtOnce(t, cancelled, { instanceOf: CancelledError });
  const next = pool.acquire();
  t.is(pool.state.queued, 1);
  running.release();
  (await next).release();
  t.like(pool.state, { active: 0, queued: 0, rejected: 1 });
});

test('an already-aborted signal rejects immediately without taking a slot', async (t) => {
  const pool = new AdmissionQueue({ maxActive: 1, maxQueued: 1 });
  const controller = new AbortController();
  controller.abort();
  await rejectsAtOnce(t, pool.acquire(controller.signal), { instanceOf: CancelledError });
  t.like(pool.state, { active: 0, queued: 0, rejected: 0 });

  // Also when the pool is full: cancellation wins over queueing.
  const lease = await pool.acquire();
  await rejectsAtOnce(t, pool.acquire(controller.signal), { instanceOf: CancelledError });
  t.like(pool.state, { active: 1, queued: 0, rejected: 0 });
  lease.release();
});

test('aborting after a slot is granted does not affect the lease', async (t) => {
  const pool = new AdmissionQueue({ maxActive: 1, maxQueued: 1 });
  const running = await pool.acquire();
  const controller = new AbortController();
  const waiting = pool.acquire(controller.signal);
  running.release();
  const lease = await waiting;
  controller.abort();
  await flush();
  t.like(pool.state, { active: 1, queued: 0 });
  lease.release();
  t.like(pool.state, { active: 0, queued: 0 });
});

test('after startDraining new acquires reject with UnavailableError while queued waiters are still granted', async (t) => {
  const pool = new AdmissionQueue({ maxActive: 1, maxQueued: 2 });
  const running = await pool.acquire();
  const queued = track(pool.acquire());
  pool.startDraining();
  t.like(pool.state, { draining: true, active: 1, queued: 1 });

  const error = await rejectsAtOnce(t, pool.acquire(), { instanceOf: UnavailableError, message: /shutting down/ });
  t.is(error?.code, 'UNAVAILABLE');
  t.is(pool.state.rejected, 0);
  t.false(queued.settled());

  running.release();
  const lease = await queued.promise;
  t.like(pool.state, { active: 1, queued: 0 });
  lease.release();
  t.like(pool.state, { active: 0, queued: 0, draining: true });
  await rejectsAtOnce(t, pool.acquire(), { instanceOf: UnavailableError });
});

test('whenIdle resolves at once when nothing runs or waits', async (t) => {
  const pool = new AdmissionQueue({ maxActive: 2, maxQueued: 2 });
  const idle = track(pool.whenIdle());
  await flush();
  t.true(idle.settled());
});

test('whenIdle resolves only after all leases are released and the queue is empty', async (t) => {
  const pool = new AdmissionQueue({ maxActive: 1, maxQueued: 2 });
  const first = await pool.acquire();
  const second = pool.acquire();
  const idle = track(pool.whenIdle());

  await flush();
  t.false(idle.settled());

  first.release();
  const secondLease = await second;
  await flush();
  t.false(idle.settled(), 'the queued request now runs');

  secondLease.release();
  await flush();
  t.true(idle.settled(), 'resolved once the last lease was released');
  t.like(pool.state, { active: 0, queued: 0 });
});

test('whenIdle waits for releases while draining', async (t) => {
  const pool = new AdmissionQueue({ maxActive: 2, maxQueued: 0 });
  const a = await pool.acquire();
  const b = await pool.acquire();
  pool.startDraining();
  const idle = track(pool.whenIdle());
  a.release();
  await flush();
  t.false(idle.settled());
  b.release();
  await flush();
  t.true(idle.settled());
});

test('whenIdle resolves when the last queued waiter is cancelled and no lease is held', async (t) => {
  const pool = new AdmissionQueue({ maxActive: 1, maxQueued: 1 });
  const running = await pool.acquire();
  const controller = new AbortController();
  const waiting = pool.acquire(controller.signal);
  const idle = track(pool.whenIdle());
  controller.abort();
  await rejectsAtOnce(t, waiting, { instanceOf: CancelledError });
  await flush();
  t.false(idle.settled());
  running.release();
  await flush();
  t.true(idle.settled());
});

test('the constructor rejects maxActive 0 and other invalid limits', (t) => {
  t.throws(() => new AdmissionQueue({ maxActive: 0, maxQueued: 1 }), { instanceOf: RangeError, message: /maxActive/ });
  t.throws(() => new AdmissionQueue({ maxActive: -1, maxQueued: 1 }), { instanceOf: RangeError, message: /maxActive/ });
  t.throws(() => new AdmissionQueue({ maxActive: 1.5, maxQueued: 1 }), {
    instanceOf: RangeError,
    message: /maxActive/,
  });
  t.throws(() => new AdmissionQueue({ maxActive: 1, maxQueued: -1 }), { instanceOf: RangeError, message: /maxQueued/ });
  t.throws(() => new AdmissionQueue({ maxActive: 1, maxQueued: Number.NaN }), {
    instanceOf: RangeError,
    message: /maxQueued/,
  });
  t.notThrows(() => new AdmissionQueue({ maxActive: 1, maxQueued: 0 }));
});
