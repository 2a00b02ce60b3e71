/**
 * Runs test/support/webgpu-child.ts under a Vulkan environment (lavapipe's) and returns what it
 * printed: shared by test/webgpu-lavapipe.test.ts and the greedy-reference recorder.
 */
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { DEFAULT_GRAPH_OPTIONS } from '../../src/convert/decoder-graph.js';
import type { GenerationFinal } from '../../src/contract.js';
import { projectRoot } from '../../src/paths.js';
import { ensureDefaultModel } from '../../src/registry/model-cache.js';

export interface WebgpuPrompt {
  readonly id: string;
  readonly text: string;
  readonly maxNewTokens: number;
}

/** Short prompts and outputs: lavapipe takes ~0.6 s a forward on 2 cores. */
export const WEBGPU_PROMPTS: readonly WebgpuPrompt[] = [
  {
    id: 'rename-variable',
    text: 'Rename the variable `total` to `sum` in this function and change nothing else:\n\nfunction add(values) {\n  let total = 0;\n  for (const v of values) {\n    total += v;\n  }\n  return total;\n}',
    maxNewTokens: 40,
  },
  { id: 'three-colours', text: 'Name three colours.', maxNewTokens: 16 },
];

/** Loading, shader compilation and ~120 forwards (+ ~40 batched) on lavapipe take 1–2 min on 2 cores; a hang fails. */
const CHILD_TIMEOUT_MS = 360_000;

/** What ORT was asked for and what it did, seen from outside our runtime (the child wraps ORT's session API). */
export interface OrtObservations {
  /** Per session created: its execution providers and whether CPU fallback was disabled. */
  sessions: { executionProviders: string[]; cpuFallbackDisabled: boolean }[];
  /** Profiled kernel runs of the single-sequence session, by the provider ORT ran them on. */
  kernelRunsByProvider: Record<string, number>;
  /** present.* outputs returned by the runs, by where their data was. */
  kvOutputsByLocation: Record<string, number>;
}

export interface ChildOutput {
  provider: string;
  loadMs: number;
  results: { plain: number[]; plainGaps: number[]; anpd: number[]; anpdFinal: GenerationFinal }[];
  batched: {
    plain: number[][];
    anpd: number[][];
    forwards: { alone: number; batched: number; batchedSequences: number };
  };
  ort: OrtObservations;
  /** Loading a graph with a node webgpu lacks (Det): 'loaded' or the error, with CPU fallback disabled and allowed. */
  fallbackProbe: { disabled: string; allowed: string };
}

export async function runWebgpuChild(
  vulkanEnv: Record<string, string>,
  prompts: readonly WebgpuPrompt[],
): Promise<ChildOutput> {
  const { stdout } = await promisify(execFile)(
    process.execPath,
    [
      join(projectRoot(), 'dist', 'test', 'support', 'webgpu-child.js'),
      await ensureDefaultModel(),
      JSON.stringify(prompts),
      await ensureDefaultModel({ ...DEFAULT_GRAPH_OPTIONS, slots: 4 }),
    ],
    { env: { ...process.env, ...vulkanEnv }, timeout: CHILD_TIMEOUT_MS, maxBuffer: 16 << 20 },
  );
  return JSON.parse(stdout.trim().split('\n').at(-1)!) as ChildOutput;
}
