/**
 * Runtime benchmark on the default model (SmolLM2-135M-Instruct): conversion time and size, load
 * time (tokenizer + ORT session, no calibration), prefill and plain greedy-decode throughput
 * (speculation off), the cost of one forward over T new tokens relative to T = 1 (what a speculative
 * draft of T − 1 tokens costs per verify step), and peak RSS.
 *
 *   node dist/bench/runtime-bench.js [--variant nbits-fused|nbits-plain|f32-fused] [--all]
 *
 * One variant per process, so peak RSS is that variant's. Conversion is timed in a child process
 * (`--convert-only`), so the runtime's peak RSS is not inflated by the converter's buffers.
 * `--all` runs every variant in its own child process and prints one comparison table.
 * Prints markdown on stdout (progress on stderr) and writes bench/results/runtime-<variant>.json;
 * the default variant also goes to bench/results/runtime.json.
 *
 * The machine may be shared: each phase waits for an idle CPU, and a phase during which other
 * processes took > 5% of the CPU (/proc/stat) is measured again (3 attempts at most, then flagged).
 */
import { execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { availableParallelism, cpus, totalmem } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { conversionKey, convertGguf, isConverted, ONNX_FILE } from '../src/convert/convert-gguf.js';
import { DEFAULT_GRAPH_OPTIONS, type GraphOptions } from '../src/convert/decoder-graph.js';
import { createEngine } from '../src/engine/create-engine.js';
import type { Engine } from '../src/engine/engine.js';
import { NO_SPECULATION } from '../src/contract.js';
import { cacheDir, projectRoot } from '../src/paths.js';
import { ensureConverted, ensureDefaultGguf } from '../src/registry/model-cache.js';
import { DEFAULT_MODEL } from '../src/registry/model-registry.js';
import type { RuntimeOptions } from '../src/runtime/types.js';

// ---------------------------------------------------------------------------------------------
// Configuration

const VARIANTS = {
  'nbits-fused': { ...DEFAULT_GRAPH_OPTIONS, weights: 'nbits', norms: 'fused' },
  'nbits-plain': { ...DEFAULT_GRAPH_OPTIONS, weights: 'nbits', norms: 'plain' },
  'f32-fused': { ...DEFAULT_GRAPH_OPTIONS, weights: 'f32', norms: 'fused' },
} as const satisfies Record<string, GraphOptions>;
type Variant = keyof typeof VARIANTS;
const VARIANT_NAMES = Object.keys(VARIANTS) as Variant[];
const DEFAULT_VARIANT: Variant = 'nbits-fused';

const THREADS = cpus().length;
const KV_CAPACITY = 4096;

const PREFILL_TOKENS = 256;
const PREFILL_WARMUP = 1;
const PREFILL_RUNS = 7;

const DECODE_NEW_TOKENS = 128;
const DECODE_WARMUP = 1;
const DECODE_RUNS = 5;
const DECODE_PROMPT = 'Write a short story about a lighthouse keeper who finds a message in a bottle.';

const FORWARD_PAST = 200;
const FORWARD_TS = [1, 2, 3, 4, 8, 16] as const;
const FORWARD_WARMUP_ROUNDS = 3;
/** Measured rounds; a multiple of FORWARD_TS.length so every T sits at every position equally often. */
const FORWARD_ROUNDS = 36;

/** Fixed English text; repeated until there are enough tokens. */
const PARAGRAPH =
  'The river wound slowly through the valley, past fields of wheat and small stone houses whose chimneys ' +
  'sent thin ribbons of smoke into the morning air. Farmers walked along the narrow roads with their dogs, ' +
  'greeting one another by name, while children ran ahead toward the schoolhouse near the old bridge. ' +
  'In the market square, merchants arranged baskets of apples, bread, cheese and honey, and the baker ' +
  'argued cheerfully with the blacksmith about the weather, as they had done every morning for twenty years. ';

const RESULTS_DIR = join(projectRoot(), 'bench', 'results');
const SELF = fileURLToPath(import.meta.url);

// ---------------------------------------------------------------------------------------------
// Helpers

function log(message: string): void {
  process.stderr.write(`[runtime-bench] ${message}\n`);
}

function median(values: readonly number[]): number {
  const s = [...values].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

function quantile(values: readonly number[], q: number): number {
  const s = [...values].sort((a, b) => a - b);
  const pos = (s.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return s[lo]! + (s[hi]! - s[lo]!) * (pos - lo);
}

const round = (x: number, digits = 2): number => Number(x.toFixed(digits));

/** process.resourceUsage().maxRSS is in kilobytes (KiB); reported in MB (10^6 bytes) like the sizes. */
function peakRssMB(): number {
  return round((process.resourceUsage().maxRSS * 1024) / 1e6, 1);
}

// Other processes on this machine skew every number here, so each phase records how much CPU
// the rest of the machine used meanwhile (from /proc/stat, Linux only), and the benchmark waits
// for an idle machine before it starts.

interface CpuSnapshot {
  readonly busy: number;
  readonly total: number;
  readonly own: number;
  readonly wall: number;
}

/** USER_HZ: /proc/stat counts in 1/100 s on every mainstream Linux. */
const JIFFY_MS = 10;

function cpuSnapshot(): CpuSnapshot | null {
  try {
    const line = readFileSync('/proc/stat', 'utf8').split('\n')[0]!;
    const f = line.trim().split(/\s+/).slice(1).map(Number);
    // user nice system idle iowait irq softirq steal (guest time is already inside user)
    const total = f.slice(0, 8).reduce((a, b) => a + b, 0);
    const idle = (f[3] ?? 0) + (f[4] ?? 0);
    const u = process.cpuUsage();
    return { busy: total - idle, total, own: (u.user + u.system) / 1000, wall: performance.now() };
  } catch {
    return null;
  }
}

/** Share of the machine's CPU capacity used by other processes between two snapshots (0..1). */
function otherCpuShare(a: CpuSnapshot | null, b: CpuSnapshot | null): number | null {
  if (a === null || b === null) return null;
  const capacityMs = (b.total - a.total) * JIFFY_MS;
  if (capacityMs <= 0) return null;
  const busyMs = (b.busy - a.busy) * JIFFY_MS - (b.own - a.own);
  return round(Math.max(0, busyMs) / capacityMs, 3);
}

const IDLE_SHARE_MAX = 0.05;
const IDLE_WAIT_MAX_MS = 5 * 60_000;

/** Waits until the rest of the machine uses < 5% of it for 3 s in a row (at most 5 min); returns ms waited. */
async function waitForIdle(label: string): Promise<{ waitedMs: number; idle: boolean }> {
  if (cpuSnapshot() === null) return { waitedMs: 0, idle: true };
  const started = performance.now();
  let quiet = 0;
  let warned = false;
  while (performance.now() - started < IDLE_WAIT_MAX_MS) {
    const a = cpuSnapshot();
    await new Promise((r) => setTimeout(r, 1000));
    const share = otherCpuShare(a, cpuSnapshot()) ?? 0;
    quiet = share < IDLE_SHARE_MAX ? quiet + 1 : 0;
    if (quiet >= 3) return { waitedMs: round(performance.now() - started, 0), idle: true };
    if (!warned && share >= IDLE_SHARE_MAX) {
      log(`${label}: other processes use ${(share * 100).toFixed(0)}% of the CPU, waiting for an idle machine`);
      warned = true;
    }
  }
  log(
    `${label}: machine still busy after ${IDLE_WAIT_MAX_MS / 60_000} min, measuring anyway (see contention in the JSON)`,
  );
  return { waitedMs: round(performance.now() - started, 0), idle: false };
}

function onnxRuntimeVersion(): string {
  try {
    const pkg = JSON.parse(
      readFileSync(join(projectRoot(), 'node_modules', 'onnxruntime-node', 'package.json'), 'utf8'),
    ) as { version?: string };
    return pkg.version ?? 'unknown';
  } catch {
    return 'unknown';
  }
}

function gitRevision(): string | null {
  try {
    const head = execFileSync('git', ['rev-parse', '--short', 'HEAD'], {
      cwd: projectRoot(),
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'ignore'],
    }).trim();
    const dirty =
      execFileSync('git', ['status', '--porcelain'], {
        cwd: projectRoot(),
        encoding: 'utf8',
        stdio: ['ignore', 'pipe', 'ignore'],
      }).trim() !== '';
    return dirty ? `${head}-dirty` : head;
  } catch {
    return null;
  }
}

function machineFacts(): Record<string, unknown> {
  return {
    cpuModel: cpus()[0]?.model ?? 'unknown',
    cores: cpus().length,
    availableParallelism: availableParallelism(),
    totalMemoryMB: Math.round(totalmem() / 1e6),
    platform: `${process.platform}-${process.arch}`,
    node: process.version,
    onnxruntimeNode: onnxRuntimeVersion(),
    intraOpThreads: THREADS,
    interOpThreads: 1,
    date: new Date().toISOString(),
    gitRevision: gitRevision(),
  };
}

/** Token ids of the fixed paragraph, repeated, cut to `count`. */
function paragraphTokens(engine: Engine, count: number): number[] {
  const ids: number[] = [];
  let text = PARAGRAPH;
  while (ids.length < count) {
    ids.length = 0;
    ids.push(...engine.tokenizer.encode(text, { addSpecialTokens: false }));
    text += PARAGRAPH;
  }
  return ids.slice(0, count);
}

function spawnSelf(args: string[], stdout: 'pipe' | 'stderr'): Promise<{ code: number; out: string }> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(process.execPath, [SELF, ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (chunk: Buffer) => {
      if (stdout === 'pipe') out += chunk.toString();
      else process.stderr.write(chunk);
    });
    child.on('error', reject);
    child.on('close', (code, signal) => resolvePromise({ code: code ?? (signal ? 128 : 1), out }));
  });
}

