import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { type ServiceError, status as GrpcStatus } from '@grpc/grpc-js';
import { listeningPort } from './support/serve-process.js';
import test from 'ava';
import { TextGenerationClient } from '../src/transport/grpc/client.js';
import type { BidiServerMsg, GenerateRequestMsg } from '../src/transport/grpc/messages.js';
import { defaultModelDir } from './support/default-model.js';
import { reflectedServices } from './support/reflection.js';
import { collectStream, grpcError, startTestServer, waitFor } from './support/grpc-server.js';

function countRequest(id: string, maxNewTokens: number): GenerateRequestMsg {
  return {
    request_id: id,
    text: 'Count from one to one thousand: one, two, three,',
    stopping: { max_new_tokens: maxNewTokens, ignore_eos: true },
  };
}

test.serial('health reports SERVING, reflection lists the service (v1 and v1alpha)', async (t) => {
  const s = await startTestServer();
  try {
    const client = s.client();
    t.is(await client.health(''), 'SERVING');
    t.is(await client.health('llm.v1.TextGeneration'), 'SERVING');
    const unknown = await grpcError(client.health('no.such.Service'));
    t.is(unknown.code, GrpcStatus.NOT_FOUND);
    for (const version of ['v1', 'v1alpha'] as const) {
      const services = await reflectedServices(s.address, version);
      t.true(services.includes('llm.v1.TextGeneration'), `${version}: ${services.join(', ')}`);
      t.true(services.includes('grpc.health.v1.Health'), version);
    }
  } finally {
    await s.close();
  }
});

test.serial(
  'shutdown: health turns NOT_SERVING, new work gets UNAVAILABLE, in-flight work finishes, idle bidi calls end UNAVAILABLE',
  async (t) => {
    const s = await startTestServer();
    const client = s.client();
    const inFlight = collectStream(client.generateStream(countRequest('in-flight', 80)));
    const idle = client.generateBidi();
    idle.on('data', () => {});
    idle.on('error', () => {});
    const idleStatus = new Promise<{ code: number }>((resolve) => idle.on('status', resolve));
    // A message that is neither generate nor cancel gets an in-band error: the server holds the call, idle.
    const idleAnswered = new Promise<BidiServerMsg>((resolve) => idle.once('data', resolve));
    idle.write({});
    const answer = await idleAnswered;
    t.is('error' in answer ? answer.error.code : undefined, GrpcStatus.INVALID_ARGUMENT);
    t.true(await waitFor(() => s.service.poolState.active === 1, 10_000));
    const stopped = s.running.shutdown(30_000);
    t.is(await client.health(''), 'NOT_SERVING');
    t.is(await client.health('llm.v1.TextGeneration'), 'NOT_SERVING');
    t.is(await client.health('liveness'), 'SERVING', 'liveness holds while draining');
    const refused = await grpcError(client.generate(countRequest('late', 4)));
    t.is(refused.code, GrpcStatus.UNAVAILABLE);
    t.regex(refused.details, /shutting down/);
    t.is((await idleStatus).code, GrpcStatus.UNAVAILABLE);
    const chunks = await inFlight;
    const final = chunks[chunks.length - 1]!.final!;
    t.is(final.finish_reason, 'FINISH_REASON_LENGTH');
    t.is(final.usage.output_tokens, 80);
    t.true(await stopped, 'everything finished within the grace period');
    client.close();
  },
);

test.serial('shutdown past the grace period cuts the remaining generations and reports it', async (t) => {
  const s = await startTestServer();
  const client = s.client();
  const stream = client.generateStream(countRequest('too-long', 2000));
  const outcome = collectStream(stream).then(
    () => 'completed',
    (e: ServiceError) => e.code,
  );
  t.true(await waitFor(() => s.service.poolState.active === 1, 10_000));
  t.false(await s.running.shutdown(300));
  // grpc-js's forceShutdown destroys the session with NGHTTP2_CANCEL: the client sees the call cancelled.
  t.is(await outcome, GrpcStatus.CANCELLED);
  t.true(await waitFor(() => s.service.poolState.active === 0, 3000), 'the cut generation freed its slot');
  client.close();
});

test.serial(
  'max connection age: the server sends GOAWAY, calls in flight finish, the client reconnects for the next ones',
  async (t) => {
    const s = await startTestServer({ maxConnectionAgeMs: 300 });
    try {
      const client = s.client();
      // Outlives several connection ages: finishes thanks to the grace period.
      const long = await collectStream(client.generateStream(countRequest('long', 48)));
      t.is(long[long.length - 1]!.final!.usage.output_tokens, 48);
      for (let i = 0; i < 3; i++) {
        await new Promise((resolve) => setTimeout(resolve, 400));
        const r = await client.generate(countRequest(`after-${i}`, 4));
        t.is(r.final.usage.output_tokens, 4, 'a new connection serves the next call');
      }
    } finally {
      await s.close();
    }
    // The setting is live: with a grace shorter than the generation, the connection is cut under it.
    const strict = await startTestServer({ maxConnectionAgeMs: 300, maxConnectionAgeGraceMs: 200 });
    try {
      const outcome = await collectStream(strict.client().generateStream(countRequest('cut', 400))).then(
        () => 'completed',
        (e: ServiceError) => e.code,
      );
      // The connection is dropped under the call: UNAVAILABLE, the status a client may retry on.
      t.is(outcome, GrpcStatus.UNAVAILABLE, 'a 400-token generation outlives age + grace and is cut');
      t.true(await waitFor(() => strict.service.poolState.active === 0, 5000), 'the cut generation freed its slot');
      // And the model worker moved on: a fresh call (new connection) completes.
      t.is((await strict.client().generate(countRequest('next', 4))).final.usage.output_tokens, 4);
    } finally {
      await strict.close();
    }
  },
);

