/**
 * Self-healing replicas (issue 22) over the real server: a replica process SIGKILLed mid-generation
 * ends only its own generations (UNAVAILABLE, in-band on bidi) and comes back; all replicas down →
 * readiness NOT_SERVING until one is back; a wedged forward trips the watchdog; a replica that dies
 * at every start is restarted a bounded number of times a minute, and the events say why.
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { status as GrpcStatus } from '@grpc/grpc-js';
import test from 'ava';
import { GgmlType, readGguf } from '../src/convert/gguf-reader.js';
import { convertGguf } from '../src/convert/convert-gguf.js';
import { DEFAULT_GRAPH_OPTIONS } from '../src/convert/decoder-graph.js';
import { EnginePool } from '../src/engine/engine-pool.js';
import type { ReplicaEvent } from '../src/engine/replica-set.js';
import type { SupervisionOptions } from '../src/engine/replica-supervisor.js';
import { WORKER_HEARTBEAT_MS } from '../src/engine/worker-protocol.js';
import type { BidiServerMsg, GenerateRequestMsg } from '../src/transport/grpc/messages.js';
import { defaultGguf, defaultModelDir, TEST_FORWARD_COST } from './support/default-model.js';
import { collectStream, grpcError, startTestServer, type TestServer, waitFor } from './support/grpc-server.js';
import { randomLlamaGguf } from './support/random-gguf.js';
import { WEDGE_FILE_ENV, WEDGING_ENGINE_WORKER } from './support/wedge-fault.js';

// The replicas run the wedging worker entry and inherit the environment: a forward wedges when this file exists.
const WEDGE_FILE = join(mkdtempSync(join(tmpdir(), 'anpd-wedge-')), 'wedge');
process.env[WEDGE_FILE_ENV] = WEDGE_FILE;

// The watchdog stays far off except in the wedge tests: a loaded 2-core CI machine must not trip it.
const FAST: Partial<SupervisionOptions> = {
  forwardTimeoutMs: 30_000,
  restartBackoffMs: 100,
  restartBackoffMaxMs: 1_000,
  restartsPerMinuteMax: 20,
};

async function pool(
  replicas: number,
  supervision: Partial<SupervisionOptions> = FAST,
  modelDir?: string,
): Promise<{ pool: EnginePool; events: ReplicaEvent[] }> {
  const p = await EnginePool.create(
    modelDir ?? (await defaultModelDir()),
    { executionProvider: 'cpu', intraOpThreads: 1, kvCapacity: 1024 },
    {
      replicas,
      isolation: 'process',
      forwardCost: { mode: 'fixed', table: TEST_FORWARD_COST },
      supervision,
      workerEntry: WEDGING_ENGINE_WORKER,
    },
  );
  const events: ReplicaEvent[] = [];
  p.onReplicaEvent((e) => events.push(e));
  return { pool: p, events };
}

const LONG: GenerateRequestMsg = {
  text: 'Count from one to two hundred: one, two, three,',
  stopping: { max_new_tokens: 300, ignore_eos: true },
  speculation: { mode: 'MODE_OFF' },
};
const OPTS = { deadlineMs: 120_000 };

async function healthOf(s: TestServer, service = ''): Promise<string> {
  return s.client().health(service);
}

test.serial(
  'SIGKILL of a replica process mid-generation: its generation ends UNAVAILABLE in-band, the other finishes, the replica comes back and serves',
  async (t) => {
    const { pool: p, events } = await pool(2);
    const s = await startTestServer({ engine: p, replicas: p, maxActive: 8 });
    try {
      const call = s.client().generateBidi(OPTS);
      const messages: BidiServerMsg[] = [];
      const ended = new Promise<{ code: number }>((resolve) => {
        call.on('data', (m: BidiServerMsg) => messages.push(m));
        call.on('error', () => {});
        call.on('status', (st: { code: number }) => resolve(st));
      });
      call.write({ generate: { ...LONG, request_id: 'a' } });
      call.write({ generate: { ...LONG, request_id: 'b' } });
      // Both decoding: one on each replica, as the router sends the second to the replica without a run.
      const decoding = (id: string) => messages.filter((m) => 'chunk' in m && m.chunk.request_id === id).length >= 3;
      t.true(await waitFor(() => decoding('a') && decoding('b'), 30_000));
      const victim = p.replicas[0]!.pid!;
      process.kill(victim, 'SIGKILL');
      call.end();
      t.is((await ended).code, GrpcStatus.OK, 'the call itself goes on and ends OK');
      const errors = messages.flatMap((m) => ('error' in m ? [m.error] : []));
      const finals = messages.flatMap((m) => ('chunk' in m && m.chunk.final ? [m.chunk] : []));
      t.is(errors.length, 1, 'one generation was on the dead replica');
      t.is(errors[0]!.code, GrpcStatus.UNAVAILABLE);
      t.is(errors[0]!.reason, 'REPLICA_FAILED');
      t.regex(errors[0]!.message, /replica .*(exited|crashed).*retry/);
      t.is(finals.length, 1, 'the other finished');
      t.is(finals[0]!.final!.usage.output_tokens, 300);
      t.not(finals[0]!.request_id, errors[0]!.request_id);
      t.true(await waitFor(() => events.some((e) => e.kind === 'restarted'), 30_000), 'restarted');
      t.deepEqual(
        events.map((e) => e.kind),
        ['died', 'restarted'],
      );
      t.is(events[0]!.pid, victim);
      t.is(events[0]!.replica, 0);
      t.deepEqual(p.capacity, { up: 2, total: 2 });
      t.not(p.replicas[0]!.pid, victim, 'a new process');
      const info = await s.client().modelInfo();
      t.is(info.replicas_up, 2);
      t.is(info.replicas_total, 2);
      // Two at once: one lands on the restarted replica; both give the same greedy tokens.
      const [x, y] = await Promise.all([
        s.client().generate({ ...LONG, stopping: { max_new_tokens: 16 } }, OPTS),
        s.client().generate({ ...LONG, stopping: { max_new_tokens: 16 } }, OPTS),
      ]);
      t.deepEqual(x.token_ids, y.token_ids);
    } finally {
      await s.close();
      await p.dispose();
    }
  },
);

test.serial(
  'every replica killed: readiness NOT_SERVING (liveness stays SERVING), requests UNAVAILABLE, then SERVING again after the restarts',
  async (t) => {
    const { pool: p, events } = await pool(2, { ...FAST, restartBackoffMs: 1_500 });
    const s = await startTestServer({ engine: p, replicas: p });
    try {
      t.is(await healthOf(s), 'SERVING');
      for (const r of p.replicas) process.kill(r.pid!, 'SIGKILL');
      t.true(await waitFor(() => p.capacity.up === 0, 10_000));
      t.is(await healthOf(s), 'NOT_SERVING');
      t.is(await healthOf(s, 'llm.v1.TextGeneration'), 'NOT_SERVING');
      t.is(await healthOf(s, 'liveness'), 'SERVING');
      const refused = await grpcError(s.client().generate({ ...LONG, stopping: { max_new_tokens: 4 } }, OPTS));
      t.is(refused.code, GrpcStatus.UNAVAILABLE);
      t.regex(refused.details, /no model replica is up/);
      t.is((await s.client().modelInfo()).replicas_up, 0);
      t.true(await waitFor(() => p.capacity.up === 2, 60_000), 'both restarted');
      await new Promise((r) => setTimeout(r, 50)); // let the health update land
      t.is(await healthOf(s), 'SERVING');
      const ok = await s.client().generate({ ...LONG, stopping: { max_new_tokens: 8 } }, OPTS);
      t.is(ok.token_ids.length, 8);
      t.is(events.filter((e) => e.kind === 'died').length, 2);
      t.is(events.filter((e) => e.kind === 'restarted').length, 2);
    } finally {
      await s.close();
      await p.dispose();
    }
  },
);

for (const mode of ['async', 'sync'] as const) {
  test.serial(
    `a wedged forward (${mode}: ${mode === 'sync' ? 'the worker blocked' : 'the forward never returns'}) trips the watchdog: the generation ends UNAVAILABLE, the replica is replaced`,
    async (t) => {
      const { pool: p, events } = await pool(1, { ...FAST, forwardTimeoutMs: 1_500 });
      const s = await startTestServer({ engine: p, replicas: p });
      try {
        writeFileSync(WEDGE_FILE, mode);
        const started = Date.now();
        const err = await grpcError(
          collectStream(s.client().generateStream({ ...LONG, stopping: { max_new_tokens: 32 } })),
        );
        const elapsed = Date.now() - started;
        t.is(err.code, GrpcStatus.UNAVAILABLE);
        t.regex(err.details, /wedged: no forward progress for \d+ ms \(limit 1500 ms\); retry/);
        // Silence counts from the last heartbeat, which may precede the wedged forward by up to one interval.
        t.true(elapsed >= 1_500 - WORKER_HEARTBEAT_MS && elapsed < 10_000, `ended after ${elapsed} ms`);
        t.true(await waitFor(() => events.some((e) => e.kind === 'restarted'), 30_000));
        t.is(events[0]!.kind, 'wedged');
        const ok = await s.client().generate({ ...LONG, stopping: { max_new_tokens: 8 } }, OPTS);
        t.is(ok.token_ids.length, 8, 'the replacement serves');
      } finally {
        await s.close();
        await p.dispose();
      }
    },
  );
}

test.serial(
  'a replica that dies at every start (a broken model swapped in) is restarted a bounded number of times a minute, and the events name the file',
  async (t) => {
    // A small model of our own, so the test can break its files.
    const dir = mkdtempSync(join(tmpdir(), 'anpd-heal-'));
    const gguf = join(dir, 'tiny.gguf');
    writeFileSync(
      gguf,
      randomLlamaGguf(
        readGguf(await defaultGguf()),
        { layers: 2, hidden: 64, ffn: 128, heads: 4, kvHeads: 2 },
        () => GgmlType.Q8_0,
        5,
      ),
    );
    const modelDir = join(dir, 'model');
    convertGguf(gguf, modelDir, DEFAULT_GRAPH_OPTIONS);
    const { pool: p, events } = await pool(
      1,
      { forwardTimeoutMs: 0, restartBackoffMs: 50, restartBackoffMaxMs: 200, restartsPerMinuteMax: 3 },
      modelDir,
    );
    try {
      writeFileSync(join(modelDir, 'model.onnx'), 'not an onnx model');
      process.kill(p.replicas[0]!.pid!, 'SIGKILL');
      t.true(
        await waitFor(() => events.filter((e) => e.kind === 'restart-failed').length >= 3, 60_000),
        events.map((e) => e.kind).join(),
      );
      await new Promise((r) => setTimeout(r, 1_500));
      const failed = events.filter((e) => e.kind === 'restart-failed');
      t.is(failed.length, 3, 'no more than 3 starts within the minute');
      t.regex(failed[0]!.reason!, /model\.onnx/, 'the reason names the file');
      t.true(
        failed[2]!.restartInMs! > 50_000,
        `the next start waits for the minute's window (${failed[2]!.restartInMs} ms)`,
      );
      t.true(failed[0]!.restartInMs! < failed[1]!.restartInMs!, 'backoff grows');
      t.deepEqual(p.capacity, { up: 0, total: 1 });
    } finally {
      await p.dispose();
    }
  },
);
