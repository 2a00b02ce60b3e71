/**
 * `npm run bench:cold-start`: time from process start to grpc.health.v1 SERVING for `anpd serve`
 * with the converted model already cached, as a new replica sees it.
 *
 * Each run spawns a server on a free loopback port, connects as soon as the port accepts, asks
 * health until SERVING, then times a first greedy Generate (16 tokens, adaptive speculation: it
 * waits for the forward-cost table if the server measures it after SERVING) and the SIGTERM exit.
 * The server's own `started` log line gives the breakdown (milestones in ms since its process
 * started; `model loaded` loadMs for builds before it). Variants run interleaved, rotating the
 * order each round, so machine load drifts over all of them alike; medians are reported.
 *
 * Variants:
 *   after            this build, forward-cost table in the cache (a restarted replica)
 *   after-cold-table this build, empty cache dir besides the model (a new replica: the table is
 *                    measured after SERVING)
 *   before           --baseline DIST_MAIN_JS: another build (e.g. the commit before), for ratios;
 *                    --baseline NAME=DIST_MAIN_JS (repeatable) names it
 *   deno             --deno: this build under Deno 2 (node_modules/.bin/deno), table cached
 *
 *   npm run bench:cold-start -- --runs 7 --baseline /tmp/base/dist/src/cli/main.js --deno
 * Writes bench/results/cold-start.json (--out to change).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { availableParallelism, cpus, loadavg, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import { DEFAULT_GRAPH_OPTIONS } from '../src/convert/decoder-graph.js';
import { cacheDir, projectRoot } from '../src/paths.js';
import { ensureDefaultModel } from '../src/registry/model-cache.js';
import { DEFAULT_MODEL } from '../src/registry/model-registry.js';
import { TextGenerationClient } from '../src/transport/grpc/client.js';
import { freePort } from '../tools/loopback.js';

const ROOT = projectRoot();
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
/** Poll step for the port and health: small against the ~1–3 s measured. */
const POLL_MS = 5;
/** A start that takes longer than this is a failure, not a sample. */
const START_TIMEOUT_MS = 60_000;

interface Variant {
  readonly name: string;
  readonly command: string;
  readonly args: readonly string[];
  /** Fresh ANPD_CACHE_DIR per run (the model comes from ANPD_MODEL_DIR): no cached forward-cost table. */
  readonly freshCache: boolean;
}

interface Run {
  readonly variant: string;
  readonly round: number;
  /** Spawn → first SERVING answer, as measured by this process. */
  readonly servingMs: number;
  /** Spawn → the port accepts a TCP connection. */
  readonly portOpenMs: number;
  /** A 16-token greedy Generate sent right after SERVING: its latency. */
  readonly firstGenerateMs: number;
  /** SIGTERM → exit (drain with nothing in flight; a pending table measurement finishes first). */
  readonly exitMs: number;
  /** The server's `started` milestones (ms since its process started), if it logs them. */
  readonly milestones: Record<string, number> | undefined;
  /** `model loaded` loadMs of builds that log it (model load + calibration before this change). */
  readonly loadMs: number | undefined;
}

function portOpen(port: number): Promise<boolean> {
  return new Promise((resolveOpen) => {
    const socket = connect({ host: '127.0.0.1', port });
    socket.once('connect', () => {
      socket.destroy();
      resolveOpen(true);
    });
    socket.once('error', () => resolveOpen(false));
  });
}

