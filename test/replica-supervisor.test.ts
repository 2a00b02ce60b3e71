/**
 * ReplicaSupervisor with fake engines (no model): a death is told from a wedge by the failure's
 * kind, not its message; the replica is replaced after the backoff; failed starts back off and are
 * reported as restart-failed.
 */
import test from 'ava';
import { ReplicaSupervisor, type SupervisedEngine } from '../src/engine/replica-supervisor.js';
import type { ReplicaEvent } from '../src/engine/replica-set.js';
import { ReplicaFailedError } from '../src/errors.js';

let nextPid = 100;

class FakeEngine implements SupervisedEngine {
  alive = true;
  readonly pid = nextPid++;
  stalled = 0;
  killedWith: ReplicaFailedError | undefined;
  disposed = false;
  private readonly listeners: ((failure: ReplicaFailedError) => void)[] = [];

  onDeath(listener: (failure: ReplicaFailedError) => void): void {
    this.listeners.push(listener);
  }

  stalledMs(): number {
    return this.stalled;
  }

  kill(failure: ReplicaFailedError): void {
    this.killedWith = failure;
    this.die(failure);
  }

  die(failure: ReplicaFailedError): void {
    this.alive = false;
    for (const listener of this.listeners) listener(failure);
  }

  async dispose(): Promise<void> {
    this.disposed = true;
  }
}

const waitFor = async (condition: () => boolean, timeoutMs = 5_000): Promise<boolean> => {
  const end = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > end) return false;
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
  return true;
};

test('a replica that died is replaced after the backoff; the event says died because of the kind', async (t) => {
  const first = new FakeEngine();
  const started: FakeEngine[] = [];
  const start = async () => {
    const engine = new FakeEngine();
    started.push(engine);
    return engine;
  };
  const supervisor = new ReplicaSupervisor([first], start, {
    forwardTimeoutMs: 0,
    restartsPerMinuteMax: 5,
    restartBackoffMs: 20,
    restartBackoffMaxMs: 1_000,
  });
  const events: ReplicaEvent[] = [];
  supervisor.onReplicaEvent((e) => events.push(e));
  try {
    // A message that reads like a wedge: only the kind counts.
    first.die(
      new ReplicaFailedError('died', 'the model replica running this generation was wedged: (not really); retry'),
    );
    t.deepEqual(supervisor.capacity, { up: 0, total: 1 });
    t.true(await waitFor(() => events.length === 2));
    t.like(events[0], { kind: 'died', replica: 0, pid: first.pid, restartInMs: 20, up: 0, total: 1 });
    t.like(events[1], { kind: 'restarted', replica: 0, pid: started[0]!.pid, restartsLastMinute: 1, up: 1, total: 1 });
    t.is(supervisor.engineAt(0), started[0]!);
    t.true(first.disposed, 'the dead engine is disposed once replaced');
  } finally {
    await supervisor.dispose();
  }
});

test('the watchdog kills a stalled replica with a wedged failure, and the event says wedged', async (t) => {
  const first = new FakeEngine();
  const supervisor = new ReplicaSupervisor([first], async () => new FakeEngine(), {
    forwardTimeoutMs: 200,
    restartsPerMinuteMax: 5,
    restartBackoffMs: 20,
    restartBackoffMaxMs: 1_000,
  });
  const events: ReplicaEvent[] = [];
  supervisor.onReplicaEvent((e) => events.push(e));
  try {
    first.stalled = 250;
    t.true(await waitFor(() => events.some((e) => e.kind === 'restarted')));
    t.is(first.killedWith?.kind, 'wedged');
    t.is(first.killedWith?.code, 'REPLICA_FAILED');
    t.regex(
      first.killedWith!.message,
      /^the model replica running this generation was wedged: no forward progress for 250 ms \(limit 200 ms\); retry$/,
    );
    t.like(events[0], { kind: 'wedged', reason: first.killedWith!.message });
  } finally {
    await supervisor.dispose();
  }
});

test('failed starts are restart-failed events with a growing backoff, bounded per minute', async (t) => {
  const first = new FakeEngine();
  const supervisor = new ReplicaSupervisor(
    [first],
    async () => {
      throw new Error('model.onnx: not an onnx model');
    },
    { forwardTimeoutMs: 0, restartsPerMinuteMax: 3, restartBackoffMs: 10, restartBackoffMaxMs: 1_000 },
  );
  const events: ReplicaEvent[] = [];
  supervisor.onReplicaEvent((e) => events.push(e));
  try {
    first.die(new ReplicaFailedError('died', 'exited (code 1)'));
    t.true(await waitFor(() => events.filter((e) => e.kind === 'restart-failed').length === 3));
    const failed = events.filter((e) => e.kind === 'restart-failed');
    t.deepEqual(
      failed.slice(0, 2).map((e) => e.restartInMs),
      [20, 40],
    );
    t.true(failed[2]!.restartInMs! > 50_000, 'the fourth start waits for the minute');
    t.regex(failed[0]!.reason!, /model\.onnx/);
    t.deepEqual(supervisor.capacity, { up: 0, total: 1 });
  } finally {
    await supervisor.dispose();
  }
});
