/**
 * Child process of test/webgpu-lavapipe.test.ts: generates on the WebGPU execution provider
 * (run under lavapipe, whose Vulkan environment must exist before the process starts) with and
 * without speculation, and prints one JSON line with the tokens and the speculation counters.
 *   node dist/test/support/webgpu-child.js MODEL_DIR PROMPTS_JSON
 */
import { createEngine } from '../../src/engine/create-engine.js';
import { DEFAULT_SPECULATION, NO_SPECULATION, type SpeculationOptions } from '../../src/engine/engine.js';
import { generateOnce } from '../../bench/generate-once.js';

/** Flat, like a GPU's (docs/benchmarks.md): lavapipe's timings say nothing about a real device. */
const FLAT_FORWARD_COST = Array.from({ length: 18 }, (_, t) => (t === 0 ? 0 : 1));

const [modelDir, promptsJson] = process.argv.slice(2);
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
process.stdout.write(`${JSON.stringify({ provider: engine.info.executionProvider, loadMs, results })}\n`);
await engine.dispose();
