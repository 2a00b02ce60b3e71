/**
 * `npm run load`: load and soak test with real ghz against a real `anpd serve` process on loopback,
 * started with the settings of deploy/k8s/base/configmap.yaml (what one replica runs with).
 *
 * Scenarios: unary, server streaming, bidi multiplexing (ghz, bounded by count), overload (ghz
 * offering more concurrent calls than slots + queue, bounded by time), then a soak (tools/soak.ts:
 * concurrent bidi calls with random in-band cancels, disconnects and deadlines). For each, the
 * server's own time-to-first-token, time per output token and tokens/s come from its Prometheus
 * endpoint (deltas over the scenario); the server process's RSS is sampled throughout.
 *
 * Writes bench/results/load.json and bench/results/load.md.
 *   npm run load                         # full run, soak 300 s
 *   npm run load -- --soak-s 60          # shorter soak
 *   npm run load -- --quick              # a minute or two: small counts (smoke)
 */
import { execFile, spawn } from 'node:child_process';
import { mkdirSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs, promisify } from 'node:util';
import { parse as parseYaml } from 'yaml';
import { cpus } from 'node:os';
import { projectRoot } from '../src/paths.js';
import { ensureDefaultModel } from '../src/registry/model-cache.js';
import { TextGenerationClient } from '../src/transport/grpc/client.js';
import { ensureGhz } from '../tools/go-tools.js';
import { fetchMetricsText, freePort } from '../tools/loopback.js';
import { replicaKiller, runSoak, type SoakResult } from '../tools/soak.js';

const ROOT = projectRoot();
const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

// ---------- Prometheus text format ----------

interface Sample {
  readonly name: string;
  readonly labels: Record<string, string>;
  readonly value: number;
}

function parsePrometheus(text: string): Sample[] {
  const samples: Sample[] = [];
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
    if (m === null) continue;
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]!] = l[2]!;
    samples.push({ name: m[1]!, labels, value: Number(m[3]) });
  }
  return samples;
}

async function scrape(port: number): Promise<Sample[]> {
  return parsePrometheus(await fetchMetricsText(port));
}

function total(samples: readonly Sample[], name: string, match: Record<string, string> = {}): number {
  return samples
    .filter((s) => s.name === name && Object.entries(match).every(([k, v]) => s.labels[k] === v))
    .reduce((sum, s) => sum + s.value, 0);
}

interface HistogramDelta {
  readonly count: number;
  readonly meanS: number;
  readonly p50S: number;
  readonly p90S: number;
  readonly p99S: number;
  /** Largest finite bucket bound: a quantile equal to it lies at or above it (the +Inf bucket). */
  readonly topBoundS: number;
}

/** Histogram over the interval between two scrapes; quantiles interpolated within buckets. */
function histogramDelta(before: readonly Sample[], after: readonly Sample[], name: string): HistogramDelta {
  const count = total(after, `${name}_count`) - total(before, `${name}_count`);
  const sum = total(after, `${name}_sum`) - total(before, `${name}_sum`);
  const bounds = [...new Set(after.filter((s) => s.name === `${name}_bucket`).map((s) => s.labels['le']!))]
    .map((le) => ({ le, bound: le === '+Inf' ? Infinity : Number(le) }))
    .sort((a, b) => a.bound - b.bound);
  const cumulative = bounds.map(({ le, bound }) => ({
    bound,
    n: total(after, `${name}_bucket`, { le }) - total(before, `${name}_bucket`, { le }),
  }));
  const quantile = (q: number): number => {
    if (count === 0) return NaN;
    const rank = q * count;
    let lower = 0;
    let below = 0;
    for (const { bound, n } of cumulative) {
      if (n >= rank) {
        if (!Number.isFinite(bound)) return lower;
        return lower + ((bound - lower) * (rank - below)) / Math.max(1, n - below);
      }
      lower = bound;
      below = n;
    }
    return lower;
  };
  const finite = cumulative.filter((b) => Number.isFinite(b.bound));
  const topBoundS = finite.length > 0 ? finite[finite.length - 1]!.bound : NaN;
  return {
    count,
    meanS: count > 0 ? sum / count : NaN,
    p50S: quantile(0.5),
    p90S: quantile(0.9),
    p99S: quantile(0.99),
    topBoundS,
  };
}

interface ServerView {
  readonly requests: number;
  readonly outputTokens: number;
  readonly outputTokensPerS: number;
  readonly timeToFirstToken: HistogramDelta;
  readonly timePerOutputToken: HistogramDelta;
  readonly requestDuration: HistogramDelta;
  readonly queueDuration: HistogramDelta;
  readonly outcomes: Record<string, number>;
}