/** Runs `anpd health ARGS` (what the container HEALTHCHECK runs); resolves with exit code and output. */
function cliHealth(args: readonly string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number; out: string }> {
  const cli = new URL('../src/cli/main.js', import.meta.url).pathname;
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [cli, 'health', ...args],
      { env: { ...process.env, ANPD_ADDRESS: '', ...env }, timeout: 20_000 },
      (error, stdout) => {
        const code = error === null ? 0 : typeof error.code === 'number' ? error.code : -1;
        resolve({ code, out: stdout.trim() });
      },
    );
  });
}

/** Starts `anpd serve` as a real process on a free port; resolves with its port once it listens. */
async function spawnServer(): Promise<{ child: ChildProcess; port: number; logs: string[] }> {
  const modelDir = await defaultModelDir();
  const cli = new URL('../src/cli/main.js', import.meta.url).pathname;
  const child = spawn(
    process.execPath,
    [cli, 'serve', '--host', '127.0.0.1', '--port', '0', '--model', modelDir, '--shutdown-grace-ms', '60000'],
    {
      stdio: ['ignore', 'ignore', 'pipe'],
    },
  );
  const logs: string[] = [];
  const port = await listeningPort(child, logs);
  return { child, port, logs };
}

test.serial(
  'SIGTERM: the server drains — in-flight generations finish, new requests get UNAVAILABLE — and exits 0',
  async (t) => {
    const { child, port, logs } = await spawnServer();
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    const client = new TextGenerationClient(`127.0.0.1:${port}`);
    try {
      t.is(await client.health(''), 'SERVING');
      // The container health check: follows ANPD_PORT when no address is given.
      t.deepEqual(await cliHealth([], { ANPD_PORT: String(port) }), { code: 0, out: 'SERVING' });
      const bidi = client.generateBidi();
      const messages: BidiServerMsg[] = [];
      bidi.on('data', (m: BidiServerMsg) => messages.push(m));
      bidi.on('error', () => {});
      const bidiStatus = new Promise<{ code: number }>((resolve) => bidi.on('status', resolve));
      // Long enough that the drain outlasts the health CLI calls below (each starts a Node process).
      const inFlightTokens = 400;
      bidi.write({ generate: countRequest('bidi-in-flight', inFlightTokens) });
      const stream = collectStream(client.generateStream(countRequest('stream-in-flight', inFlightTokens)));
      t.true(await waitFor(() => messages.length > 0, 20_000), 'generation started');
      child.kill('SIGTERM');
      t.true(await waitFor(() => logs.some((l) => l.includes('"draining"')), 5000));
      const refused = await grpcError(client.generate(countRequest('after-sigterm', 4)));
      t.is(refused.code, GrpcStatus.UNAVAILABLE);
      // Draining: readiness fails, liveness holds (so Kubernetes does not restart the draining pod).
      const [readiness, liveness] = await Promise.all([
        cliHealth(['--address', `127.0.0.1:${port}`]),
        cliHealth(['--address', `127.0.0.1:${port}`, '--service', 'liveness']),
      ]);
      t.false(
        messages.some((m) => 'chunk' in m && m.chunk.final !== undefined),
        'the bidi generation was still running when health was asked (the drain had not ended)',
      );
      t.deepEqual(readiness, { code: 1, out: 'NOT_SERVING' });
      t.deepEqual(liveness, { code: 0, out: 'SERVING' });
      const chunks = await stream;
      t.is(chunks[chunks.length - 1]!.final!.usage.output_tokens, inFlightTokens);
      const status = await bidiStatus;
      const finals = messages.flatMap((m) => ('chunk' in m && m.chunk.final ? [m.chunk.final] : []));
      t.is(finals.length, 1, 'the bidi generation finished');
      t.is(finals[0]!.usage.output_tokens, inFlightTokens);
      t.is(status.code, GrpcStatus.UNAVAILABLE, 'the bidi call then ends UNAVAILABLE (the client had not half-closed)');
      t.is(await exited, 0);
      const gone = await cliHealth(['--address', `127.0.0.1:${port}`, '--timeout-ms', '1000']);
      t.is(gone.code, 1);
      t.regex(gone.out, /^UNREACHABLE/);
    } finally {
      client.close();
      if (child.exitCode === null) child.kill('SIGKILL');
    }
  },
);
