/**
 * K-quants (Q4_K, Q5_K, Q6_K: what nearly every GGUF in circulation is made of). Dequantization
 * is checked bit for bit against llama.cpp's own Python package (gguf-py; fixture written by
 * test/fixtures/gen-kquant-blocks.py); GGUFs of each type, written here with random weights, are
 * converted and run, and their logits compared with the independent JS forward pass on the same
 * packed weights (the graph) and on the exactly dequantized ones (what the packing costs).
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { convertGguf } from '../src/convert/convert-gguf.js';
import { GgmlType, readGguf } from '../src/convert/gguf-reader.js';
import { DEFAULT_GRAPH_OPTIONS } from '../src/convert/decoder-graph.js';
import { dequantizeK, toNBits, wantsEightBits } from '../src/convert/quantize.js';
import { projectRoot } from '../src/paths.js';
import { loadDecoderModel } from '../src/runtime/load-model.js';
import { defaultGguf } from './support/default-model.js';
import { randomLlamaGguf } from './support/random-gguf.js';
import { ReferenceLlama } from './support/reference-llama.js';

interface Fixture {
  readonly types: Record<string, { blocks: number; raw: string; float32: string }>;
}

test('Q4_K, Q5_K and Q6_K dequantize bit for bit as gguf-py does', (t) => {
  const fixture = JSON.parse(
    readFileSync(join(projectRoot(), 'test', 'fixtures', 'kquant-blocks.json'), 'utf8'),
  ) as Fixture;
  t.deepEqual(Object.keys(fixture.types).sort(), ['Q4_K', 'Q5_K', 'Q6_K']);
  for (const [name, c] of Object.entries(fixture.types)) {
    const raw = new Uint8Array(Buffer.from(c.raw, 'base64'));
    const expected = new Float32Array(new Uint8Array(Buffer.from(c.float32, 'base64')).buffer);
    const out = new Float32Array(c.blocks * 256);
    dequantizeK(GgmlType[name as keyof typeof GgmlType], raw, out, c.blocks);
    let differing = 0;
    for (let i = 0; i < out.length; i++) if (out[i] !== expected[i]) differing++;
    t.is(differing, 0, `${name}: ${differing} of ${out.length} values differ from gguf-py`);
  }
});

const SHAPE = { layers: 2, hidden: 128, ffn: 256, heads: 4, kvHeads: 2 };
const TOKENS = [1, 4093, 198, 1780, 314, 260, 3575, 282];
const VOCAB = 49152;

function stats(a: Float32Array, b: Float32Array): { max: number; rms: number } {
  let max = 0;
  let sq = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i]! - b[i]!);
    max = Math.max(max, d);
    sq += d * d;
  }
  return { max, rms: Math.sqrt(sq / a.length) };
}

/** Q4_K_M's mix: Q6_K for attn_v and ffn_down (and here the embedding), Q4_K elsewhere; then each type alone. */
const MIXES: Record<string, (name: string) => GgmlType> = {
  Q4_K_M: (name) => (/attn_v|ffn_down|token_embd/.test(name) ? GgmlType.Q6_K : GgmlType.Q4_K),
  Q4_K: () => GgmlType.Q4_K,
  Q5_K: () => GgmlType.Q5_K,
  Q6_K: () => GgmlType.Q6_K,
  // Q4_0 has no zero points (MatMulNBits' default 8, which ORT's fpA_intB CUDA kernels need); fused
  // beside a part that has them, its rows get 8 written out.
  Q4_0: () => GgmlType.Q4_0,
  'Q4_0 with a Q4_K attn_k': (name) => (/attn_k/.test(name) ? GgmlType.Q4_K : GgmlType.Q4_0),
};

for (const [mix, typeOf] of Object.entries(MIXES)) {
  test.serial(
    `a ${mix} GGUF converts and its graph matches the reference forward on the same packed weights`,
    async (t) => {
      const dir = mkdtempSync(join(tmpdir(), 'anpd-kquant-'));
      try {
        const ggufPath = join(dir, `${mix}.gguf`);
        writeFileSync(ggufPath, randomLlamaGguf(readGguf(await defaultGguf()), SHAPE, typeOf, 7));
        const file = readGguf(ggufPath);
        for (const [name, info] of file.tensors) {
          if (info.dims.length !== 2) continue;
          const nbits = toNBits(file, info);
          t.is(nbits.bits, wantsEightBits(info.type) ? 8 : 4, name);
          if (info.type === GgmlType.Q4_0) t.is(nbits.zeroPoints, undefined, `${name}: Q4_0 stores no zero points`);
        }
        // accuracy_level 0: MatMulNBits in float32, so a difference is the graph's.
        convertGguf(ggufPath, join(dir, 'model'), { ...DEFAULT_GRAPH_OPTIONS, accuracyLevel: 0 });
        const model = await loadDecoderModel(join(dir, 'model'), {
          executionProvider: 'cpu',
          intraOpThreads: 1,
          kvCapacity: 64,
          experimental: { nativeAttention: 'off' },
        });
        const seq = model.createSequence();
        const logits = await seq.forward(TOKENS, TOKENS.length);
        const packed = new ReferenceLlama(file);
        const exact = new ReferenceLlama(file, undefined, 'exact');
        let worstGraph = 0;
        const packing = { max: 0, rms: 0, scale: 0 };
        for (let p = 0; p < TOKENS.length; p++) {
          const row = logits.subarray(p * VOCAB, (p + 1) * VOCAB);
          const ref = packed.step(TOKENS[p]!);
          const truth = exact.step(TOKENS[p]!);
          worstGraph = Math.max(worstGraph, stats(row, ref).max);
          const s = stats(ref, truth);
          packing.max = Math.max(packing.max, s.max);
          packing.rms = Math.max(packing.rms, s.rms);
          for (const v of truth) packing.scale = Math.max(packing.scale, Math.abs(v));
        }
        seq.dispose();
        await model.dispose();
        t.true(worstGraph < 2e-3, `graph vs reference on the packed weights: max |diff| ${worstGraph}`);
        // What packing for MatMulNBits costs, against the GGUF's exact values (logged for the notes).
        t.log(
          `${mix}: packed vs exact weights, logits max |diff| ${packing.max.toPrecision(3)}, RMS ${packing.rms.toPrecision(3)} (largest |logit| ${packing.scale.toPrecision(3)})`,
        );
        t.true(packing.max < 0.1 * packing.scale, 'packing moved a logit by more than 10% of the largest');
        // Q4_K maps exactly (scale, zero point 0, and its mins as a block offset); Q4_0 exactly (scale, 8).
        if (mix === 'Q4_K' || mix.startsWith('Q4_0'))
          t.true(packing.max < 1e-6 * packing.scale, `${mix} packing is not exact: ${packing.max}`);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    },
  );
}