function serverView(before: readonly Sample[], after: readonly Sample[], wallS: number): ServerView {
  const outputTokens =
    total(after, 'app_llm_tokens_sum', { gen_ai_token_type: 'output' }) -
    total(before, 'app_llm_tokens_sum', { gen_ai_token_type: 'output' });
  const outcomes: Record<string, number> = {};
  for (const s of after.filter((x) => x.name === 'app_llm_requests_total')) {
    const key = s.labels['app_llm_outcome'] ?? 'unknown';
    const prior =
      before.find((b) => b.name === s.name && JSON.stringify(b.labels) === JSON.stringify(s.labels))?.value ?? 0;
    if (s.value - prior > 0) outcomes[key] = (outcomes[key] ?? 0) + s.value - prior;
  }
  return {
    requests: total(after, 'app_llm_requests_total') - total(before, 'app_llm_requests_total'),
    outputTokens,
    outputTokensPerS: outputTokens / wallS,
    timeToFirstToken: histogramDelta(before, after, 'gen_ai_server_time_to_first_token'),
    timePerOutputToken: histogramDelta(before, after, 'gen_ai_server_time_per_output_token'),
    requestDuration: histogramDelta(before, after, 'gen_ai_server_request_duration'),
    queueDuration: histogramDelta(before, after, 'app_llm_queue_duration'),
    outcomes,
  };
}

// ---------- RSS ----------

class RssSampler {
  readonly samples: { tMs: number; rssMiB: number }[] = [];
  private timer: NodeJS.Timeout | undefined;
  private readonly started = performance.now();
  constructor(private readonly pid: number) {}
  read(): number {
    const status = readFileSync(`/proc/${this.pid}/status`, 'utf8');
    return Number(/VmRSS:\s+(\d+) kB/.exec(status)![1]) / 1024;
  }
  start(everyMs: number): void {
    this.timer = setInterval(() => {
      try {
        this.samples.push({
          tMs: Math.round(performance.now() - this.started),
          rssMiB: Math.round(this.read() * 10) / 10,
        });
      } catch {
        // process gone
      }
    }, everyMs);
  }
  stop(): void {
    clearInterval(this.timer);
  }
  peakBetween(fromMs: number, toMs: number): number {
    return Math.max(...this.samples.filter((s) => s.tMs >= fromMs && s.tMs <= toMs).map((s) => s.rssMiB));
  }
  now(): number {
    return performance.now() - this.started;
  }
}

// ---------- ghz ----------

interface GhzSummary {
  readonly count: number;
  readonly totalS: number;
  readonly rps: number;
  readonly latencyMs: {
    mean: number;
    p50: number;
    p90: number;
    p95: number;
    p99: number;
    fastest: number;
    slowest: number;
  };
  readonly statusCodes: Record<string, number>;
  readonly errors: Record<string, number>;
  /** Latency percentiles per status code, from ghz's per-call details. */
  readonly latencyByStatusMs: Record<string, { count: number; p50: number; p99: number }>;
}

interface GhzJson {
  count: number;
  total: number;
  average: number;
  fastest: number;
  slowest: number;
  rps: number;
  latencyDistribution: { percentage: number; latency: number }[] | null;
  statusCodeDistribution: Record<string, number>;
  errorDistribution?: Record<string, number>;
  details?: { latency: number; status: string }[];
}

function percentile(sorted: readonly number[], q: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
}

async function ghz(binary: string, args: readonly string[]): Promise<GhzSummary> {
  const { stdout } = await promisify(execFile)(binary, ['--insecure', '-O', 'json', ...args], {
    encoding: 'utf8',
    timeout: 900_000,
    maxBuffer: 512 << 20,
  });
  const r = JSON.parse(stdout) as GhzJson;
  const ms = (ns: number) => Math.round(ns / 1e4) / 100;
  const dist = Object.fromEntries((r.latencyDistribution ?? []).map((d) => [d.percentage, ms(d.latency)]));
  const byStatus: Record<string, number[]> = {};
  for (const d of r.details ?? []) (byStatus[d.status] ??= []).push(d.latency);
  return {
    count: r.count,
    totalS: Math.round(r.total / 1e7) / 100,
    rps: Math.round(r.rps * 100) / 100,
    latencyMs: {
      mean: ms(r.average),
      p50: dist[50] ?? NaN,
      p90: dist[90] ?? NaN,
      p95: dist[95] ?? NaN,
      p99: dist[99] ?? NaN,
      fastest: ms(r.fastest),
      slowest: ms(r.slowest),
    },
    statusCodes: r.statusCodeDistribution,
    errors: r.errorDistribution ?? {},
    latencyByStatusMs: Object.fromEntries(
      Object.entries(byStatus).map(([code, values]) => {
        const sorted = values.sort((a, b) => a - b);
        return [code, { count: sorted.length, p50: ms(percentile(sorted, 0.5)), p99: ms(percentile(sorted, 0.99)) }];
      }),
    ),
  };
}

