/**
 * EnginePool: several model replicas (worker threads with their own ORT sessions) behind one
 * GenerationBackend. Every output equals the in-process engine's, a cancel on one replica leaves
 * the others' runs alone, and a replica's death fails only its runs, with the kind 'died'.
 */
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { CancelledError, ReplicaFailedError } from '../src/errors.js';
import type { GenerateRequest, GenerationBackend } from '../src/contract.js';
import { EnginePool } from '../src/engine/engine-pool.js';
import { defaultEngine, defaultModelDir, TEST_FORWARD_COST } from './support/default-model.js';

async function collect(
  backend: GenerationBackend,
  request: GenerateRequest,
  signal?: AbortSignal,
  onDelta?: () => void,
): Promise<number[]> {
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

test.serial('concurrent runs over the replicas: each output equals the in-process engine', async (t) => {
  pool = await EnginePool.create(
    await defaultModelDir(),
    { executionProvider: 'cpu', intraOpThreads: 1, kvCapacity: 512 },
    { replicas: 2, forwardCost: { mode: 'fixed', table: TEST_FORWARD_COST } },
  );
  t.is(pool.replicas.length, 2);
  // The table each worker reports back from its engine: the given one reached every replica.
  for (const [i, replica] of pool.replicas.entries())
    t.deepEqual(replica.forwardCost, TEST_FORWARD_COST, `replica ${i}`);
  const requests: GenerateRequest[] = [
    { prompt: { kind: 'text', text: 'What is the capital of France?', chat: true }, maxNewTokens: 24 },
    { prompt: { kind: 'text', text: 'Repeat twice: the quick brown fox.', chat: true }, maxNewTokens: 32 },
    { prompt: { kind: 'text', text: 'Name three colors.', chat: true }, maxNewTokens: 24 },
    { prompt: { kind: 'text', text: 'Write a haiku about rain.', chat: true }, maxNewTokens: 24 },
  ];
  // Which replica each run lands on is the router's (test/replica-router.test.ts); here, that they agree.
  const outputs = await Promise.all(requests.map((r) => collect(pool!, r)));
  const direct = await defaultEngine();
  for (const [i, request] of requests.entries())
    t.deepEqual(outputs[i], await collect(direct, request), `request ${i}`);
});

test.serial('a cancelled run on one replica leaves the other replica’s run to finish', async (t) => {
  const p = pool!;
  const controller = new AbortController();
  const long: GenerateRequest = {
    prompt: { kind: 'text', text: 'Count: one, two, three,' },
    maxNewTokens: 400,
    ignoreEos: true,
  };
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

test.serial(
  'replicas in child processes (how GPU replicas run) give the same outputs, survive a replica dying, and exit on dispose',
  async (t) => {
    const processes = await EnginePool.create(
      await defaultModelDir(),
      { executionProvider: 'cpu', intraOpThreads: 1, kvCapacity: 512 },
      {
        replicas: 2,
        forwardCost: { mode: 'fixed', table: TEST_FORWARD_COST },
        isolation: 'process',
      },
    );
    try {
      const request: GenerateRequest = {
        prompt: { kind: 'text', text: 'Repeat twice: the quick brown fox.', chat: true },
        maxNewTokens: 32,
      };
      const [a, b] = await Promise.all([collect(processes, request), collect(processes, request)]);
      const expected = await collect(await defaultEngine(), request);
      t.deepEqual(a, expected);
      t.deepEqual(b, expected);
      // A replica process dies (OOM killer, driver fault): later runs go to the live one.
      const children = execFileSync('ps', ['--ppid', String(process.pid), '-o', 'pid=,args='], { encoding: 'utf8' })
        .split('\n')
        .filter((l) => l.includes('engine-worker-main.js'))
        .map((l) => Number(l.trim().split(/\s+/)[0]));
      t.deepEqual(children.sort(), processes.replicas.map((r) => r.pid!).sort());
      // It dies under a run (an idle pool routes the run to replica 0): the run fails with the death's
      // kind, carried across the replica boundary as a field.
      let started!: () => void;
      const decoding = new Promise<void>((resolve) => (started = resolve));
      const doomed = collect(
        processes,
        { prompt: { kind: 'text', text: 'Count: one, two, three,' }, maxNewTokens: 400, ignoreEos: true },
        undefined,
        () => started(),
      );
      await decoding;
      process.kill(processes.replicas[0]!.pid!, 'SIGKILL');
      const failure = await t.throwsAsync(doomed, {
        instanceOf: ReplicaFailedError,
        message: /replica .*exited.*retry/,
      });
      t.is(failure?.kind, 'died');
      while (processes.replicas.every((r) => r.alive)) await new Promise((resolve) => setTimeout(resolve, 20));
      const after = await Promise.all([
        collect(processes, request),
        collect(processes, request),
        collect(processes, request),
      ]);
      for (const tokens of after) t.deepEqual(tokens, expected);
    } finally {
      await processes.dispose();
    }
    await t.throwsAsync(collect(processes, { prompt: { kind: 'text', text: 'hi' }, maxNewTokens: 2 }), {
      message: /disposed|exited/,
    });
  },
);

test('the replica count is validated', async (t) => {
  await t.throwsAsync(
    EnginePool.create(
      await defaultModelDir(),
      { executionProvider: 'cpu', intraOpThreads: 1, kvCapacity: 256 },
      { replicas: 0 },
    ),
    {
      instanceOf: RangeError,
      message: /engine replicas/,
    },
  );
});
