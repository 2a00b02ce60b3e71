/**
 * What converting a GGUF costs in accuracy, per ggml tensor type and in logits, on a real model.
 * Weights: each type's tensors packed for MatMulNBits against ggml's exact dequantization (max and
 * RMS of the difference, relative to the weights' RMS). Logits over a fixed prompt set (teacher-
 * forced, every position): the independent JS forward on the exact weights against (a) the same
 * forward on the packed weights — what packing costs — and (b) the served graph (ORT, int8
 * activations in MatMulNBits, accuracy_level 4) — what serving costs in all. Also how often the top
 * token agrees.
 *
 *   node dist/bench/gguf-accuracy.js [--model gemma3-270m|FILE.gguf] [--prompts 3] [--tokens 24]
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { GgmlType, readGguf } from '../src/convert/gguf-reader.js';
import { DEFAULT_GRAPH_OPTIONS } from '../src/convert/decoder-graph.js';
import { dequantize, dequantizeNBits, toNBits } from '../src/convert/quantize.js';
import { projectRoot } from '../src/paths.js';
import { ensureModelArgument, ensureRegistryGguf } from '../src/registry/model-cache.js';
import { classifyModelArgument } from '../src/registry/model-registry.js';
import { loadDecoderModel } from '../src/runtime/load-model.js';
import { loadTokenizer } from '../src/tokenizer/tokenizer.js';
import { exactnessPrompts } from '../test/support/prompt-set.js';
import { ReferenceLlama } from '../test/support/reference-llama.js';

const { values } = parseArgs({
  options: {
    model: { type: 'string', default: 'gemma3-270m' },
    prompts: { type: 'string', default: '3' },
    tokens: { type: 'string', default: '24' },
    out: { type: 'string' },
  },
});
const modelArgument = classifyModelArgument(values.model);
if (modelArgument.kind === 'dir') throw new Error('--model takes a registry name or a GGUF file');
const ggufPath = modelArgument.kind === 'registry' ? await ensureRegistryGguf(modelArgument.model) : modelArgument.path;
const dir = await ensureModelArgument(modelArgument, DEFAULT_GRAPH_OPTIONS);
const file = readGguf(ggufPath);

// Weights, per type.
const perType = new Map<
  string,
  { tensors: number; bits: number; maxAbs: number; sq: number; ref: number; n: number }
>();
for (const t of file.tensors.values()) {
  if (t.dims.length !== 2 || t.type === GgmlType.F32) continue;
  const exact = dequantize(file, t);
  const packed = dequantizeNBits(toNBits(file, t));
  const name = GgmlType[t.type]!;
  const s = perType.get(name) ?? { tensors: 0, bits: toNBits(file, t).bits, maxAbs: 0, sq: 0, ref: 0, n: 0 };
  s.tensors++;
  for (let i = 0; i < exact.length; i++) {
    const d = packed[i]! - exact[i]!;
    s.maxAbs = Math.max(s.maxAbs, Math.abs(d));
    s.sq += d * d;
    s.ref += exact[i]! * exact[i]!;
  }
  s.n += exact.length;
  perType.set(name, s);
}
const weights = Object.fromEntries(
  [...perType].map(([name, s]) => [
    name,
    {
      tensors: s.tensors,
      nbits: s.bits,
      maxAbsError: +s.maxAbs.toPrecision(3),
      rmsError: +Math.sqrt(s.sq / s.n).toPrecision(3),
      rmsErrorOverRmsWeight: +Math.sqrt(s.sq / s.ref).toPrecision(3),
    },
  ]),
);
process.stderr.write(`weights: ${JSON.stringify(weights)}\n`);

// Logits, teacher-forced over the first tokens of a few prompts.
const tokenizer = loadTokenizer(dir);
const model = await loadDecoderModel(dir, { executionProvider: 'cpu', intraOpThreads: 0, kvCapacity: 256 });
const vocab = model.info.vocabSize;
const stat = () => ({ maxAbs: 0, sq: 0, n: 0, top1Same: 0, positions: 0, largest: 0 });
const packing = stat();
const served = stat();
const add = (s: ReturnType<typeof stat>, a: Float32Array, truth: Float32Array) => {
  let best = 0,
    bestTruth = 0;
  for (let i = 0; i < vocab; i++) {
    const d = a[i]! - truth[i]!;
    s.maxAbs = Math.max(s.maxAbs, Math.abs(d));
    s.sq += d * d;
    s.largest = Math.max(s.largest, Math.abs(truth[i]!));
    if (a[i]! > a[best]!) best = i;
    if (truth[i]! > truth[bestTruth]!) bestTruth = i;
  }
  s.n += vocab;
  s.positions++;
  if (best === bestTruth) s.top1Same++;
};
const prompts = exactnessPrompts().slice(0, Number(values.prompts));
for (const p of prompts) {
  const ids = tokenizer.encode(p.prompt, { addSpecialTokens: true }).slice(0, Number(values.tokens));
  const exact = new ReferenceLlama(file, undefined, 'exact');
  const packed = new ReferenceLlama(file);
  const seq = model.createSequence();
  for (const id of ids) {
    const truth = exact.step(id);
    add(packing, packed.step(id), truth);
    add(served, Float32Array.from(await seq.forward([id], 1)), truth);
  }
  seq.dispose();
  process.stderr.write(`${p.id}: ${ids.length} positions\n`);
}
await model.dispose();
const summary = (s: ReturnType<typeof stat>) => ({
  maxAbs: +s.maxAbs.toPrecision(3),
  rms: +Math.sqrt(s.sq / s.n).toPrecision(3),
  largestLogit: +s.largest.toPrecision(3),
  top1Agreement: `${s.top1Same}/${s.positions}`,
});
const report = {
  date: new Date().toISOString(),
  gguf: ggufPath.replace(projectRoot(), '.'),
  weights,
  logits: { packedVsExact: summary(packing), servedVsExact: summary(served) },
  prompts: prompts.map((p) => p.id),
  tokensPerPrompt: Number(values.tokens),
};
process.stdout.write(`${JSON.stringify(report, null, 1)}\n`);
const out = values.out ?? join(projectRoot(), 'bench', 'results', 'gguf-accuracy.json');
mkdirSync(join(out, '..'), { recursive: true });
writeFileSync(out, `${JSON.stringify(report, null, 1)}\n`);