// ---------- main ----------

interface ScenarioResult {
  readonly name: string;
  readonly description: string;
  readonly ghz?: GhzSummary;
  readonly soak?: SoakResult;
  /** Replica deaths and recoveries during the soak, from the server's own counters. */
  readonly replicas?: { readonly kills: number; readonly events: Record<string, number>; readonly upAtEnd: number };
  readonly server: ServerView;
  readonly rssMiB: { start: number; peak: number; end: number };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      quick: { type: 'boolean' },
      'soak-s': { type: 'string' },
      'kill-replica-every-s': { type: 'string' },
      'out-dir': { type: 'string' },
      caches: { type: 'boolean' },
      'soak-only': { type: 'boolean' },
      'server-log': { type: 'string' },
    },
  });
  // The cache soak (issue 34): no ghz scenarios; varied prompts under many cache salts fill, hit and
  // evict the prefix cache and the draft pools; their gauges are sampled against the bound.
  const cachesMode = values.caches === true;
  // Only the soak (no ghz scenarios); --server-log FILE keeps the server's stderr (e.g. with GRPC_TRACE set).
  const soakOnly = cachesMode || values['soak-only'] === true;
  const quick = values.quick === true;
  const soakS = Number(values['soak-s'] ?? (quick ? 20 : 300));
  // Replica kills during the soak (0 = none): the replicas run as processes so they can be killed.
  const killEveryS = Number(values['kill-replica-every-s'] ?? (cachesMode ? 0 : quick ? 6 : 30));
  const outDir = values['out-dir'] ?? join(ROOT, 'bench/results');
  const ghzBinary = ensureGhz();
  const modelDir = await ensureDefaultModel();
  const config = (
    parseYaml(readFileSync(join(ROOT, 'deploy/k8s/base/configmap.yaml'), 'utf8')) as { data: Record<string, string> }
  ).data;
  const [grpcPort, metricsPort, httpPort] = [await freePort(), await freePort(), await freePort()];
  const address = `127.0.0.1:${grpcPort}`;
  const env = {
    ...process.env,
    ...config,
    ANPD_HOST: '127.0.0.1',
    ANPD_PORT: String(grpcPort),
    ANPD_METRICS_HOST: '127.0.0.1',
    ANPD_METRICS_PORT: String(metricsPort),
    ANPD_HTTP_PORT: String(httpPort), // the ConfigMap's 8000 may be taken here
    ANPD_MODEL_DIR: modelDir,
    ...(killEveryS > 0 ? { ANPD_ENGINE_ISOLATION: 'process' } : {}),
  };
  const maxActive = Number(config['ANPD_MAX_ACTIVE_SEQUENCES']);
  const maxQueued = Number(config['ANPD_MAX_QUEUED_REQUESTS']);
  const serverLog = values['server-log'] !== undefined ? openSync(values['server-log'], 'w') : 'ignore';
  const server = spawn(process.execPath, [join(ROOT, 'dist/src/cli/main.js'), 'serve'], {
    env,
    stdio: ['ignore', 'ignore', serverLog],
  });
  const serverExit = new Promise<number | null>((resolve) => server.once('exit', resolve));
  const client = new TextGenerationClient(address);
  const log = (line: string) => process.stderr.write(`[load] ${line}\n`);
  try {
    const upTo = performance.now() + 120_000;
    for (;;) {
      try {
        if ((await client.health('', { deadlineMs: 1000 })) === 'SERVING') break;
      } catch {
        // not listening yet
      }
      if (performance.now() > upTo || server.exitCode !== null) throw new Error('server did not become SERVING');
      await sleep(200);
    }
    const rss = new RssSampler(server.pid!);
    const rssIdleStartMiB = rss.read();
    rss.start(250);
    log(
      `server pid ${server.pid} on ${address}; settings from deploy/k8s/base/configmap.yaml: ${maxActive} active sequences, queue ${maxQueued}, ${config['ANPD_THREADS']} threads`,
    );

    // Exactness across the whole run: the same greedy request before and after must match.
    const probe = {
      request_id: 'probe',
      messages: {
        messages: [{ role: 'user' as const, content: 'Name the three primary colors and one fact about each.' }],
      },
      stopping: { max_new_tokens: 48 },
    };
    const probeBefore = await client.generate(probe);

    const maxNewTokens = 64;
    const prompt = (n: string) =>
      `"messages":{"messages":[{"role":"user","content":"Write a short note about the number ${n} and why it is interesting."}]},"stopping":{"max_new_tokens":${maxNewTokens}}`;
    const unaryData = `{"request_id":"{{.UUID}}",${prompt('{{.RequestNumber}}')}}`;
    const n = quick ? 8 : 48;
    const longTokens = quick ? 256 : Number(config['ANPD_MAX_NEW_TOKENS_LIMIT']);
    const scenarios: { name: string; description: string; args: string[] }[] = [
      {
        name: 'unary',
        description: `Generate, ${maxActive} workers over 2 connections (= the slots), ${n} calls, ${maxNewTokens} new tokens`,
        args: [
          '--call',
          'llm.v1.TextGeneration.Generate',
          '-c',
          String(maxActive),
          '--connections',
          '2',
          '-n',
          String(n),
          '-t',
          '300s',
          '--count-errors',
          '-d',
          unaryData,
          address,
        ],
      },
      {
        name: 'server-stream',
        description: `GenerateStream, ${maxActive} workers, ${n} calls, ${maxNewTokens} new tokens (latency = whole stream)`,
        args: [
          '--call',
          'llm.v1.TextGeneration.GenerateStream',
          '-c',
          String(maxActive),
          '--connections',
          '2',
          '-n',
          String(n),
          '-t',
          '300s',
          '--count-errors',
          '-d',
          unaryData,
          address,
        ],
      },
      {
        name: 'bidi-multiplexed',
        description: `GenerateBidi, 2 workers, ${n / 4} calls × 4 generations each (fresh request_id per message, 20 ms apart), then half-close`,
        args: [
          '--call',
          'llm.v1.TextGeneration.GenerateBidi',
          '-c',
          '2',
          '-n',
          String(n / 4),
          '-t',
          '600s',
          '--count-errors',
          '--stream-dynamic-messages',
          '--stream-call-count',
          '4',
          '--stream-interval',
          '20ms',
          '-d',
          `{"generate":{"request_id":"{{newUUID}}",${prompt('{{randomInt 1 1000}}')}}}`,
          address,
        ],
      },
      {
        // Memory sizing: every slot at the longest generation the settings allow.
        name: 'long-generations',
        description: `Generate, ${maxActive} workers, ${maxActive} calls of ${longTokens} new tokens each (ignore_eos): every slot at the longest allowed generation`,
        args: [
          '--call',
          'llm.v1.TextGeneration.Generate',
          '-c',
          String(maxActive),
          '-n',
          String(maxActive),
          '-t',
          '1800s',
          '--count-errors',
          '-d',
          `{"request_id":"{{.UUID}}","text":"Chapter {{.RequestNumber}}. It was a dark and stormy night;","stopping":{"max_new_tokens":${longTokens},"ignore_eos":true}}`,
          address,
        ],
      },
    ];
    const overloadS = quick ? 15 : 60;
    const overloadWorkers = 4 * (maxActive + maxQueued);
    const overloadArgs = [
      '--call',
      'llm.v1.TextGeneration.Generate',
      '-c',
      String(overloadWorkers),
      '--connections',
      '4',
      '-z',
      `${overloadS}s`,
      '--duration-stop',
      'wait',
      '-t',
      '300s',
      '--count-errors',
      '-d',
      unaryData,
      address,
    ];
    const results: ScenarioResult[] = [];
    for (let i = 0; i < (soakOnly ? 0 : scenarios.length); i++) {
      const scenario = scenarios[i]!;
      if (scenario.name === 'bidi-multiplexed') {
        // Offered load relative to what the unary scenario measured the capacity to be.
        const capacityRps = results.find((r) => r.name === 'unary')!.ghz!.rps;
        const offeredRps = Math.max(2, Math.ceil(8 * capacityRps));
        scenarios.push(
          {
            name: 'overload',
            description: `Generate at ${offeredRps} calls/s offered (8× the ${capacityRps} calls/s the unary scenario served), ${overloadWorkers} workers, ${overloadS} s`,
            args: ['-r', String(offeredRps), ...overloadArgs],
          },
          {
            name: 'overload-storm',
            description: `Generate with no rate limit: ${overloadWorkers} workers resend the moment they are refused, ${overloadS} s (ghz shares this machine's cores with the server)`,
            args: overloadArgs,
          },
        );
      }
      log(`${scenario.name}: ${scenario.description}`);
      const startRss = rss.read();
      const fromMs = rss.now();
      const before = await scrape(metricsPort);
      const started = performance.now();
      const summary = await ghz(ghzBinary, scenario.args);
      const wallS = (performance.now() - started) / 1000;
      const after = await scrape(metricsPort);
      results.push({
        name: scenario.name,
        description: scenario.description,
        ghz: summary,
        server: serverView(before, after, wallS),
        rssMiB: { start: round1(startRss), peak: round1(rss.peakBetween(fromMs, rss.now())), end: round1(rss.read()) },
      });
      log(
        `  ${summary.count} calls, ${summary.rps} calls/s, p50 ${summary.latencyMs.p50} ms, p99 ${summary.latencyMs.p99} ms, ${JSON.stringify(summary.statusCodes)}`,
      );
      await waitIdle(metricsPort);
    }

    // About 1.3 × (slots + queue) generations in flight on average: some are shed, as in production.
    const soakWorkers = maxActive + Math.ceil(maxQueued / 2);
    log(`soak: ${soakS} s of bidi calls with random cancels, disconnects and deadlines`);
    const soakStartRss = rss.read();
    const soakFromMs = rss.now();
    const before = await scrape(metricsPort);
    const cacheSampler = cachesMode ? new CacheSampler(metricsPort, rss) : undefined;
    cacheSampler?.start(2000);
    const soak = await runSoak({
      address,
      durationMs: soakS * 1000,
      workers: soakWorkers,
      seed: 7,
      maxNewTokensMax: 96,
      ...(killEveryS > 0 ? { replicaKills: { everyMs: killEveryS * 1000, kill: replicaKiller(server.pid!) } } : {}),
      ...(cachesMode ? { variedDocuments: variedDocuments() } : {}),
    });
    await cacheSampler?.stop();
    const idle = await waitIdle(metricsPort);
    const after = await scrape(metricsPort);
    const soakEndRss = rss.read();
    results.push({
      name: 'soak',
      description: `${soakS} s, ${soakWorkers} concurrent clients: bidi calls of 1–4 generations (30% with an in-band cancel, 23% cut by a client disconnect), server streams cut mid-way, unary calls with 0.2–4 s deadlines${killEveryS > 0 ? `; a model replica process SIGKILLed every ${killEveryS} s` : ''}`,
      soak,
      replicas: {
        kills: soak.replicaKills.length,
        events: Object.fromEntries(
          ['died', 'wedged', 'restarted', 'restart-failed'].map((e) => [
            e,
            total(after, 'app_llm_replica_events_total', { app_llm_replica_event: e }) -
              total(before, 'app_llm_replica_events_total', { app_llm_replica_event: e }),
          ]),
        ),
        upAtEnd: total(after, 'app_llm_replicas_up'),
      },
      server: serverView(before, after, soak.durationMs / 1000),
      rssMiB: {
        start: round1(soakStartRss),
        peak: round1(rss.peakBetween(soakFromMs, rss.now())),
        end: round1(soakEndRss),
      },
    });
    log(
      `  ${JSON.stringify(soak.generations)}; replica kills: ${soak.replicaKills.length}; unexpected: ${soak.unexpected.length}`,
    );

    const healthAfter = await client.health('');
    const probeAfter = await client.generate({ ...probe, request_id: 'probe-after' });
    rss.stop();
    const report = {
      date: new Date().toISOString(),
      machine: { cpus: cpus().length, cpuModel: cpus()[0]?.model ?? 'unknown', node: process.version },
      server: { settings: config, model: modelDir.split('/').pop() },
      results,
      after: {
        idle,
        health: healthAfter,
        probeIdentical: probeAfter.text === probeBefore.text,
        rssMiB: {
          idleAtStart: round1(rssIdleStartMiB),
          runPeak: round1(Math.max(...rss.samples.map((s) => s.rssMiB))),
          end: round1(rss.read()),
        },
      },
      rssTimelineMiB: rss.samples.filter((_, i) => i % 8 === 0),
      ...(cacheSampler !== undefined ? { caches: cacheSampler.summary() } : {}),
    };
    const base = cachesMode ? 'cache-soak' : soakOnly ? 'soak' : 'load';
    mkdirSync(outDir, { recursive: true });
    writeFileSync(join(outDir, `${base}.json`), `${JSON.stringify(report, null, 2)}\n`);
    writeFileSync(join(outDir, `${base}.md`), markdown(report));
    log(`wrote ${join(outDir, `${base}.json`)} and ${base}.md`);
    const ok =
      (report.caches === undefined || report.caches.usageWithinBound) &&
      soak.unexpected.length === 0 &&
      healthAfter === 'SERVING' &&
      report.after.probeIdentical &&
      idle &&
      server.exitCode === null;
    if (!ok) {
      log(
        `FAILED: unexpected=${JSON.stringify(soak.unexpected.slice(0, 10))} health=${healthAfter} probeIdentical=${report.after.probeIdentical} idle=${idle}`,
      );
      process.exitCode = 1;
    }
  } finally {
    client.close();
    server.kill('SIGTERM');
    await serverExit;
  }
}