// ---------------------------------------------------------------------------------------------
// Conversion (child process)

interface ConversionResult {
  readonly convertMs: number;
  readonly onnxBytes: number;
  /** Set when ensureConverted had to convert into the cache (first run of a non-default variant). */
  readonly cacheConvertMs: number | null;
  readonly modelDir: string;
  readonly peakRssMB: number;
  readonly otherCpuShare: number | null;
}

/** Times convertGguf into a temporary directory under the cache (deleted after), then makes sure the cache has the variant. */
async function convertOnly(variant: Variant): Promise<ConversionResult> {
  const options = VARIANTS[variant];
  const gguf = await ensureDefaultGguf();
  const tmpRoot = join(cacheDir(), 'tmp');
  const tmpDir = join(tmpRoot, `bench-convert-${variant}-${process.pid}`);
  mkdirSync(tmpRoot, { recursive: true });
  let convertMs: number;
  let onnxBytes: number;
  let c0: CpuSnapshot | null = null;
  let c1: CpuSnapshot | null = null;
  try {
    c0 = cpuSnapshot();
    const t0 = performance.now();
    const result = convertGguf(gguf, tmpDir, options);
    convertMs = performance.now() - t0;
    c1 = cpuSnapshot();
    onnxBytes = statSync(join(result.dir, ONNX_FILE)).size;
  } finally {
    rmSync(tmpDir, { recursive: true, force: true });
    rmSync(`${tmpDir}.tmp-${process.pid}`, { recursive: true, force: true });
  }
  const expectedDir = join(
    cacheDir(),
    'models',
    `${DEFAULT_MODEL.name.toLowerCase()}-${conversionKey(DEFAULT_MODEL.ggufSha256, options)}`,
  );
  const cached = isConverted(expectedDir);
  const t1 = performance.now();
  const modelDir = ensureConverted(gguf, DEFAULT_MODEL.ggufSha256, options, undefined, DEFAULT_MODEL.name);
  const cacheConvertMs = cached ? null : performance.now() - t1;
  return {
    convertMs,
    onnxBytes,
    cacheConvertMs,
    modelDir,
    peakRssMB: peakRssMB(),
    otherCpuShare: otherCpuShare(c0, c1),
  };
}

