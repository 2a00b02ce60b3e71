/**
 * Where one plain decode step's time goes: ONNX Runtime's own profiler (per-operator kernel time)
 * over the decode steps of one prompt, next to the wall time of those steps in Node; and, when
 * the peers are installed (npm run bench:peers), llama.cpp's per-token time on the same GGUF at
 * the same context depth (llama-bench -d). 2 threads, like bench:peers.
 *
 *   npm run build && node dist/bench/decode-profile.js [--category summarization --tokens 64]
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { createEngine } from '../src/engine/create-engine.js';
import { NO_SPECULATION } from '../src/contract.js';
import { projectRoot } from '../src/paths.js';
import { ensureDefaultGguf, ensureDefaultModel } from '../src/registry/model-cache.js';
import { ort } from '../src/runtime/ort-session.js';

interface ProfileEvent {
  cat: string;
  name: string;
  ts: number;
  dur: number;
  args?: { op_name?: string };
}

const THREADS = 2;

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      category: { type: 'string', default: 'summarization' },
      prompt: { type: 'string', default: '0' },
      tokens: { type: 'string', default: '64' },
      out: { type: 'string', default: 'bench/results/decode-profile.json' },
    },
  });
  const root = projectRoot();
  const tokens = Number(values.tokens);
  const prompt = (
    JSON.parse(readFileSync(join(root, 'bench', 'prompts', `${values.category}.json`), 'utf8')) as { prompt: string }[]
  )[Number(values.prompt)]!.prompt;
  const profDir = join(root, '.cache', 'tmp', 'ort-profile');
  rmSync(profDir, { recursive: true, force: true });
  mkdirSync(profDir, { recursive: true });

  // Turn ORT's profiler on for the session the engine creates.
  const sessions: ort.InferenceSession[] = [];
  const create = ort.InferenceSession.create.bind(ort.InferenceSession) as (
    path: string,
    options: ort.InferenceSession.SessionOptions,
  ) => Promise<ort.InferenceSession>;
  (ort.InferenceSession as unknown as { create: typeof create }).create = async (
    path: string,
    options: ort.InferenceSession.SessionOptions,
  ) => {
    const s = await create(path, { ...options, enableProfiling: true, profileFilePrefix: join(profDir, 'ort') });
    sessions.push(s);
    return s;
  };
  // onnxruntime-node's run, so that ORT's profiler sees every kernel (the native runner's session
  // is not an onnxruntime-node one; its attention kernel is our own).
  const engine = await createEngine(
    await ensureDefaultModel(),
    { executionProvider: 'cpu', intraOpThreads: THREADS, kvCapacity: 4096, nativeRun: 'off' },
    { forwardCost: { mode: 'defer' } },
  );
  // Wall time of each forward as Node sees it (ORT run + binding copies + our JS around it).
  const forwards: { rows: number; ms: number }[] = [];
  const seqProto = Object.getPrototypeOf(engine.model.createSequence()) as {
    forward: (t: readonly number[], r: number) => Promise<Float32Array>;
  };
  const forward = seqProto.forward;
  seqProto.forward = async function (this: unknown, t: readonly number[], r: number) {
    const t0 = performance.now();
    const out = await forward.call(this, t, r);
    forwards.push({ rows: t.length, ms: performance.now() - t0 });
    return out;
  };
  let final;
  const t0 = performance.now();
  for await (const e of engine.generate({
    prompt: { kind: 'text', text: prompt, chat: true },
    maxNewTokens: tokens,
    ignoreEos: true,
    speculation: NO_SPECULATION,
  })) {
    if (e.type === 'final') final = e;
  }
  const wallMs = performance.now() - t0;
  sessions[0]!.endProfiling();
  // onnxruntime-node does not return the file name: it is the one file under profDir (or the cwd).
  const candidates = [profDir, root].flatMap((d) =>
    readdirSync(d)
      .filter((f) => f.startsWith('ort') && f.endsWith('.json'))
      .map((f) => join(d, f)),
  );
  const profileFile = candidates.sort((a, b) => statSync(b).mtimeMs - statSync(a).mtimeMs)[0];
  if (profileFile === undefined) throw new Error(`no ORT profile file under ${profDir}`);
  await engine.dispose();
  const promptTokens = final!.promptTokens;

  // The decode steps are the 1-token forwards; the prompt forward is the first (long) run.
  const events = JSON.parse(readFileSync(profileFile, 'utf8')) as ProfileEvent[];
  const runs = events.filter((e) => e.cat === 'Session' && e.name === 'model_run').sort((a, b) => a.ts - b.ts);
  const decodeRuns = runs.slice(-tokens + 1); // the last tokens − 1 runs are steady 1-token steps
  const inDecode = (ts: number) => decodeRuns.some((r) => ts >= r.ts && ts <= r.ts + r.dur);
  const byOp = new Map<string, number>();
  for (const e of events) {
    if (e.cat !== 'Node' || !e.name.endsWith('_kernel_time') || !inDecode(e.ts)) continue;
    const op = e.args?.op_name ?? 'unknown';
    byOp.set(op, (byOp.get(op) ?? 0) + e.dur);
  }
  const steps = decodeRuns.length;
  const runMs = decodeRuns.reduce((a, r) => a + r.dur, 0) / 1000 / steps;
  const kernelsMs = [...byOp.values()].reduce((a, b) => a + b, 0) / 1000 / steps;
  const decodeForwards = forwards.slice(-tokens + 1);
  const nodeForwardMs = decodeForwards.reduce((a, f) => a + f.ms, 0) / decodeForwards.length;
  const stepMs = (final!.totalMs - final!.firstTokenMs) / (tokens - 1);
  const ops = [...byOp]
    .sort((a, b) => b[1] - a[1])
    .map(([op, us]) => ({
      op,
      msPerStep: +(us / 1000 / steps).toFixed(3),
      share: +(us / 1000 / steps / stepMs).toFixed(3),
    }));

  // llama.cpp on the same weights at the same depth, if built by bench/peers/setup.sh.
  const llamaBench = join(root, '.cache', 'peers', 'llama.cpp-build', 'bin', 'llama-bench');
  let llama: unknown = null;
  if (existsSync(llamaBench)) {
    const gguf = await ensureDefaultGguf();
    const depth = promptTokens + tokens / 2;
    const args = [
      '-m',
      gguf,
      '-t',
      String(THREADS),
      '-p',
      '0',
      '-n',
      String(tokens),
      '-d',
      `0,${depth}`,
      '-r',
      '3',
      '-o',
      'json',
    ];
    try {
      const rows = JSON.parse(execFileSync(llamaBench, args, { stdio: ['ignore', 'pipe', 'ignore'] }).toString()) as {
        n_depth: number;
        avg_ts: number;
        stddev_ts: number;
        build_commit: string;
      }[];
      llama = {
        command: `llama-bench ${args.join(' ').replace(gguf, 'GGUF')}`,
        rows: rows.map((r) => ({
          depth: r.n_depth,
          tokPerS: +r.avg_ts.toFixed(1),
          msPerToken: +(1000 / r.avg_ts).toFixed(2),
          stddevTokPerS: +r.stddev_ts.toFixed(1),
          build: r.build_commit,
        })),
      };
    } catch (e) {
      llama = { error: (e as Error).message.slice(0, 500) };
    }
  }
  const report = {
    benchmark: 'decode-profile',
    date: new Date().toISOString(),
    prompt: `${values.category}[${values.prompt}]`,
    promptTokens,
    decodeSteps: steps,
    threads: THREADS,
    ours: {
      wallMs: +wallMs.toFixed(0),
      stepMs: +stepMs.toFixed(2),
      nodeForwardMs: +nodeForwardMs.toFixed(2),
      ortRunMs: +runMs.toFixed(2),
      ortKernelsMs: +kernelsMs.toFixed(2),
      outsideOrtMs: +(stepMs - runMs).toFixed(2),
      ops,
    },
    llamaCpp: llama,
  };
  mkdirSync(join(root, 'bench', 'results'), { recursive: true });
  writeFileSync(resolve(root, values.out!), `${JSON.stringify(report, null, 2)}\n`);
  process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
}

main().catch((e: unknown) => {
  process.stderr.write(`${(e as Error).stack ?? String(e)}\n`);
  process.exitCode = 1;
});
