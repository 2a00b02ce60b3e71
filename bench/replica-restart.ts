/**
 * How long a killed replica takes to serve again: SIGKILL the only replica process of an idle
 * pool, time until the pool reports it restarted (the 0.25 s first backoff included), 5 times.
 *
 *   node dist/bench/replica-restart.js
 */
import { EnginePool } from '../src/engine/engine-pool.js';
import { defaultModelDir, TEST_FORWARD_COST } from '../test/support/default-model.js';

// The pool's timers never hold the process open (a server's socket does): this does here.
const keepAlive = setInterval(() => undefined, 1000);
const pool = await EnginePool.create(
  await defaultModelDir(),
  { executionProvider: 'cpu', intraOpThreads: 2, kvCapacity: 4096 },
  { replicas: 1, isolation: 'process', forwardCost: { mode: 'fixed', table: TEST_FORWARD_COST } },
);
let restarted: (() => void) | undefined;
pool.onReplicaEvent((e) => {
  if (e.kind === 'restarted') restarted?.();
});
const killToRestartedMs: number[] = [];
for (let i = 0; i < 5; i++) {
  const back = new Promise<void>((resolve) => (restarted = resolve));
  const t0 = performance.now();
  process.kill(pool.replicas[0]!.pid!, 'SIGKILL');
  await back;
  killToRestartedMs.push(Math.round(performance.now() - t0));
}
await pool.dispose();
clearInterval(keepAlive);
process.stdout.write(`${JSON.stringify({ killToRestartedMs })}\n`);