// ---------------------------------------------------------------------------------------------
// One variant

interface ForwardCost {
  readonly t: number;
  readonly medianMs: number;
  readonly p10Ms: number;
  readonly p90Ms: number;
  readonly minMs: number;
  readonly ratioToT1: number;
  readonly samples: number;
}

interface VariantResult {
  readonly benchmark: 'runtime';
  readonly variant: Variant;
  readonly graphOptions: GraphOptions;
  readonly model: {
    readonly name: string;
    readonly gguf: string;
    readonly ggufSha256: string;
    readonly dir: string;
    readonly onnxBytes: number;
  };
  readonly machine: Record<string, unknown>;
  readonly conversion: {
    readonly convertMs: number;
    readonly cacheConvertMs: number | null;
    readonly onnxBytesTemp: number;
    readonly peakRssMB: number;
    readonly note: string;
  };
  readonly modelInfo: { readonly vocabSize: number; readonly contextLength: number; readonly kind: string };
  readonly loadMs: number;
  readonly prefill: {
    readonly tokens: number;
    readonly runs: number;
    readonly medianMs: number;
    readonly tokPerS: number;
    readonly samplesMs: number[];
  };
  readonly decode: {
    readonly speculation: 'off';
    readonly promptTokens: number;
    readonly newTokens: number;
    readonly runs: number;
    readonly tokPerS: number;
    readonly samplesTokPerS: number[];
    readonly medianDecodeMs: number;
    readonly identicalOutputs: boolean;
    readonly outputSha256: string;
    readonly outputPreview: string;
  };
  readonly forwardCost: {
    readonly pastTokens: number;
    readonly rounds: number;
    readonly warmupRounds: number;
    readonly order: string;
    readonly perT: ForwardCost[];
    readonly engineCalibration: { readonly note: string; readonly ms: number; readonly costByT: number[] };
  };
  readonly peakRssMB: number;
  readonly peakRssNote: string;
  readonly contention: {
    readonly note: string;
    readonly maxAllowed: number;
    readonly otherCpuShare: Record<Phase, number | null>;
    readonly attempts: Record<Phase, number>;
    readonly waitedForIdleMs: number;
  };
}

