/**
 * Child process of test/webgpu-lavapipe.test.ts: generates on the WebGPU execution provider
 * (run under lavapipe, whose Vulkan environment must exist before the process starts) with and
 * without speculation, and prints one JSON line with the tokens and the speculation counters.
 * With BATCH_MODEL_DIR (a K-slot graph) it also runs every prompt's plain and speculative
 * generations at once on a batching engine (batchedPlain / batchedAnpd, and the forward counts).
 *   node dist/test/support/webgpu-child.js MODEL_DIR PROMPTS_JSON [BATCH_MODEL_DIR]
 */
import { createEngine } from '../../src/engine/create-engine.js';
import { DEFAULT_SPECULATION, NO_SPECULATION, type SpeculationOptions } from '../../src/engine/engine.js';
import { generateOnce } from '../../bench/generate-once.js';
import type { GqaDecoderModel } from '../../src/runtime/gqa-decoder.js';

/** Flat, like a GPU's (docs/benchmarks.md): lavapipe's timings say nothing about a real device. */
const FLAT_FORWARD_COST = Array.from({ length: 18 }, (_, t) => (t === 0 ? 0 : 1));

const [modelDir, promptsJson, batchModelDir] = process.argv.slice(2);
if (modelDir === undefined || promptsJson === undefined) throw new Error('usage: webgpu-child MODEL_DIR PROMPTS_JSON');
const prompts = JSON.parse(promptsJson) as { text: string; maxNewTokens: number }[];

const loadStarted = performance.now();
const engine = await createEngine(modelDir, { executionProvider: 'webgpu', intraOpThreads: 2, kvCapacity: 256 }, { forwardCost: FLAT_FORWARD_COST });
const loadMs = performance.now() - loadStarted;
const speculation: SpeculationOptions = { ...DEFAULT_SPECULATION, draftLength: 'fixed' };
const results = [];
for (const prompt of prompts) {
  const plain = await generateOnce(engine, prompt.text, NO_SPECULATION, prompt.maxNewTokens);
  const anpd = await generateOnce(engine, prompt.text, speculation, prompt.maxNewTokens);
  results.push({ plain: plain.tokens, anpd: anpd.tokens, anpdFinal: anpd.final });
}
await engine.dispose();
let batched: { plain: number[][]; anpd: number[][]; forwards: GqaDecoderModel['forwardCounts'] } | undefined;
if (batchModelDir !== undefined) {
  const batching = await createEngine(modelDir, { executionProvider: 'webgpu', intraOpThreads: 2, kvCapacity: 256, batchModelDir }, { forwardCost: FLAT_FORWARD_COST });
  const runs = await Promise.all(prompts.flatMap((p) => [generateOnce(batching, p.text, NO_SPECULATION, p.maxNewTokens), generateOnce(batching, p.text, speculation, p.maxNewTokens)]));
  batched = { plain: runs.filter((_, i) => i % 2 === 0).map((r) => r.tokens), anpd: runs.filter((_, i) => i % 2 === 1).map((r) => r.tokens), forwards: (batching.model as GqaDecoderModel).forwardCounts };
  await batching.dispose();
}
process.stdout.write(`${JSON.stringify({ provider: engine.info.executionProvider, loadMs, results, batched })}\n`);