function round1(x: number): number {
  return Math.round(x * 10) / 10;
}

// ---------- caches (issue 34) ----------

/** The bench prompts' texts: the varied soak's shared document heads. */
function variedDocuments(): string[] {
  return ['code-editing', 'summarization', 'document-qa'].flatMap((name) =>
    (JSON.parse(readFileSync(join(ROOT, `bench/prompts/${name}.json`), 'utf8')) as { prompt: string }[]).map(
      (p) => p.prompt,
    ),
  );
}

interface CacheSample {
  readonly tMs: number;
  readonly usage: number;
  readonly limit: number;
  readonly entries: number;
  readonly evictions: number;
  readonly hitTokens: number;
  readonly poolTokens: number;
  readonly poolScopes: number;
  readonly poolEvictedTokens: number;
  readonly rssMiB: number;
}

interface CacheSummary {
  readonly samples: readonly CacheSample[];
  readonly limitMiB: number;
  readonly maxUsageMiB: number;
  readonly usageWithinBound: boolean;
  readonly evictions: number;
  readonly hitTokens: number;
  readonly maxPoolTokens: number;
  readonly maxPoolScopes: number;
  readonly poolEvictedTokens: number;
  readonly rssByMinuteMiB: readonly number[];
}

/** Scrapes the cache gauges (app_llm_prefix_cache_*, app_llm_draft_pool_*) every few seconds. */
class CacheSampler {
  readonly samples: CacheSample[] = [];
  private timer: NodeJS.Timeout | undefined;
  private inFlight: Promise<void> = Promise.resolve();
  private readonly started = performance.now();