type Phase = 'conversion' | 'load' | 'prefill' | 'decode' | 'forward';
const PHASES: readonly Phase[] = ['conversion', 'load', 'prefill', 'decode', 'forward'];
/** A phase during which other processes took more than this share of the CPU is measured again. */
const CONTENTION_MAX = 0.05;
const PHASE_ATTEMPTS = 3;

interface PhaseRecord {
  otherCpuShare: number | null;
  attempts: number;
  waitedForIdleMs: number;
}

/**
 * Runs a measurement phase on an idle machine; if other processes took more than CONTENTION_MAX of
 * the CPU meanwhile, discards it and measures again (PHASE_ATTEMPTS at most, then keeps the last).
 */
async function guarded<T>(
  label: string,
  record: PhaseRecord,
  fn: () => Promise<T>,
  options: { shareOf?: (value: T) => number | null; discard?: (value: T) => Promise<void> } = {},
): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    record.waitedForIdleMs += (await waitForIdle(label)).waitedMs;
    const a = cpuSnapshot();
    const value = await fn();
    const share = options.shareOf ? options.shareOf(value) : otherCpuShare(a, cpuSnapshot());
    record.otherCpuShare = share;
    record.attempts = attempt;
    if (share === null || share <= CONTENTION_MAX) return value;
    const pct = (share * 100).toFixed(0);
    if (attempt >= PHASE_ATTEMPTS) {
      log(
        `${label}: other processes still took ${pct}% of the CPU after ${attempt} attempts; keeping this measurement (flagged in the JSON)`,
      );
      return value;
    }
    log(`${label}: other processes took ${pct}% of the CPU meanwhile, measuring again`);
    await options.discard?.(value);
  }
}