async function runOnce(variant: Variant, round: number, modelDir: string): Promise<Run> {
  const port = await freePort();
  const metricsPort = await freePort();
  const scratch = variant.freshCache ? mkdtempSync(join(tmpdir(), 'anpd-cold-')) : undefined;
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    ANPD_HOST: '127.0.0.1',
    ANPD_PORT: String(port),
    ANPD_METRICS_PORT: String(metricsPort),
    ANPD_METRICS_HOST: '127.0.0.1',
    ANPD_MODEL_DIR: modelDir,
    ANPD_MODEL_NAME: DEFAULT_MODEL.name.toLowerCase(),
    ...(scratch !== undefined ? { ANPD_CACHE_DIR: scratch } : {}),
  };
  const logs: string[] = [];
  const t0 = performance.now();
  const child: ChildProcess = spawn(variant.command, [...variant.args, 'serve'], {
    env,
    stdio: ['ignore', 'ignore', 'pipe'],
    cwd: ROOT,
  });
  createInterface({ input: child.stderr! }).on('line', (line) => logs.push(line));
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  let client: TextGenerationClient | undefined;
  try {
    let portOpenMs = 0;
    for (;;) {
      if (child.exitCode !== null)
        throw new Error(`${variant.name}: server exited with ${child.exitCode}:\n${logs.join('\n')}`);
      if (performance.now() - t0 > START_TIMEOUT_MS)
        throw new Error(`${variant.name}: not listening after ${START_TIMEOUT_MS} ms`);
      if (await portOpen(port)) break;
      await sleep(POLL_MS);
    }
    portOpenMs = performance.now() - t0;
    client = new TextGenerationClient(`127.0.0.1:${port}`);
    for (;;) {
      const status = await client.health('', { deadlineMs: 2000 }).catch(() => 'ERROR');
      if (status === 'SERVING') break;
      if (performance.now() - t0 > START_TIMEOUT_MS)
        throw new Error(`${variant.name}: not SERVING after ${START_TIMEOUT_MS} ms`);
      await sleep(POLL_MS);
    }
    const servingMs = performance.now() - t0;
    const g0 = performance.now();
    await client.generate(
      { text: 'List the planets of the solar system.', stopping: { max_new_tokens: 16, ignore_eos: true } },
      { deadlineMs: 60_000 },
    );
    const firstGenerateMs = performance.now() - g0;
    const k0 = performance.now();
    child.kill('SIGTERM');
    const code = await exited;
    const exitMs = performance.now() - k0;
    if (code !== 0) throw new Error(`${variant.name}: exit code ${code}`);
    const record = (msg: string) =>
      logs
        .map((l) => {
          try {
            return JSON.parse(l) as Record<string, unknown>;
          } catch {
            return undefined;
          }
        })
        .find((r) => r?.['msg'] === msg);
    const started = record('started')?.['startupMs'] as Record<string, number> | undefined;
    const loadMs = record('model loaded')?.['loadMs'] as number | undefined;
    return {
      variant: variant.name,
      round,
      servingMs,
      portOpenMs,
      firstGenerateMs,
      exitMs,
      milestones: started,
      loadMs,
    };
  } finally {
    client?.close();
    if (child.exitCode === null) child.kill('SIGKILL');
    if (scratch !== undefined) rmSync(scratch, { recursive: true, force: true });
  }
}

const median = (values: readonly number[]): number => {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
};
const round1 = (x: number) => Math.round(x * 10) / 10;