  constructor(
    private readonly metricsPort: number,
    private readonly rss: RssSampler,
  ) {}

  start(everyMs: number): void {
    this.timer = setInterval(() => {
      this.inFlight = this.sample().catch(() => {});
    }, everyMs);
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    await this.inFlight;
    await this.sample().catch(() => {}); // one failed scrape must not lose the run's report
  }

  private async sample(): Promise<void> {
    const s = await scrape(this.metricsPort);
    // The exporter adds unit suffixes (_bytes, _total): match by prefix.
    const value = (prefix: string) =>
      total(
        s.filter((x) => x.name.startsWith(prefix)),
        s.find((x) => x.name.startsWith(prefix))?.name ?? '',
      );
    this.samples.push({
      tMs: Math.round(performance.now() - this.started),
      usage: value('app_llm_prefix_cache_usage'),
      limit: value('app_llm_prefix_cache_limit'),
      entries: value('app_llm_prefix_cache_entries'),
      evictions: value('app_llm_prefix_cache_evictions'),
      hitTokens: value('app_llm_prefix_cache_hit_tokens'),
      poolTokens: value('app_llm_draft_pool_tokens'),
      poolScopes: value('app_llm_draft_pool_scopes'),
      poolEvictedTokens: value('app_llm_draft_pool_evicted_tokens'),
      rssMiB: round1(this.rss.read()),
    });
  }

