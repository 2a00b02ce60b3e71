import { type ChildProcess, spawn } from 'node:child_process';
import {
  chmodSync,
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Metadata } from '@grpc/grpc-js';
import { listeningPort } from './support/serve-process.js';
import test from 'ava';
import { fetchMetricsText, freePort } from '../tools/loopback.js';
import { DRAFT_TOKENS_LIMIT } from '../src/contract.js';
import { forwardCostPath, readForwardCost, writeForwardCost } from '../src/engine/forward-cost.js';
import { projectRoot } from '../src/paths.js';
import { nativeAddon } from '../src/runtime/native-run.js';
import { WorkerEngine } from '../src/engine/worker-engine.js';
import { TextGenerationClient } from '../src/transport/grpc/client.js';
import { GgmlType, metaString, readGguf } from '../src/convert/gguf-reader.js';
import { defaultGguf, defaultModelDir, TEST_FORWARD_COST } from './support/default-model.js';
import { randomLlamaGguf } from './support/random-gguf.js';
import { waitFor } from './support/grpc-server.js';

const RUNTIME = { executionProvider: 'cpu', intraOpThreads: 0, kvCapacity: 512 } as const;

function scratchDir(t: { teardown(fn: () => void): void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'anpd-startup-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

test('a cached forward-cost table is read back only for the same model, provider and threads, and only when well formed', async (t) => {
  const cache = scratchDir(t);
  const modelDir = await defaultModelDir();
  const { path, key } = forwardCostPath(cache, modelDir, RUNTIME);
  t.is(readForwardCost(path, key), undefined, 'nothing cached yet');
  t.true(writeForwardCost(path, key, TEST_FORWARD_COST));
  t.deepEqual(readForwardCost(path, key), TEST_FORWARD_COST);
  const otherThreads = forwardCostPath(cache, modelDir, { ...RUNTIME, intraOpThreads: 1 });
  t.not(otherThreads.path, path);
  t.is(readForwardCost(otherThreads.path, otherThreads.key), undefined);
  t.not(
    forwardCostPath(cache, modelDir, { ...RUNTIME, replicas: 2 }).path,
    path,
    'replicas sharing the cores measure differently',
  );
  t.is(readForwardCost(path, { ...key, cpu: 'another CPU' }), undefined, 'the key inside the file must match too');
  for (const bad of [
    TEST_FORWARD_COST.slice(0, DRAFT_TOKENS_LIMIT),
    [0, 2, ...TEST_FORWARD_COST.slice(2)],
    [0, 1, 1.5, 1.2, ...TEST_FORWARD_COST.slice(4)],
  ]) {
    writeForwardCost(path, key, bad);
    t.is(readForwardCost(path, key), undefined, JSON.stringify(bad));
  }
  writeFileSync(path, '{ not json');
  t.is(readForwardCost(path, key), undefined);
});

test('writing the table where the cache is read-only reports false instead of throwing', (t) => {
  if (process.getuid?.() === 0) {
    // root writes through permission bits; a path under a regular file cannot be created by anyone.
    const file = join(scratchDir(t), 'file');
    writeFileSync(file, '');
    t.false(writeForwardCost(join(file, 'forward-cost', 'x.json'), {}, TEST_FORWARD_COST));
    return;
  }
  const dir = scratchDir(t);
  mkdirSync(join(dir, 'ro'));
  chmodSync(join(dir, 'ro'), 0o500);
  t.false(writeForwardCost(join(dir, 'ro', 'forward-cost', 'x.json'), {}, TEST_FORWARD_COST));
});

test('a worker engine created without calibrating is ready without a table and measures it on calibrate(), once', async (t) => {
  const engine = await WorkerEngine.create(await defaultModelDir(), RUNTIME, { forwardCost: { mode: 'defer' } });
  try {
    t.is(engine.forwardCost, undefined);
    t.true(engine.startupTimes.evaluatedAt <= engine.startupTimes.modelLoadedAt);
    t.is(engine.startupTimes.calibratedAt, undefined);
    const [a, b] = await Promise.all([engine.calibrate(), engine.calibrate()]);
    t.is(a, b, 'one measurement for both callers');
    t.is(a.length, DRAFT_TOKENS_LIMIT + 2);
    t.is(a[1], 1);
    for (let k = 2; k < a.length; k++) t.true(a[k]! >= a[k - 1]!);
    t.is(engine.forwardCost, a);
    t.is(await engine.calibrate(), a);
  } finally {
    await engine.dispose();
  }
});

interface Served {
  readonly child: ChildProcess;
  readonly port: number;
  readonly logs: string[];
  readonly records: () => Record<string, unknown>[];
  readonly exited: Promise<number | null>;
}

async function serve(
  modelDir: string,
  cache: string,
  options: { metricsPort?: number; env?: NodeJS.ProcessEnv; cli?: string } = {},
): Promise<Served> {
  const cli = options.cli ?? new URL('../src/cli/main.js', import.meta.url).pathname;
  const args = [
    cli,
    'serve',
    '--host',
    '127.0.0.1',
    '--port',
    '0',
    '--metrics-host',
    '127.0.0.1',
    '--metrics-port',
    String(options.metricsPort ?? 0),
    '--model',
    modelDir,
  ];
  const child = spawn(process.execPath, args, {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, ANPD_CACHE_DIR: cache, ...options.env },
  });
  const logs: string[] = [];
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const records = () =>
    logs.flatMap((l) => {
      try {
        return [JSON.parse(l) as Record<string, unknown>];
      } catch {
        return [];
      }
    });
  const port = await listeningPort(child, logs);
  return { child, port, logs, records, exited };
}

test.serial(
  'a new replica is SERVING before it measures the forward-cost table, answers at once, caches the table; a restart reuses it',
  async (t) => {
    const modelDir = await defaultModelDir();
    const cache = scratchDir(t);
    const first = await serve(modelDir, cache);
    const client = new TextGenerationClient(`127.0.0.1:${first.port}`);
    try {
      t.is(await client.health(''), 'SERVING');
      // Adaptive speculation needs the table: this request waits for the measurement, then runs.
      const reply = await client.generate(
        { text: 'The capital of France is', stopping: { max_new_tokens: 8, ignore_eos: true } },
        { deadlineMs: 60_000 },
      );
      t.is(reply.token_ids.length, 8);
      const started = first.records().find((r) => r['msg'] === 'started')?.['startupMs'] as
        | Record<string, number>
        | undefined;
      t.truthy(started, 'one started line with the milestones');
      const order = Object.keys(started!);
      t.is(order.at(-1), 'serving');
      for (const name of [
        'mainEvaluated',
        'configParsed',
        'workerEvaluated',
        'tokenizerLoaded',
        'importsDone',
        'modelLoaded',
        'engineReady',
      ])
        t.true(order.includes(name), name);
      t.true(
        started!['configParsed']! <= started!['workerEvaluated']! && started!['modelLoaded']! <= started!['serving']!,
      );
      const loaded = first.records().find((r) => r['msg'] === 'model loaded');
      t.is(loaded?.['forwardCost'], 'deferred');
      // What runs, said at startup: the native runner and kernel where built (always under CI).
      const native = nativeAddon() !== null;
      t.like(loaded, {
        executionProvider: 'cpu',
        runner: native ? 'native' : 'onnxruntime-node',
        attention: native ? 'native' : 'onnxruntime',
        dtype: 'float32',
      });
      t.is(
        first.records().some((r) => r['msg'] === 'native addon not loaded: onnxruntime-node runs every forward'),
        !native,
      );
      t.true(await waitFor(() => first.records().some((r) => r['msg'] === 'forward cost measured'), 30_000));
      t.true(first.records().find((r) => r['msg'] === 'forward cost measured')?.['cached'] as boolean);
      t.is(readdirSync(join(cache, 'forward-cost')).length, 1);
    } finally {
      client.close();
      first.child.kill('SIGTERM');
    }
    t.is(await first.exited, 0);

    const second = await serve(modelDir, cache);
    try {
      t.is(second.records().find((r) => r['msg'] === 'model loaded')?.['forwardCost'], 'cached');
      // SIGTERM drains once the server has logged `started` (it handles the signal from then on).
      t.true(await waitFor(() => second.records().some((r) => r['msg'] === 'started'), 10_000));
      second.child.kill('SIGTERM');
      t.is(await second.exited, 0);
      t.false(
        second.records().some((r) => r['msg'] === 'forward cost measured'),
        'nothing measured again',
      );
    } finally {
      if (second.child.exitCode === null) second.child.kill('SIGKILL');
    }
    t.true(existsSync(join(cache, 'forward-cost')));
  },
);

/** Metric series (names and label sets, no values) and target_info's label names from /metrics. */
function shapeOf(metricsText: string): { series: string[]; help: string[]; targetInfoKeys: string[] } {
  const lines = metricsText.split('\n').filter((l) => l !== '');
  const series = lines
    .filter((l) => !l.startsWith('#') && !l.startsWith('target_info'))
    .map((l) => l.replace(/ \S+( \d+)?$/, ''));
  const targetInfo = lines.find((l) => l.startsWith('target_info')) ?? '';
  return {
    series: series.sort(),
    help: lines.filter((l) => l.startsWith('#')).sort(),
    targetInfoKeys: [...targetInfo.matchAll(/(\w+)="/g)].map((m) => m[1]!).sort(),
  };
}

test.serial(
  'default telemetry without the Node SDK registers what the SDK would: same metric series, resource, trace context in logs',
  async (t) => {
    const modelDir = await defaultModelDir();
    const cache = scratchDir(t);
    const shapes = [];
    for (const env of [
      {},
      { OTEL_PROPAGATORS: 'tracecontext,baggage' /* the default, spelled out: loads the SDK */ },
    ]) {
      const metricsPort = await freePort();
      const server = await serve(modelDir, cache, {
        metricsPort,
        env: { ...env, OTEL_RESOURCE_ATTRIBUTES: 'k8s.pod.name=pod-1' },
      });
      const client = new TextGenerationClient(`127.0.0.1:${server.port}`);
      try {
        const metadata = new Metadata();
        metadata.set('traceparent', '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01');
        await new Promise((resolve, reject) =>
          client.raw.Generate(
            { request_id: 'traced', text: 'Hi', stopping: { max_new_tokens: 4 } },
            metadata,
            {},
            (error, reply) => (error ? reject(error) : resolve(reply)),
          ),
        );
        t.true(await waitFor(() => server.records().some((r) => r['msg'] === 'request'), 5000));
        const request = server.records().find((r) => r['msg'] === 'request')!;
        t.is(
          request['traceId'],
          '0af7651916cd43dd8448eb211c80319c',
          "the caller's trace id reaches the request log line",
        );
        shapes.push({
          sdk: server.records().find((r) => r['msg'] === 'telemetry started')?.['sdk'],
          ...shapeOf(await fetchMetricsText(metricsPort)),
        });
      } finally {
        client.close();
        server.child.kill('SIGTERM');
        await server.exited;
      }
    }
    const [lean, sdk] = shapes;
    t.is(lean!.sdk, 'api+metrics');
    t.is(sdk!.sdk, 'node');
    t.true(lean!.series.some((s) => s.startsWith('gen_ai_')));
    t.deepEqual(lean!.series, sdk!.series);
    t.deepEqual(lean!.help, sdk!.help);
    t.true(lean!.targetInfoKeys.includes('k8s_pod_name') && lean!.targetInfoKeys.includes('service_name'));
    t.deepEqual(lean!.targetInfoKeys, sdk!.targetInfoKeys);
  },
);

test.serial(
  '--model FILE.gguf (a K-quant mix here) is converted into the cache on first use and served; a broken GGUF stops startup naming the file',
  async (t) => {
    const cache = scratchDir(t);
    const work = scratchDir(t);
    const ggufPath = join(work, 'Tiny-Random.Q4_K_M.gguf');
    const q4km = (name: string) => (/attn_v|ffn_down|token_embd/.test(name) ? GgmlType.Q6_K : GgmlType.Q4_K);
    writeFileSync(
      ggufPath,
      randomLlamaGguf(
        readGguf(await defaultGguf()),
        { layers: 2, hidden: 128, ffn: 256, heads: 4, kvHeads: 2 },
        q4km,
        3,
      ),
    );
    const served = await serve(ggufPath, cache);
    const client = new TextGenerationClient(`127.0.0.1:${served.port}`);
    try {
      t.is(await client.health(''), 'SERVING');
      const reply = await client.generate(
        { text: 'Hello', stopping: { max_new_tokens: 6, ignore_eos: true } },
        { deadlineMs: 60_000 },
      );
      t.is(reply.token_ids.length, 6);
      const info = await client.modelInfo();
      t.is(info.model, 'Tiny-Random.Q4_K_M', 'served under the file name');
      t.is(
        info.display_name,
        metaString(readGguf(ggufPath), 'general.name') ?? 'Tiny-Random.Q4_K_M.gguf',
        'a user GGUF is displayed by its general.name',
      );
      const models = readdirSync(join(cache, 'models'));
      t.true(models.includes('gguf-checksums.json'));
      t.true(
        models.some((m) => m.startsWith('tiny-random.q4_k_m-')),
        models.join(', '),
      );
    } finally {
      client.close();
      served.child.kill('SIGTERM');
    }
    t.is(await served.exited, 0);

    const broken = join(work, 'broken.gguf');
    writeFileSync(broken, readFileSync(ggufPath).subarray(0, 4096));
    const cli = new URL('../src/cli/main.js', import.meta.url).pathname;
    const child = spawn(process.execPath, [cli, 'serve', '--host', '127.0.0.1', '--port', '0', '--model', broken], {
      stdio: ['ignore', 'ignore', 'pipe'],
      env: { ...process.env, ANPD_CACHE_DIR: cache },
    });
    let stderr = '';
    child.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
    const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
    t.not(code, 0);
    t.regex(stderr, /broken\.gguf/);
  },
);

test.serial(
  'anpd serve logs and counts a replica death and its restart, and exports the replicas-up gauge',
  async (t) => {
    const modelDir = await defaultModelDir();
    const cache = scratchDir(t);
    const metricsPort = await freePort();
    const served = await serve(modelDir, cache, {
      metricsPort,
      env: { ANPD_ENGINE_ISOLATION: 'process', ANPD_ENGINE_REPLICAS: '1' },
    });
    const client = new TextGenerationClient(`127.0.0.1:${served.port}`);
    try {
      t.is(await client.health(''), 'SERVING');
      const loaded = served.records().find((r) => r['msg'] === 'model loaded');
      const [pid] = (loaded?.['replicaPids'] ?? []) as number[];
      t.true(Number.isInteger(pid), 'the replica process is named in the log');
      process.kill(pid!, 'SIGKILL');
      t.true(await waitFor(() => served.records().some((r) => r['msg'] === 'replica restarted'), 60_000));
      const died = served.records().find((r) => r['msg'] === 'replica died')!;
      t.is(died['pid'], pid);
      t.regex(String(died['reason']), /exited/);
      t.truthy(
        served
          .records()
          .find((r) => r['msg'] === 'no model replica is up: readiness is NOT_SERVING until one restarts'),
      );
      t.is(await client.health(''), 'SERVING');
      const reply = await client.generate(
        { text: 'Hello', stopping: { max_new_tokens: 4, ignore_eos: true } },
        { deadlineMs: 60_000 },
      );
      t.is(reply.token_ids.length, 4);
      const metrics = await fetchMetricsText(metricsPort);
      t.regex(metrics, /app_llm_replica_events_total\{[^}]*app_llm_replica_event="died"[^}]*\} 1/);
      t.regex(metrics, /app_llm_replica_events_total\{[^}]*app_llm_replica_event="restarted"[^}]*\} 1/);
      t.regex(metrics, /app_llm_replicas_up(_ratio)?(\{[^}]*\})? 1/);
    } finally {
      client.close();
      served.child.kill('SIGTERM');
    }
    t.is(await served.exited, 0);
  },
);

