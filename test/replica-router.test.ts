/**
 * LeastLoadedRouter with fake engines (no model): each run goes to the live replica with the
 * fewest runs in flight, a dead replica is never chosen, and the count drops when a run ends.
 */
import test from 'ava';
import type { GenerationEvent, PreparedGeneration } from '../src/contract.js';
import { LeastLoadedRouter, type RoutedEngine } from '../src/engine/replica-router.js';
import { NoReplicaUpError } from '../src/errors.js';

/** An engine whose runs yield one event and then wait until released. */
class FakeEngine implements RoutedEngine {
  alive = true;
  runs = 0;
  private readonly releases: (() => void)[] = [];

  async *run(): AsyncGenerator<GenerationEvent> {
    this.runs++;
    const released = new Promise<void>((resolve) => this.releases.push(resolve));
    yield { type: 'delta', text: 'x', tokenIds: [1] };
    await released;
  }

  releaseAll(): void {
    for (const release of this.releases.splice(0)) release();
  }
}

const PREPARED = {
  request: { prompt: { kind: 'text', text: 'hi' }, maxNewTokens: 1 },
  promptTokens: [1],
} as PreparedGeneration;

/** Starts a run and waits for its first event, so it is routed and in flight. */
async function start(router: LeastLoadedRouter): Promise<AsyncGenerator<GenerationEvent>> {
  const run = router.run(PREPARED);
  await run.next();
  return run;
}

async function drain(run: AsyncGenerator<GenerationEvent>): Promise<void> {
  for await (const _ of run);
}

test('runs go to the replica with the fewest in flight, and the counts drop as they end', async (t) => {
  const engines = [new FakeEngine(), new FakeEngine()];
  const router = new LeastLoadedRouter(2, (i) => engines[i]!);
  const runs = [await start(router), await start(router), await start(router), await start(router)];
  t.deepEqual(router.runsInFlight, [2, 2], 'four runs sit two per replica');
  t.deepEqual(
    engines.map((e) => e.runs),
    [2, 2],
  );
  // Runs 0 and 2 went to replica 0 (a tie goes to the first): they end.
  engines[0]!.releaseAll();
  await Promise.all([drain(runs[0]!), drain(runs[2]!)]);
  t.deepEqual(router.runsInFlight, [0, 2]);
  const next = await start(router);
  t.deepEqual(router.runsInFlight, [1, 2], 'the less loaded replica takes the next run');
  engines[0]!.releaseAll();
  engines[1]!.releaseAll();
  await Promise.all([drain(next), drain(runs[1]!), drain(runs[3]!)]);
  t.deepEqual(router.runsInFlight, [0, 0]);
});

test('a dead replica is never chosen; none alive or closed: NoReplicaUpError (REPLICA_FAILED)', async (t) => {
  const engines = [new FakeEngine(), new FakeEngine()];
  const router = new LeastLoadedRouter(2, (i) => engines[i]!);
  engines[0]!.alive = false;
  const runs = [await start(router), await start(router)];
  t.deepEqual(router.runsInFlight, [0, 2]);
  engines[1]!.alive = false;
  const refused = await t.throwsAsync(router.run(PREPARED).next(), {
    instanceOf: NoReplicaUpError,
    message: /no model replica is up \(2 restarting\); retry shortly/,
  });
  t.is(refused?.code, 'REPLICA_FAILED');
  engines[1]!.releaseAll();
  await Promise.all(runs.map(drain));
  engines[0]!.alive = true;
  router.close();
  await t.throwsAsync(router.run(PREPARED).next(), { instanceOf: NoReplicaUpError, message: /disposed/ });
});