async function runVariant(variant: Variant): Promise<VariantResult> {
  const options = VARIANTS[variant];
  const phases = Object.fromEntries(
    PHASES.map((p) => [p, { otherCpuShare: null, attempts: 0, waitedForIdleMs: 0 }]),
  ) as Record<Phase, PhaseRecord>;

  // Conversion, in a child process. A retry finds the variant cached, so keep the first cache conversion time.
  let cacheConvertMs: number | null = null;
  const conversion = await guarded(
    `${variant} conversion`,
    phases.conversion,
    async () => {
      log(`${variant}: converting (timed, child process)`);
      const conv = await spawnSelf(['--convert-only', '--variant', variant], 'pipe');
      if (conv.code !== 0) throw new Error(`conversion child for ${variant} exited with code ${conv.code}`);
      const r = JSON.parse(conv.out.trim().split('\n').pop()!) as ConversionResult;
      cacheConvertMs ??= r.cacheConvertMs;
      return r;
    },
    { shareOf: (r) => r.otherCpuShare },
  );
  const modelDir = conversion.modelDir;
  const onnxBytes = statSync(join(modelDir, ONNX_FILE)).size;
  log(`${variant}: converted in ${conversion.convertMs.toFixed(0)} ms, model.onnx ${(onnxBytes / 1e6).toFixed(1)} MB`);

  const runtime: RuntimeOptions = { executionProvider: 'cpu', intraOpThreads: THREADS, kvCapacity: KV_CAPACITY };
  const loaded = await guarded(
    `${variant} load`,
    phases.load,
    async () => {
      const l0 = performance.now();
      // No calibration: load time is tokenizer + ORT session only (the engine's forward-cost table is recorded separately below).
      const engine = await createEngine(modelDir, runtime, { forwardCost: { mode: 'defer' } });
      return { engine, ms: performance.now() - l0 };
    },
    { discard: (l) => l.engine.model.dispose() },
  );
  const { engine } = loaded;
  const loadMs = loaded.ms;
  log(`${variant}: loaded in ${loadMs.toFixed(0)} ms`);
  const model = engine.model;

  // Prefill: one forward of PREFILL_TOKENS tokens on an empty sequence, one logits row.
  const prefillIds = paragraphTokens(engine, PREFILL_TOKENS);
  const prefillSamples = await guarded(`${variant} prefill`, phases.prefill, async () => {
    const samples: number[] = [];
    const seq = model.createSequence({ capacity: PREFILL_TOKENS + 16 });
    try {
      for (let i = 0; i < PREFILL_WARMUP + PREFILL_RUNS; i++) {
        seq.rewind(0);
        const t0 = performance.now();
        await seq.forward(prefillIds, 1);
        const ms = performance.now() - t0;
        if (i >= PREFILL_WARMUP) samples.push(ms);
      }
    } finally {
      seq.dispose();
    }
    return samples;
  });
  const prefillMedian = median(prefillSamples);
  log(`${variant}: prefill ${PREFILL_TOKENS} tokens, median ${prefillMedian.toFixed(1)} ms`);

  // Greedy decode through the engine.
  const decode = await guarded(`${variant} decode`, phases.decode, async () => {
    const tokPerS: number[] = [];
    const decodeMs: number[] = [];
    const outputs: string[] = [];
    let promptTokens = 0;
    let preview = '';
    for (let i = 0; i < DECODE_WARMUP + DECODE_RUNS; i++) {
      const ids: number[] = [];
      let text = '';
      let final: { completionTokens: number; totalMs: number; prefillMs: number; promptTokens: number } | undefined;
      for await (const event of engine.generate({
        prompt: { kind: 'text', text: DECODE_PROMPT, chat: engine.tokenizer.hasChatTemplate },
        maxNewTokens: DECODE_NEW_TOKENS,
        ignoreEos: true,
        // Plain greedy decoding: one token per forward (speculation is measured by bench/anpd-bench.ts).
        speculation: NO_SPECULATION,
      })) {
        if (event.type === 'delta') {
          ids.push(...event.tokenIds);
          text += event.text;
        } else {
          final = event;
        }
      }
      if (final === undefined) throw new Error('generate ended without a final event');
      if (final.completionTokens !== DECODE_NEW_TOKENS)
        throw new Error(`expected ${DECODE_NEW_TOKENS} tokens, got ${final.completionTokens}`);
      // Decode time: everything after the prompt's prefill, i.e. DECODE_NEW_TOKENS forwards of one token.
      const ms = final.totalMs - final.prefillMs;
      if (i >= DECODE_WARMUP) {
        decodeMs.push(ms);
        tokPerS.push((final.completionTokens / ms) * 1000);
      }
      outputs.push(ids.join(','));
      promptTokens = final.promptTokens;
      preview = text;
    }
    return { tokPerS, decodeMs, outputs, promptTokens, preview };
  });
  const { decodeMs, outputs, promptTokens, preview } = decode;
  const decodeTokPerS = decode.tokPerS;
  const decodeMedian = median(decodeTokPerS);
  log(`${variant}: decode median ${decodeMedian.toFixed(1)} tok/s`);

  // Cost of one forward over T new tokens on a past of FORWARD_PAST tokens.
  const maxT = Math.max(...FORWARD_TS);
  const fwdIds = paragraphTokens(engine, FORWARD_PAST + maxT);
  const past = fwdIds.slice(0, FORWARD_PAST);
  const samples = await guarded(`${variant} forward`, phases.forward, async () => {
    const byT = new Map<number, number[]>(FORWARD_TS.map((t) => [t, []]));
    const seq = model.createSequence({ capacity: FORWARD_PAST + maxT + 8 });
    try {
      await seq.forward(past, 1);
      const inputs = new Map<number, number[]>(
        FORWARD_TS.map((t) => [t, fwdIds.slice(FORWARD_PAST, FORWARD_PAST + t)]),
      );
      for (let r = 0; r < FORWARD_WARMUP_ROUNDS + FORWARD_ROUNDS; r++) {
        for (let j = 0; j < FORWARD_TS.length; j++) {
          // Rotate the order every round: each T takes each position equally often.
          const t = FORWARD_TS[(j + r) % FORWARD_TS.length]!;
          const t0 = performance.now();
          await seq.forward(inputs.get(t)!, t);
          const ms = performance.now() - t0;
          seq.rewind(FORWARD_PAST);
          if (r >= FORWARD_WARMUP_ROUNDS) byT.get(t)!.push(ms);
        }
      }
    } finally {
      seq.dispose();
    }
    return byT;
  });
  const t1Median = median(samples.get(1)!);
  const perT: ForwardCost[] = FORWARD_TS.map((t) => {
    const s = samples.get(t)!;
    const med = median(s);
    return {
      t,
      medianMs: round(med, 3),
      p10Ms: round(quantile(s, 0.1), 3),
      p90Ms: round(quantile(s, 0.9), 3),
      minMs: round(Math.min(...s), 3),
      ratioToT1: round(med / t1Median, 3),
      samples: s.length,
    };
  });
  log(`${variant}: forward T=1 median ${t1Median.toFixed(2)} ms`);

  // The engine's own calibration (what its adaptive draft-length controller uses), for comparison.
  const c0 = performance.now();
  const engineCost = await engine.forwardCost(Math.max(...FORWARD_TS));
  const engineCalibrationMs = performance.now() - c0;
  const modelInfo = { vocabSize: model.info.vocabSize, contextLength: model.info.contextLength, kind: model.info.kind };
  await model.dispose();

  const result: VariantResult = {
    benchmark: 'runtime',
    variant,
    graphOptions: options,
    model: {
      name: DEFAULT_MODEL.name,
      gguf: DEFAULT_MODEL.ggufFile,
      ggufSha256: DEFAULT_MODEL.ggufSha256,
      dir: modelDir,
      onnxBytes,
    },
    machine: machineFacts(),
    conversion: {
      convertMs: round(conversion.convertMs, 1),
      cacheConvertMs: cacheConvertMs === null ? null : round(cacheConvertMs, 1),
      onnxBytesTemp: conversion.onnxBytes,
      peakRssMB: conversion.peakRssMB,
      note: "convertGguf into a temporary directory under the cache (then deleted), in a child process, one run; peakRssMB is that child's",
    },
    modelInfo,
    loadMs: round(loadMs, 1),
    prefill: {
      tokens: PREFILL_TOKENS,
      runs: PREFILL_RUNS,
      medianMs: round(prefillMedian, 2),
      tokPerS: round((PREFILL_TOKENS / prefillMedian) * 1000, 1),
      samplesMs: prefillSamples.map((x) => round(x, 2)),
    },
    decode: {
      speculation: 'off',
      promptTokens,
      newTokens: DECODE_NEW_TOKENS,
      runs: DECODE_RUNS,
      tokPerS: round(decodeMedian, 2),
      samplesTokPerS: decodeTokPerS.map((x) => round(x, 2)),
      medianDecodeMs: round(median(decodeMs), 1),
      identicalOutputs: outputs.every((o) => o === outputs[0]),
      outputSha256: createHash('sha256')
        .update(outputs[0] ?? '')
        .digest('hex')
        .slice(0, 16),
      outputPreview: preview.slice(0, 200),
    },
    forwardCost: {
      pastTokens: FORWARD_PAST,
      rounds: FORWARD_ROUNDS,
      warmupRounds: FORWARD_WARMUP_ROUNDS,
      order: `T values ${FORWARD_TS.join(',')} interleaved, order rotated each round; forward(T tokens, T logits rows) then rewind(${FORWARD_PAST})`,
      perT,
      engineCalibration: {
        note: "Engine.forwardCost(16): the engine's own table (index T = cost relative to T=1), as createEngine computes it by default",
        ms: round(engineCalibrationMs, 0),
        costByT: engineCost.map((x) => round(x, 3)),
      },
    },
    peakRssMB: peakRssMB(),
    peakRssNote:
      'process.resourceUsage().maxRSS of the benchmark process (load + prefill + decode + forwards; conversion ran in a child), MB = 10^6 bytes',
    contention: {
      note: "share of the machine's CPU used by other processes during each phase (/proc/stat busy time minus this process's CPU time); a phase above maxAllowed was measured again (attempts), up to 3 times",
      maxAllowed: CONTENTION_MAX,
      otherCpuShare: Object.fromEntries(PHASES.map((p) => [p, phases[p].otherCpuShare])) as Record<
        Phase,
        number | null
      >,
      attempts: Object.fromEntries(PHASES.map((p) => [p, phases[p].attempts])) as Record<Phase, number>,
      waitedForIdleMs: round(
        PHASES.reduce((sum, p) => sum + phases[p].waitedForIdleMs, 0),
        0,
      ),
    },
  };
  return result;
}