function summarize(runs: readonly Run[]) {
  const milestoneNames = [...new Set(runs.flatMap((r) => Object.keys(r.milestones ?? {})))];
  const milestones: Record<string, number> = {};
  for (const name of milestoneNames) {
    const values = runs.flatMap((r) => (r.milestones?.[name] !== undefined ? [r.milestones[name]] : []));
    if (values.length > 0) milestones[name] = median(values);
  }
  const loads = runs.flatMap((r) => (r.loadMs !== undefined ? [r.loadMs] : []));
  return {
    runs: runs.length,
    servingMsMedian: round1(median(runs.map((r) => r.servingMs))),
    servingMsMin: round1(Math.min(...runs.map((r) => r.servingMs))),
    servingMsMax: round1(Math.max(...runs.map((r) => r.servingMs))),
    portOpenMsMedian: round1(median(runs.map((r) => r.portOpenMs))),
    firstGenerateMsMedian: round1(median(runs.map((r) => r.firstGenerateMs))),
    exitMsMedian: round1(median(runs.map((r) => r.exitMs))),
    ...(Object.keys(milestones).length > 0
      ? { milestonesMsMedian: Object.fromEntries(Object.entries(milestones).sort((a, b) => a[1] - b[1])) }
      : {}),
    ...(loads.length > 0 ? { modelLoadedLogLoadMsMedian: median(loads) } : {}),
  };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      runs: { type: 'string', default: '5' },
      baseline: { type: 'string', multiple: true },
      deno: { type: 'boolean', default: false },
      out: { type: 'string', default: join(ROOT, 'bench/results/cold-start.json') },
    },
  });
  const rounds = Number(values.runs);
  const modelDir = await ensureDefaultModel(DEFAULT_GRAPH_OPTIONS);
  const main = join(ROOT, 'dist/src/cli/main.js');
  const variants: Variant[] = [
    { name: 'after', command: process.execPath, args: [main], freshCache: false },
    { name: 'after-cold-table', command: process.execPath, args: [main], freshCache: true },
  ];
  for (const baseline of values.baseline ?? []) {
    const [name, path] = baseline.includes('=') ? (baseline.split('=', 2) as [string, string]) : ['before', baseline];
    variants.push({ name, command: process.execPath, args: [resolve(path)], freshCache: false });
  }
  if (values.deno)
    variants.push({
      name: 'deno',
      command: join(ROOT, 'node_modules/.bin/deno'),
      args: ['run', '-A', main],
      freshCache: false,
    });
  // One warm-up start per variant (page cache, and the table cache for 'after'); not recorded.
  process.stderr.write(
    `cold start: ${rounds} rounds × ${variants.map((v) => v.name).join(', ')} (cache ${cacheDir()})\n`,
  );
  for (const v of variants) await runOnce(v, -1, modelDir);
  const runs: Run[] = [];
  const loadBefore = loadavg()[0]!;
  for (let r = 0; r < rounds; r++) {
    for (let i = 0; i < variants.length; i++) {
      const v = variants[(i + r) % variants.length]!;
      const run = await runOnce(v, r, modelDir);
      runs.push(run);
      process.stderr.write(
        `  round ${r} ${v.name.padEnd(16)} serving ${run.servingMs.toFixed(0)} ms, first generate ${run.firstGenerateMs.toFixed(0)} ms\n`,
      );
    }
  }
  const summary = Object.fromEntries(
    variants.map((v) => [v.name, summarize(runs.filter((r) => r.variant === v.name))]),
  );
  const after = summary['after']!.servingMsMedian;
  const before = summary['before']?.servingMsMedian;
  const result = {
    date: new Date().toISOString(),
    machine: {
      cpu: cpus()[0]?.model ?? 'unknown',
      cores: availableParallelism(),
      loadavg1mStart: loadBefore,
      loadavg1mEnd: loadavg()[0]!,
    },
    node: process.version,
    model: DEFAULT_MODEL.name,
    rounds,
    summary,
    ...(before !== undefined ? { ratioBeforeOverAfter: round1(before / after) } : {}),
    runs: runs.map((r) => ({
      ...r,
      servingMs: round1(r.servingMs),
      portOpenMs: round1(r.portOpenMs),
      firstGenerateMs: round1(r.firstGenerateMs),
      exitMs: round1(r.exitMs),
    })),
  };
  mkdirSync(dirname(values.out), { recursive: true });
  writeFileSync(values.out, `${JSON.stringify(result, null, 2)}\n`);
  process.stdout.write(
    `${JSON.stringify({ summary: Object.fromEntries(Object.entries(summary).map(([k, s]) => [k, s.servingMsMedian])), ratioBeforeOverAfter: result.ratioBeforeOverAfter })}\n`,
  );
}

main().catch((error: unknown) => {
  process.stderr.write(`${(error as Error).stack ?? String(error)}\n`);
  process.exitCode = 1;
});
