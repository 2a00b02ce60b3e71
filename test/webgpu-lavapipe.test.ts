/**
 * The WebGPU code path (device-resident KV cache, rollback by length, the GPU row minimum) run
 * for real without a GPU: onnxruntime-node's WebGPU provider on Mesa's lavapipe Vulkan driver.
 * Lavapipe is slow (~0.6 s a forward on 2 cores), so this checks behaviour, not speed: ANPD's
 * output equals plain greedy on the same provider, with drafts accepted and rejected on the way,
 * and so do the same generations run all at once through the K-slot batch graph (issue 9).
 * Skipped, with the reason printed, only where lavapipe cannot be fetched (no apt, no network).
 */
import test from 'ava';
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { GenerationFinal } from '../src/engine/engine.js';
import { NO_SPECULATION } from '../src/engine/engine.js';
import { DEFAULT_GRAPH_OPTIONS } from '../src/convert/llama-graph.js';
import { ensureDefaultModel, projectRoot } from '../src/model/default-model.js';
import { generateOnce } from '../bench/generate-once.js';
import { defaultEngine, defaultModelDir } from './support/default-model.js';
import { ensureLavapipe } from './support/lavapipe.js';

const PROMPTS = [
  {
    text: 'Rename the variable `total` to `sum` in this function and change nothing else:\n\nfunction add(values) {\n  let total = 0;\n  for (const v of values) {\n    total += v;\n  }\n  return total;\n}',
    maxNewTokens: 40,
  },
  { text: 'Name three colours.', maxNewTokens: 16 },
];
/** Loading, shader compilation and ~120 forwards (+ ~40 batched) on lavapipe take 1–2 min on 2 cores; a hang fails. */
const CHILD_TIMEOUT_MS = 360_000;

interface ChildOutput {
  provider: string;
  loadMs: number;
  results: { plain: number[]; anpd: number[]; anpdFinal: GenerationFinal }[];
  batched: { plain: number[][]; anpd: number[][]; forwards: { alone: number; batched: number; batchedSequences: number } };
}

test.serial('webgpu on lavapipe: the device-KV path gives plain greedy output with speculation, drafts accepted and rolled back', async (t) => {
  const lavapipe = ensureLavapipe();
  if (!lavapipe.ok) {
    console.log(`webgpu-lavapipe test skipped: ${lavapipe.reason}`);
    t.log(`skipped: ${lavapipe.reason}`);
    t.pass();
    return;
  }
  t.log(lavapipe.fetchedMs > 0 ? `lavapipe fetched and unpacked in ${lavapipe.fetchedMs} ms` : 'lavapipe from the cache');
  const started = performance.now();
  const { stdout } = await promisify(execFile)(
    process.execPath,
    [join(projectRoot(), 'dist', 'test', 'support', 'webgpu-child.js'), await defaultModelDir(), JSON.stringify(PROMPTS), await ensureDefaultModel({ ...DEFAULT_GRAPH_OPTIONS, slots: 4 })],
    { env: { ...process.env, ...lavapipe.env }, timeout: CHILD_TIMEOUT_MS, maxBuffer: 16 << 20 },
  );
  const child = JSON.parse(stdout.trim().split('\n').at(-1)!) as ChildOutput;
  t.log(`child: model loaded in ${child.loadMs.toFixed(0)} ms, all done in ${((performance.now() - started) / 1000).toFixed(1)} s`);
  t.is(child.provider, 'webgpu');

  let accepted = 0;
  let rejectedRounds = 0;
  const cpu = await defaultEngine();
  for (const [i, { plain, anpd, anpdFinal }] of child.results.entries()) {
    t.true(plain.length > 0, `prompt ${i}: no tokens`);
    t.deepEqual(anpd, plain, `prompt ${i}: ANPD on webgpu differs from plain greedy on webgpu`);
    accepted += anpdFinal.stats.draftTokensAccepted;
    rejectedRounds += anpdFinal.stats.draftTokensProposed > anpdFinal.stats.draftTokensAccepted ? 1 : 0;
    // A diagnostic, not an invariant: GPU kernels may round differently from the CPU's.
    const onCpu = (await generateOnce(cpu, PROMPTS[i]!.text, NO_SPECULATION, PROMPTS[i]!.maxNewTokens)).tokens;
    const same = onCpu.findIndex((id, j) => id !== plain[j]);
    t.log(`prompt ${i}: ${anpdFinal.stats.rounds} verify steps for ${anpd.length} tokens (${anpdFinal.stats.draftTokensAccepted}/${anpdFinal.stats.draftTokensProposed} drafts accepted); webgpu vs cpu greedy: ${same === -1 ? 'identical' : `first difference at token ${same}`}`);
  }
  // Batched: all four generations at once through the 4-slot graph, each slot's KV on the device.
  const { forwards } = child.batched;
  t.log(`batched on webgpu: ${forwards.batched} batched forwards carrying ${forwards.batchedSequences} sequence-forwards, ${forwards.alone} alone`);
  t.true(forwards.batched > 0, 'no forward was batched');
  for (const [i, { plain }] of child.results.entries()) {
    t.deepEqual(child.batched.plain[i], plain, `prompt ${i}: batched plain on webgpu differs from unbatched plain`);
    t.deepEqual(child.batched.anpd[i], plain, `prompt ${i}: batched ANPD on webgpu differs from unbatched plain`);
  }
  t.true(accepted > 0, 'no draft was accepted: the multi-row verify path was not exercised');
  t.true(rejectedRounds > 0, 'no draft was rejected: the rollback path was not exercised');
});