// ---------------------------------------------------------------------------------------------
// Output

function table(header: readonly string[], rows: readonly (readonly (string | number)[])[]): string {
  const lines = [`| ${header.join(' | ')} |`, `|${header.map((_, i) => (i === 0 ? ' --- ' : ' ---: ')).join('|')}|`];
  for (const r of rows) lines.push(`| ${r.join(' | ')} |`);
  return `${lines.join('\n')}\n`;
}

const mb = (bytes: number): string => (bytes / 1e6).toFixed(1);

/** Largest share of the CPU other processes took during any measured phase, in percent. */
function maxOtherCpuPercent(r: VariantResult): string {
  const shares = Object.values(r.contention.otherCpuShare).filter((x): x is number => x !== null);
  return shares.length === 0 ? 'n/a' : (Math.max(...shares) * 100).toFixed(0);
}

function variantMarkdown(r: VariantResult): string {
  const m = r.machine;
  let out = `## Runtime benchmark: ${r.model.name}, variant ${r.variant}\n\n`;
  out += `${String(m['cpuModel'])}, ${String(m['cores'])} cores, ${String(m['intraOpThreads'])} intra-op threads, node ${String(m['node'])}, onnxruntime-node ${String(m['onnxruntimeNode'])}\n\n`;
  out += table(
    ['metric', 'value'],
    [
      ['conversion (ms)', r.conversion.convertMs.toFixed(0)],
      ['model.onnx size (MB)', mb(r.model.onnxBytes)],
      ['load (ms)', r.loadMs.toFixed(0)],
      [`prefill ${r.prefill.tokens} tokens (ms, median of ${r.prefill.runs})`, r.prefill.medianMs.toFixed(1)],
      ['prefill (tok/s)', r.prefill.tokPerS.toFixed(1)],
      [`greedy decode ${r.decode.newTokens} tokens (tok/s, median of ${r.decode.runs})`, r.decode.tokPerS.toFixed(1)],
      ['peak RSS (MB)', r.peakRssMB.toFixed(1)],
      ["other processes' CPU, worst phase (%)", maxOtherCpuPercent(r)],
    ],
  );
  out += `\nOne forward of T new tokens on a past of ${r.forwardCost.pastTokens} tokens (${r.forwardCost.rounds} interleaved rounds):\n\n`;
  out += table(
    ['T', 'median ms', 'p10 ms', 'p90 ms', 'ratio to T=1'],
    r.forwardCost.perT.map((f) => [
      f.t,
      f.medianMs.toFixed(2),
      f.p10Ms.toFixed(2),
      f.p90Ms.toFixed(2),
      f.ratioToT1.toFixed(2),
    ]),
  );
  return out;
}