/** A copy of the built server without dist/native (what a machine without a C compiler has); its CLI's path. */
function installWithoutAddon(t: { teardown(fn: () => void): void }): string {
  const root = scratchDir(t);
  const project = projectRoot();
  cpSync(join(project, 'dist', 'src'), join(root, 'dist', 'src'), { recursive: true });
  cpSync(join(project, 'proto'), join(root, 'proto'), { recursive: true });
  cpSync(join(project, 'package.json'), join(root, 'package.json'));
  symlinkSync(join(project, 'node_modules'), join(root, 'node_modules'));
  return join(root, 'dist', 'src', 'cli', 'main.js');
}

test.serial(
  'without the native addon, anpd serve warns with the cost; with --native-run required it does not start and names the missing file',
  async (t) => {
    const cli = installWithoutAddon(t);
    const required = spawn(
      process.execPath,
      [cli, 'serve', '--host', '127.0.0.1', '--port', '0', '--native-run', 'required'],
      { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, ANPD_CACHE_DIR: scratchDir(t) } },
    );
    let stderr = '';
    required.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
    t.is(await new Promise<number | null>((resolve) => required.once('exit', resolve)), 1);
    t.regex(
      stderr,
      /--native-run required \(ANPD_NATIVE=required\) and the native addon is not usable: .*dist\/native\/anpd_ort_run\.node is missing/,
    );

    const served = await serve(await defaultModelDir(), scratchDir(t), {
      cli,
      env: { ANPD_NATIVE: 'auto', ANPD_NATIVE_RUN: 'auto' },
    });
    try {
      const warning = served
        .records()
        .find((r) => r['msg'] === 'native addon not loaded: onnxruntime-node runs every forward');
      t.regex(String(warning?.['cause']), /anpd_ort_run\.node is missing/);
      t.regex(String(warning?.['cost']), /slower decode/);
      t.like(
        served.records().find((r) => r['msg'] === 'model loaded'),
        { runner: 'onnxruntime-node', attention: 'onnxruntime', dtype: 'float32' },
      );
      // SIGTERM drains once the server has logged `started` (it handles the signal from then on).
      t.true(await waitFor(() => served.records().some((r) => r['msg'] === 'started'), 10_000));
    } finally {
      served.child.kill('SIGTERM');
    }
    t.is(await served.exited, 0);
  },
);
