/**
 * Child process of test/webgpu-lavapipe.test.ts: generates on the WebGPU execution provider
 * (run under lavapipe, whose Vulkan environment must exist before the process starts) with and
 * without speculation, and prints one JSON line with the tokens and the speculation counters.
 * With BATCH_MODEL_DIR (a K-slot graph) it also runs every prompt's plain and speculative
 * generations at once on a batching engine (batchedPlain / batchedAnpd, and the forward counts).
 * It also reports what ORT did, observed by wrapping ORT's session API from outside our runtime:
 * the options each session was created with, the provider of every kernel run of the first
 * session (ORT's profiler) and where the present.* outputs came back.
 *   node dist/test/support/webgpu-child.js MODEL_DIR PROMPTS_JSON [BATCH_MODEL_DIR]
 */
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createEngine } from '../../src/engine/create-engine.js';
import { DEFAULT_SPECULATION, NO_SPECULATION, type SpeculationOptions } from '../../src/contract.js';
import { generateOnce } from '../../tools/generate-once.js';
import type { ForwardCounts } from '../../src/runtime/types.js';
import { encodeModel, OnnxDataType } from '../../src/convert/onnx-writer.js';
import { createOrtSession, ort } from '../../src/runtime/ort-session.js';
import { topTwoGaps } from './greedy-reference.js';
import type { OrtObservations } from './webgpu-run.js';

/** Flat, like a GPU's (docs/benchmarks.md): lavapipe's timings say nothing about a real device. */
const FLAT_FORWARD_COST = Array.from({ length: 18 }, (_, t) => (t === 0 ? 0 : 1));

const [modelDir, promptsJson, batchModelDir] = process.argv.slice(2);
if (modelDir === undefined || promptsJson === undefined) throw new Error('usage: webgpu-child MODEL_DIR PROMPTS_JSON');
const prompts = JSON.parse(promptsJson) as { text: string; maxNewTokens: number }[];

const observed: OrtObservations = { sessions: [], kernelRunsByProvider: {}, kvOutputsByLocation: {} };
const profileDir = mkdtempSync(join(tmpdir(), 'anpd-webgpu-profile-'));
mkdirSync(profileDir, { recursive: true });
type Create = (path: string, options: ort.InferenceSession.SessionOptions) => Promise<ort.InferenceSession>;
const create = ort.InferenceSession.create.bind(ort.InferenceSession) as Create;
const sessions: ort.InferenceSession[] = [];
(ort.InferenceSession as unknown as { create: Create }).create = async (path, options) => {
  const extra = options.extra as { session?: Record<string, string> } | undefined;
  observed.sessions.push({
    executionProviders: (options.executionProviders ?? []).map((p) => (typeof p === 'string' ? p : p.name)),
    cpuFallbackDisabled: extra?.session?.['disable_cpu_ep_fallback'] === '1',
  });
  const profiled = sessions.length === 0;
  const session = await create(
    path,
    profiled ? { ...options, enableProfiling: true, profileFilePrefix: join(profileDir, 'ort') } : options,
  );
  sessions.push(session);
  const run = session.run.bind(session) as (...args: unknown[]) => Promise<ort.InferenceSession.ReturnType>;
  (session as unknown as { run: typeof run }).run = async (...args) => {
    const results = await run(...args);
    for (const [name, tensor] of Object.entries(results)) {
      if (name.startsWith('present'))
        observed.kvOutputsByLocation[tensor.location] = (observed.kvOutputsByLocation[tensor.location] ?? 0) + 1;
    }
    return results;
  };
  return session;
};