function combinedMarkdown(results: readonly VariantResult[]): string {
  const first = results[0];
  let out = `## Runtime benchmark: ${DEFAULT_MODEL.name}, all variants\n\n`;
  if (first) {
    const m = first.machine;
    out += `${String(m['cpuModel'])}, ${String(m['cores'])} cores, ${String(m['intraOpThreads'])} intra-op threads, node ${String(m['node'])}, onnxruntime-node ${String(m['onnxruntimeNode'])}\n\n`;
  }
  out += table(
    [
      'variant',
      'T=1 ms',
      'T=8 ratio',
      'T=16 ratio',
      'decode tok/s',
      'prefill tok/s',
      'size MB',
      'conversion ms',
      'load ms',
      'peak RSS MB',
      'other CPU %',
    ],
    results.map((r) => {
      const at = (t: number): ForwardCost | undefined => r.forwardCost.perT.find((f) => f.t === t);
      return [
        r.variant,
        at(1)?.medianMs.toFixed(2) ?? '-',
        at(8)?.ratioToT1.toFixed(2) ?? '-',
        at(16)?.ratioToT1.toFixed(2) ?? '-',
        r.decode.tokPerS.toFixed(1),
        r.prefill.tokPerS.toFixed(0),
        mb(r.model.onnxBytes),
        r.conversion.convertMs.toFixed(0),
        r.loadMs.toFixed(0),
        r.peakRssMB.toFixed(0),
        maxOtherCpuPercent(r),
      ];
    }),
  );
  return out;
}