  summary(): CacheSummary {
    if (this.samples.length === 0) throw new Error('no scrape of the cache metrics succeeded');
    const last = this.samples[this.samples.length - 1]!;
    const mib = (bytes: number) => round1(bytes / 2 ** 20);
    const byMinute: number[] = [];
    for (const x of this.samples) {
      const m = Math.floor(x.tMs / 60_000);
      byMinute[m] = Math.max(byMinute[m] ?? 0, x.rssMiB);
    }
    return {
      samples: this.samples,
      limitMiB: mib(last.limit),
      maxUsageMiB: mib(Math.max(...this.samples.map((x) => x.usage))),
      usageWithinBound: last.limit > 0 && this.samples.every((x) => x.usage <= x.limit),
      evictions: last.evictions,
      hitTokens: last.hitTokens,
      maxPoolTokens: Math.max(...this.samples.map((x) => x.poolTokens)),
      maxPoolScopes: Math.max(...this.samples.map((x) => x.poolScopes)),
      poolEvictedTokens: last.poolEvictedTokens,
      rssByMinuteMiB: byMinute.map((m) => m ?? 0),
    };
  }
}

/** Waits until no generation runs or waits (no leaked slots); false after 60 s. */
async function waitIdle(metricsPort: number): Promise<boolean> {
  const until = performance.now() + 60_000;
  while (performance.now() < until) {
    const s = await scrape(metricsPort);
    if (total(s, 'app_llm_requests_running') === 0 && total(s, 'app_llm_requests_waiting') === 0) return true;
    await sleep(250);
  }
  return false;
}

