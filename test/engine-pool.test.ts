/**
 * EnginePool: several model replicas (worker threads with their own ORT sessions) behind one
 * GenerationBackend. Concurrent runs spread over the replicas, every output equals the in-process
 * engine's, and a cancel on one replica leaves the others' runs alone.
 */
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { CancelledError } from '../src/errors.js';
import type { GenerateRequest, GenerationBackend } from '../src/contract.js';
import { createEnginePool, type EnginePool } from '../src/engine/engine-pool.js';
import { defaultEngine, defaultModelDir, TEST_FORWARD_COST } from './support/default-model.js';

async function collect(backend: GenerationBackend, request: GenerateRequest, signal?: AbortSignal, onDelta?: () => void): Promise<number[]> {
  const tokens: number[] = [];
  for await (const event of backend.run(backend.prepare(request), signal)) {
    if (event.type === 'delta') {
      tokens.push(...event.tokenIds);
      onDelta?.();
    }
  }
  return tokens;
}

let pool: EnginePool | undefined;
test.after.always(async () => {
  await pool?.dispose();
});

test.serial('concurrent runs spread over the replicas and each output equals the in-process engine', async (t) => {
  pool = await createEnginePool(await defaultModelDir(), { executionProvider: 'cpu', intraOpThreads: 1, kvCapacity: 512 }, { replicas: 2, forwardCost: { mode: 'fixed', table: TEST_FORWARD_COST } });
  t.is(pool.replicas.length, 2);
  // The table each worker reports back from its engine: the given one reached every replica.
  for (const [i, replica] of pool.replicas.entries()) t.deepEqual(replica.forwardCost, TEST_FORWARD_COST, `replica ${i}`);
  const requests: GenerateRequest[] = [
    { prompt: { kind: 'text', text: 'What is the capital of France?', chat: true }, maxNewTokens: 24 },
    { prompt: { kind: 'text', text: 'Repeat twice: the quick brown fox.', chat: true }, maxNewTokens: 32 },
    { prompt: { kind: 'text', text: 'Name three colors.', chat: true }, maxNewTokens: 24 },
    { prompt: { kind: 'text', text: 'Write a haiku about rain.', chat: true }, maxNewTokens: 24 },
  ];
  let peak: readonly number[] = [0, 0];
  const outputs = await Promise.all(
    requests.map((r) =>
      collect(pool!, r, undefined, () => {
        const now = pool!.runsInFlight;
        if (now[0]! + now[1]! > peak[0]! + peak[1]!) peak = now;
      }),
    ),
  );
  t.deepEqual(peak, [2, 2], 'four concurrent runs should sit two per replica');
  t.deepEqual(pool.runsInFlight, [0, 0]);
  const direct = await defaultEngine();
  for (const [i, request] of requests.entries()) t.deepEqual(outputs[i], await collect(direct, request), `request ${i}`);
});

test.serial('a cancelled run on one replica leaves the other replica’s run to finish', async (t) => {
  const p = pool!;
  const controller = new AbortController();
  const long: GenerateRequest = { prompt: { kind: 'text', text: 'Count: one, two, three,' }, maxNewTokens: 400, ignoreEos: true };
  const short: GenerateRequest = { prompt: { kind: 'text', text: 'Name three colors.', chat: true }, maxNewTokens: 24 };
  let deltas = 0;
  const [cancelled, finished] = await Promise.allSettled([
    collect(p, long, controller.signal, () => {
      if (++deltas === 3) controller.abort(new Error('client went away'));
    }),
    collect(p, short),
  ]);
  t.is(cancelled.status, 'rejected');
  t.true((cancelled as PromiseRejectedResult).reason instanceof CancelledError);
  t.is(finished.status, 'fulfilled');
  t.deepEqual((finished as PromiseFulfilledResult<number[]>).value, await collect(await defaultEngine(), short));
});

test.serial('replicas in child processes (how GPU replicas run) give the same outputs, survive a replica dying, and exit on dispose', async (t) => {
  const processes = await createEnginePool(await defaultModelDir(), { executionProvider: 'cpu', intraOpThreads: 1, kvCapacity: 512 }, {
    replicas: 2,
    forwardCost: { mode: 'fixed', table: TEST_FORWARD_COST },
    isolation: 'process',
  });
  try {
    const request: GenerateRequest = { prompt: { kind: 'text', text: 'Repeat twice: the quick brown fox.', chat: true }, maxNewTokens: 32 };
    const [a, b] = await Promise.all([collect(processes, request), collect(processes, request)]);
    const expected = await collect(await defaultEngine(), request);
    t.deepEqual(a, expected);
    t.deepEqual(b, expected);
    // A replica process dies (OOM killer, driver fault): later runs go to the live one.
    const children = execFileSync('ps', ['--ppid', String(process.pid), '-o', 'pid=,args='], { encoding: 'utf8' })
      .split('\n')
      .filter((l) => l.includes('engine-worker.js'))
      .map((l) => Number(l.trim().split(/\s+/)[0]));
    t.is(children.length, 2);
    process.kill(children[0]!, 'SIGKILL');
    while (processes.replicas.every((r) => r.alive)) await new Promise((resolve) => setTimeout(resolve, 20));
    const after = await Promise.all([collect(processes, request), collect(processes, request), collect(processes, request)]);
    for (const tokens of after) t.deepEqual(tokens, expected);
  } finally {
    await processes.dispose();
  }
  await t.throwsAsync(collect(processes, { prompt: { kind: 'text', text: 'hi' }, maxNewTokens: 2 }), { message: /disposed|exited/ });
});

test('the replica count is validated', async (t) => {
  await t.throwsAsync(createEnginePool(await defaultModelDir(), { executionProvider: 'cpu', intraOpThreads: 1, kvCapacity: 256 }, { replicas: 0 }), {
    instanceOf: RangeError,
    message: /engine replicas/,
  });
});