function resultPath(variant: Variant): string {
  return join(RESULTS_DIR, `runtime-${variant}.json`);
}

function writeResult(r: VariantResult): string[] {
  mkdirSync(RESULTS_DIR, { recursive: true });
  const json = `${JSON.stringify(r, null, 2)}\n`;
  const paths = [resultPath(r.variant)];
  if (r.variant === DEFAULT_VARIANT) paths.push(join(RESULTS_DIR, 'runtime.json'));
  for (const p of paths) writeFileSync(p, json);
  return paths;
}

// ---------------------------------------------------------------------------------------------
// Main

async function main(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      variant: { type: 'string', default: DEFAULT_VARIANT },
      all: { type: 'boolean', default: false },
      'convert-only': { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    process.stdout.write(`usage: node dist/bench/runtime-bench.js [--variant ${VARIANT_NAMES.join('|')}] [--all]\n`);
    return 0;
  }
  const variant = values.variant as Variant;
  if (!VARIANT_NAMES.includes(variant)) {
    process.stderr.write(`--variant must be one of ${VARIANT_NAMES.join(', ')}, got "${values.variant}"\n`);
    return 2;
  }

  if (values['convert-only']) {
    process.stdout.write(`${JSON.stringify(await convertOnly(variant))}\n`);
    return 0;
  }

  if (values.all) {
    const results: VariantResult[] = [];
    const failed: string[] = [];
    for (const v of VARIANT_NAMES) {
      log(`--all: running ${v} in a child process`);
      // The child's own per-variant table goes to our stderr; stdout carries only the combined table.
      const { code } = await spawnSelf(['--variant', v], 'stderr');
      if (code !== 0 || !existsSync(resultPath(v))) {
        failed.push(`${v} (exit code ${code})`);
        continue;
      }
      results.push(JSON.parse(readFileSync(resultPath(v), 'utf8')) as VariantResult);
    }
    process.stdout.write(combinedMarkdown(results));
    if (failed.length > 0) {
      process.stderr.write(`failed variants: ${failed.join(', ')}\n`);
      return 1;
    }
    log(`results: ${VARIANT_NAMES.map(resultPath).join(', ')}, ${join(RESULTS_DIR, 'runtime.json')}`);
    return 0;
  }

  // Remove a stale result first so a failed run is never mistaken for a fresh one by --all.
  rmSync(resultPath(variant), { force: true });
  const result = await runVariant(variant);
  const paths = writeResult(result);
  process.stdout.write(variantMarkdown(result));
  log(`wrote ${paths.join(', ')}`);
  return 0;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (error: unknown) => {
    process.stderr.write(`runtime-bench: ${(error as Error).stack ?? String(error)}\n`);
    process.exitCode = 1;
  },
);