// ---------- report ----------

function fmt(x: number, digits = 0): string {
  return Number.isFinite(x) ? x.toFixed(digits) : '–';
}

/** A histogram quantile in ms; "≥ top" when it lies in the overflow bucket. */
function fmtQuantileMs(h: HistogramDelta, q: 'p50S' | 'p99S'): string {
  return h[q] >= h.topBoundS ? `≥ ${fmt(h.topBoundS * 1000)}` : fmt(h[q] * 1000);
}

function markdown(report: {
  date: string;
  machine: { cpus: number; cpuModel: string; node: string };
  server: { settings: Record<string, string> };
  results: ScenarioResult[];
  after: {
    idle: boolean;
    health: string;
    probeIdentical: boolean;
    rssMiB: { idleAtStart: number; runPeak: number; end: number };
  };
  caches?: CacheSummary;
}): string {
  const s = report.server.settings;
  const lines: string[] = [
    '# Load and soak report',
    '',
    `${report.date} · ${report.machine.cpus} × ${report.machine.cpuModel} · Node ${report.machine.node} · one \`anpd serve\` process on loopback with deploy/k8s/base/configmap.yaml: ${s['ANPD_MAX_ACTIVE_SEQUENCES']} active sequences, queue ${s['ANPD_MAX_QUEUED_REQUESTS']}, ${s['ANPD_THREADS']} ORT threads, SmolLM2-135M-Instruct (4-bit), speculation on (server default). Produced by \`npm run load\` (bench/load.ts); raw numbers in the .json of the same name.`,
    '',
    '## ghz scenarios (client view: whole-RPC latency)',
    '',
    '| scenario | calls | calls/s | p50 ms | p90 ms | p99 ms | status codes |',
    '| --- | ---: | ---: | ---: | ---: | ---: | --- |',
  ];
  for (const r of report.results.filter((x) => x.ghz)) {
    const g = r.ghz!;
    lines.push(
      `| ${r.name} | ${g.count} | ${fmt(g.rps, 2)} | ${fmt(g.latencyMs.p50)} | ${fmt(g.latencyMs.p90)} | ${fmt(g.latencyMs.p99)} | ${Object.entries(
        g.statusCodes,
      )
        .map(([k, v]) => `${k} ${v}`)
        .join(', ')} |`,
    );
  }
  lines.push('', '## Server view (its Prometheus metrics, deltas over each scenario)', '');
  lines.push(
    '| scenario | generations | output tok/s | TTFT p50 ms | TTFT p99 ms | TPOT mean ms | queue mean ms | outcomes |',
  );
  lines.push('| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |');
  for (const r of report.results) {
    const v = r.server;
    lines.push(
      `| ${r.name} | ${v.requests} | ${fmt(v.outputTokensPerS, 1)} | ${fmtQuantileMs(v.timeToFirstToken, 'p50S')} | ${fmtQuantileMs(v.timeToFirstToken, 'p99S')} | ${fmt(v.timePerOutputToken.meanS * 1000, 1)} | ${fmt(v.queueDuration.meanS * 1000)} | ${Object.entries(
        v.outcomes,
      )
        .map(([k, n]) => `${k} ${n}`)
        .join(', ')} |`,
    );
  }
  const unary = report.results.find((r) => r.name === 'unary');
  for (const scenario of report.results.filter((r) => r.name.startsWith('overload'))) {
    if (unary?.ghz === undefined || scenario.ghz === undefined) continue;
    const overload = scenario.ghz;
    lines.push('', `## ${scenario.name}: ${scenario.description}`, '');
    lines.push(
      `- Decode speed of the generations that ran: TPOT mean ${fmt(scenario.server.timePerOutputToken.meanS * 1000, 1)} ms vs ${fmt(unary.server.timePerOutputToken.meanS * 1000, 1)} ms at capacity; ${fmt(scenario.server.outputTokensPerS, 1)} vs ${fmt(unary.server.outputTokensPerS, 1)} output tok/s.`,
    );
    const ok = overload.latencyByStatusMs['OK'];
    const shed = overload.latencyByStatusMs['ResourceExhausted'];
    lines.push(
      `- At capacity (unary scenario): p50 ${fmt(unary.ghz.latencyMs.p50)} ms, p99 ${fmt(unary.ghz.latencyMs.p99)} ms.`,
    );
    if (ok)
      lines.push(
        `- Over capacity, accepted calls (${ok.count}): p50 ${fmt(ok.p50)} ms, p99 ${fmt(ok.p99)} ms — ${fmt(ok.p50 / unary.ghz.latencyMs.p50, 2)}× the at-capacity p50 (the bounded queue allows at most ${fmt(1 + Number(s['ANPD_MAX_QUEUED_REQUESTS']) / Number(s['ANPD_MAX_ACTIVE_SEQUENCES']), 1)}×).`,
      );
    if (shed)
      lines.push(
        `- Shed calls (${shed.count}, RESOURCE_EXHAUSTED): p50 ${fmt(shed.p50, 2)} ms, p99 ${fmt(shed.p99, 2)} ms.`,
      );
    const other = Object.keys(overload.statusCodes).filter((c) => c !== 'OK' && c !== 'ResourceExhausted');
    lines.push(`- Other status codes: ${other.length === 0 ? 'none' : other.join(', ')}.`);
  }
  const soak = report.results.find((r) => r.name === 'soak');
  if (soak?.soak) {
    const k = soak.soak;
    lines.push('', '## Soak', '');
    lines.push(
      `- ${fmt(k.durationMs / 1000)} s: ${k.calls.bidi} bidi calls (${k.calls.bidiDisconnected} cut by a client disconnect), ${k.calls.streamDisconnected} server streams cut mid-way, ${k.calls.unaryWithDeadline} unary calls with deadlines.`,
    );
    lines.push(
      `- Generations: ${k.generations.sent} sent, ${k.generations.completed} completed, ${k.generations.cancelledInBand} cancelled in-band, ${k.generations.abandoned} abandoned by a disconnect, ${k.generations.shed} shed (RESOURCE_EXHAUSTED), ${k.generations.deadlineExceeded} past their deadline; ${k.outputTokens} output tokens.`,
    );
    if (soak.replicas !== undefined && soak.replicas.kills > 0) {
      const r = soak.replicas;
      lines.push(
        `- Replica kills (SIGKILL of a model replica process): ${r.kills}; the server counted ${r.events['died']} deaths and ${r.events['restarted']} restarts (${r.events['restart-failed']} failed starts, ${r.events['wedged']} wedges); replicas up at the end: ${r.upAtEnd}. Generations on a killed replica ended UNAVAILABLE (REPLICA_FAILED): ${k.generations.replicaFailed}.`,
      );
    }
    lines.push(
      `- Unexpected errors or missing / duplicate terminal messages: ${k.unexpected.length === 0 ? 'none' : k.unexpected.join('; ')}.`,
    );
    lines.push(
      `- Server RSS: ${fmt(soak.rssMiB.start)} MiB at the start of the soak, peak ${fmt(soak.rssMiB.peak)} MiB, ${fmt(soak.rssMiB.end)} MiB at the end.`,
    );
  }
  if (report.caches !== undefined) {
    const c = report.caches;
    lines.push('', '## Caches (issue 34: varied prompts under many cache salts)', '');
    lines.push(
      `- Prefix cache: bound ${fmt(c.limitMiB, 1)} MiB; held at most ${fmt(c.maxUsageMiB, 1)} MiB over ${c.samples.length} scrapes (within the bound at every one: ${c.usageWithinBound ? 'yes' : 'NO'}); ${c.evictions} entries evicted; ${c.hitTokens} prompt tokens served from it.`,
    );
    lines.push(
      `- Draft pools: at most ${c.maxPoolTokens} tokens in ${c.maxPoolScopes} scopes; ${c.poolEvictedTokens} tokens evicted.`,
    );
    lines.push(
      `- Server RSS by minute of the soak (MiB, max in each): ${c.rssByMinuteMiB.map((m) => fmt(m, 0)).join(', ')}.`,
    );
  }
  lines.push('', '## After the run', '');
  lines.push(
    `- No generation running or waiting (no leaked slots): ${report.after.idle ? 'yes' : 'NO'}; health: ${report.after.health}.`,
  );
  lines.push(
    `- A greedy probe generation is identical before and after the whole run: ${report.after.probeIdentical ? 'yes' : 'NO'}.`,
  );
  lines.push(
    `- Server RSS: ${fmt(report.after.rssMiB.idleAtStart)} MiB idle at start, ${fmt(report.after.rssMiB.runPeak)} MiB peak over the run, ${fmt(report.after.rssMiB.end)} MiB at the end.`,
  );
  lines.push('');
  return lines.join('\n');
}

await main();