const loadStarted = performance.now();
const engine = await createEngine(
  modelDir,
  { executionProvider: 'webgpu', intraOpThreads: 2, kvCapacity: 256 },
  { forwardCost: { mode: 'fixed', table: FLAT_FORWARD_COST } },
);
const loadMs = performance.now() - loadStarted;
const speculation: SpeculationOptions = { ...DEFAULT_SPECULATION, draftLength: 'fixed' };
const results = [];
for (const prompt of prompts) {
  const plain = await generateOnce(engine, prompt.text, NO_SPECULATION, prompt.maxNewTokens);
  const anpd = await generateOnce(engine, prompt.text, speculation, prompt.maxNewTokens);
  results.push({
    plain: plain.tokens,
    plainGaps: await topTwoGaps(engine, prompt.text, plain.tokens),
    anpd: anpd.tokens,
    anpdFinal: anpd.final,
  });
}
sessions[0]!.endProfiling();
for (const file of readdirSync(profileDir)) {
  const events = JSON.parse(readFileSync(join(profileDir, file), 'utf8')) as {
    cat: string;
    name: string;
    args?: { provider?: string };
  }[];
  for (const e of events) {
    if (e.cat !== 'Node' || !e.name.endsWith('_kernel_time')) continue;
    const provider = e.args?.provider ?? 'unknown';
    observed.kernelRunsByProvider[provider] = (observed.kernelRunsByProvider[provider] ?? 0) + 1;
  }
}
rmSync(profileDir, { recursive: true, force: true });
await engine.dispose();
let batched: { plain: number[][]; anpd: number[][]; forwards: ForwardCounts } | undefined;
if (batchModelDir !== undefined) {
  const batching = await createEngine(
    modelDir,
    { executionProvider: 'webgpu', intraOpThreads: 2, kvCapacity: 256, batchModelDir },
    { forwardCost: { mode: 'fixed', table: FLAT_FORWARD_COST } },
  );
  const runs = await Promise.all(
    prompts.flatMap((p) => [
      generateOnce(batching, p.text, NO_SPECULATION, p.maxNewTokens),
      generateOnce(batching, p.text, speculation, p.maxNewTokens),
    ]),
  );
  batched = {
    plain: runs.filter((_, i) => i % 2 === 0).map((r) => r.tokens),
    anpd: runs.filter((_, i) => i % 2 === 1).map((r) => r.tokens),
    forwards: batching.model.batchExecutor!.counts,
  };
  await batching.dispose();
}
// Disabled CPU fallback must turn a node webgpu has no kernel for (Det) into a load error, and
// allowing it must load the same graph: the flag does what the runtime relies on it for.
(ort.InferenceSession as unknown as { create: Create }).create = create; // the probe's sessions are not the engine's
const probeDir = mkdtempSync(join(tmpdir(), 'anpd-webgpu-probe-'));
const probePath = join(probeDir, 'det.onnx');
writeFileSync(
  probePath,
  Buffer.concat(
    encodeModel({
      graph: {
        name: 'det',
        nodes: [{ op: 'Det', inputs: ['x'], outputs: ['y'] }],
        inputs: [{ name: 'x', type: OnnxDataType.FLOAT, shape: [2, 2] }],
        outputs: [{ name: 'y', type: OnnxDataType.FLOAT, shape: [] }],
        initializers: [],
      },
      opsets: [{ domain: '', version: 17 }],
      producerName: 'webgpu-child',
      producerVersion: '1',
    }),
  ),
);
const tryLoad = async (allowCpuFallback: boolean): Promise<string> => {
  try {
    await (
      await createOrtSession(probePath, {
        executionProvider: 'webgpu',
        intraOpThreads: 1,
        kvCapacity: 1,
        experimental: { allowCpuFallback },
      })
    ).release();
    return 'loaded';
  } catch (error) {
    return `${(error as Error).name}: ${(error as Error).message}`;
  }
};
const fallbackProbe = { disabled: await tryLoad(false), allowed: await tryLoad(true) };
rmSync(probeDir, { recursive: true, force: true });
process.stdout.write(
  `${JSON.stringify({ provider: engine.info.executionProvider, loadMs, results, batched, ort: observed, fallbackProbe })}\n`,
);
