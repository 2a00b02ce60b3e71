/**
 * Every architecture the converter takes (llama with Llama 3's rope_freqs, qwen2, qwen3, gemma3),
 * as GGUFs written here with random weights and each architecture's tensor names and metadata,
 * in a mix of the quant types real files use (Q8_0, Q5_0, Q5_1, Q4_K, Q6_K): converted, run on
 * each CPU attention kernel, and compared position by position with the independent JS forward
 * (test/support/reference-llama.ts) on the same packed weights. The 12-token prompt is longer than
 * the Gemma file's 4-key sliding window, so windowed and global layers both show.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { convertGguf } from '../src/convert/convert-gguf.js';
import { GgmlType, readGguf } from '../src/convert/gguf-reader.js';
import { DEFAULT_GRAPH_OPTIONS, readHyperParams } from '../src/convert/decoder-graph.js';
import { loadDecoderModel } from '../src/runtime/load-model.js';
import type { RuntimeOptions } from '../src/runtime/types.js';
import { defaultGguf } from './support/default-model.js';
import { type RandomLlamaShape, randomLlamaGguf } from './support/random-gguf.js';
import { ReferenceLlama } from './support/reference-llama.js';

const TOKENS = [1, 4093, 198, 1780, 314, 260, 3575, 282, 907, 28, 2114, 30];
const VOCAB = 49152;
const BASE = { layers: 2, hidden: 256, ffn: 512, heads: 4, kvHeads: 2, headDim: 32 };

/** A Q4_K_M-like mix (Gemma 3 270M's own file has Q5_0 q/k/gate/up, Q8_0 v and embedding, Q4_K/Q6_K elsewhere). */
function mix(attnOutput: GgmlType): (name: string) => GgmlType {
  return (name) => {
    if (/token_embd|attn_v/.test(name)) return GgmlType.Q8_0;
    if (/attn_q|attn_k/.test(name)) return GgmlType.Q5_0;
    if (/attn_output/.test(name)) return attnOutput;
    if (/ffn_down/.test(name)) return GgmlType.Q6_K;
    return GgmlType.Q4_K;
  };
}

const CASES: Record<string, { shape: RandomLlamaShape; types: (name: string) => GgmlType }> = {
  'llama (Llama 3 rope_freqs)': {
    shape: { ...BASE, architecture: 'llama', ropeFreqs: true },
    types: mix(GgmlType.Q5_0),
  },
  qwen2: { shape: { ...BASE, architecture: 'qwen2' }, types: mix(GgmlType.Q5_1) },
  qwen3: { shape: { ...BASE, architecture: 'qwen3' }, types: mix(GgmlType.Q5_0) },
  // Six layers: the sixth is global (Gemma 3's pattern), the others see 4 keys.
  gemma3: { shape: { ...BASE, layers: 6, architecture: 'gemma3', slidingWindow: 4 }, types: mix(GgmlType.Q8_0) },
};

const KERNELS: Record<string, Partial<RuntimeOptions>> = {
  'onnxruntime-node': { nativeRun: 'off' },
  'native runner, ORT attention': { experimental: { nativeAttention: 'off' } },
  'native runner, our attention': {},
};

function maxDiff(a: Float32Array, b: Float32Array): number {
  let max = 0;
  for (let i = 0; i < a.length; i++) max = Math.max(max, Math.abs(a[i]! - b[i]!));
  return max;
}

for (const [name, c] of Object.entries(CASES)) {
  test.serial(
    `${name}: converts, and its graph matches the reference forward on every CPU attention kernel`,
    async (t) => {
      const dir = mkdtempSync(join(tmpdir(), 'anpd-arch-'));
      try {
        const ggufPath = join(dir, 'model.gguf');
        writeFileSync(ggufPath, randomLlamaGguf(readGguf(await defaultGguf()), c.shape, c.types, 11));
        const file = readGguf(ggufPath);
        const hp = readHyperParams(file);
        t.is(hp.architecture, c.shape.architecture ?? 'llama');
        t.is(hp.headDim, 32);
        if (hp.architecture === 'gemma3') t.deepEqual(hp.slidingLayers, [true, true, true, true, true, false]);
        // accuracy_level 0: MatMulNBits in float32, so a difference is the graph's.
        convertGguf(ggufPath, join(dir, 'model'), { ...DEFAULT_GRAPH_OPTIONS, accuracyLevel: 0 });
        const reference = new ReferenceLlama(file);
        const expected = TOKENS.map((token) => reference.step(token));
        let scale = 0;
        for (const row of expected) for (const v of row) scale = Math.max(scale, Math.abs(v));
        t.true(scale > 0.5, `logits too small to compare meaningfully (largest ${scale})`);
        for (const [kernel, options] of Object.entries(KERNELS)) {
          const model = await loadDecoderModel(join(dir, 'model'), {
            executionProvider: 'cpu',
            intraOpThreads: 1,
            kvCapacity: 64,
            ...options,
          });
          try {
            // All at once (prefill), then the same positions one token at a time (decode).
            const whole = model.createSequence();
            const logits = await whole.forward(TOKENS, TOKENS.length);
            whole.dispose();
            const stepwise = model.createSequence();
            let worst = 0;
            for (let p = 0; p < TOKENS.length; p++) {
              worst = Math.max(worst, maxDiff(logits.subarray(p * VOCAB, (p + 1) * VOCAB), expected[p]!));
              const row = await stepwise.forward([TOKENS[p]!], 1);
              worst = Math.max(worst, maxDiff(row.subarray(0, VOCAB), expected[p]!));
            }
            stepwise.dispose();
            t.true(
              worst < 2e-3 * Math.max(1, scale),
              `${kernel}: max |logit − reference| ${worst} (largest |logit| ${scale.toPrecision(3)})`,
            );
          } finally {
            await model.dispose();
          }
        }
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    },
  );
}

test.serial("gemma3: past a 128-key block boundary, our attention kernel windows as ORT's does", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'anpd-arch-'));
  try {
    const ggufPath = join(dir, 'model.gguf');
    // A 40-key window: by position 170 whole blocks lie before it, and it straddles a boundary.
    writeFileSync(
      ggufPath,
      randomLlamaGguf(
        readGguf(await defaultGguf()),
        { ...BASE, layers: 6, architecture: 'gemma3', slidingWindow: 40 },
        mix(GgmlType.Q8_0),
        13,
      ),
    );
    convertGguf(ggufPath, join(dir, 'model'), { ...DEFAULT_GRAPH_OPTIONS, accuracyLevel: 0 });
    const prompt = Array.from({ length: 170 }, (_, i) => (i * 7919) % 40000);
    const decode = [5, 77, 901, 13];
    const run = async (options: Partial<RuntimeOptions>): Promise<Float32Array[]> => {
      const model = await loadDecoderModel(join(dir, 'model'), {
        executionProvider: 'cpu',
        intraOpThreads: 1,
        kvCapacity: 256,
        ...options,
      });
      try {
        const seq = model.createSequence();
        const rows = [(await seq.forward(prompt, prompt.length)).slice(-VOCAB)];
        for (const token of decode) rows.push((await seq.forward([token], 1)).slice(0, VOCAB));
        seq.dispose();
        return rows;
      } finally {
        await model.dispose();
      }
    };
    const ort = await run({ experimental: { nativeAttention: 'off' } });
    const ours = await run({});
    let worst = 0;
    ort.forEach((row, i) => (worst = Math.max(worst, maxDiff(row, ours[i]!))));
    t.true(worst < 2e-3, `max |logit difference| ${worst}`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
