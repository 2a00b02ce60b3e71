/**
 * A SmolLM2-1.7B-shaped llama checkpoint with random Q4_0 weights, written as GGUF with the
 * tokenizer metadata of a real GGUF (so both engines load it): for measuring how the per-step cost
 * grows with model size on a GPU. Outputs are meaningless; speed is not. Made on the GPU machine
 * (about 1 GB: too big to carry there).
 *   node dist/bench/gpu/random-gguf.js --tokenizer-from REAL.gguf --out BIG.gguf [--layers 24 --hidden 2048 --ffn 8192 --heads 32 --kv-heads 32]
 */
import { writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { GgmlType, readGguf, type GgufValue } from '../../src/convert/gguf-reader.js';
import { type MetaValue, type TensorSpec, writeGguf } from '../../test/support/gguf-writer.js';

const Q4_0_BLOCK_BYTES = 18;

/** Deterministic random Q4_0 blocks: a small fp16 scale and random nibbles. */
function randomQ4_0(elements: number, seed: number): Uint8Array {
  const blocks = elements / 32;
  const out = new Uint8Array(blocks * Q4_0_BLOCK_BYTES);
  let x = seed >>> 0 || 1;
  for (let b = 0; b < blocks; b++) {
    const o = b * Q4_0_BLOCK_BYTES;
    // fp16 0.0125 = 0x2266: weights in about ±0.1, so activations stay finite through 24 layers.
    out[o] = 0x66;
    out[o + 1] = 0x22;
    for (let i = 2; i < Q4_0_BLOCK_BYTES; i += 4) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      out[o + i] = x & 0xff;
      out[o + i + 1] = (x >>> 8) & 0xff;
      if (i + 2 < Q4_0_BLOCK_BYTES) out[o + i + 2] = (x >>> 16) & 0xff;
      if (i + 3 < Q4_0_BLOCK_BYTES) out[o + i + 3] = (x >>> 24) & 0xff;
    }
  }
  return out;
}

function ones(n: number): Uint8Array {
  return new Uint8Array(new Float32Array(n).fill(1).buffer);
}

function toMeta(key: string, value: GgufValue): MetaValue | undefined {
  if (typeof value === 'string') return { str: value };
  if (typeof value === 'boolean') return { bool: value };
  if (typeof value === 'bigint') return { u32: Number(value) };
  if (typeof value === 'number') return Number.isInteger(value) && !/eps|freq|scale/.test(key) ? { u32: value } : { f32: value };
  if (Array.isArray(value)) {
    if (value.every((v) => typeof v === 'string')) return { strs: value as string[] };
    if (value.every((v) => typeof v === 'number')) return { i32s: value as number[] };
  }
  return undefined;
}

function main(): void {
  const { values } = parseArgs({
    options: {
      'tokenizer-from': { type: 'string' },
      out: { type: 'string' },
      layers: { type: 'string', default: '24' },
      hidden: { type: 'string', default: '2048' },
      ffn: { type: 'string', default: '8192' },
      heads: { type: 'string', default: '32' },
      'kv-heads': { type: 'string', default: '32' },
    },
  });
  if (values['tokenizer-from'] === undefined || values.out === undefined) throw new Error('--tokenizer-from REAL.gguf and --out FILE are required');
  const real = readGguf(values['tokenizer-from']);
  const [layers, hidden, ffn, heads, kvHeads] = [values.layers, values.hidden, values.ffn, values.heads, values['kv-heads']].map(Number) as [number, number, number, number, number];
  const headDim = hidden / heads;
  const meta: Record<string, MetaValue> = {};
  for (const [key, value] of real.metadata) {
    if (key.startsWith('llama.') || key.startsWith('general.')) continue;
    const m = toMeta(key, value);
    if (m !== undefined) meta[key] = m;
  }
  const vocab = (real.metadata.get('tokenizer.ggml.tokens') as unknown[]).length;
  Object.assign(meta, {
    'general.architecture': { str: 'llama' },
    'general.name': { str: `random llama ${layers}x${hidden}` },
    'llama.block_count': { u32: layers },
    'llama.context_length': { u32: 8192 },
    'llama.embedding_length': { u32: hidden },
    'llama.feed_forward_length': { u32: ffn },
    'llama.attention.head_count': { u32: heads },
    'llama.attention.head_count_kv': { u32: kvHeads },
    'llama.rope.dimension_count': { u32: headDim },
    'llama.rope.freq_base': { f32: 130000 },
    'llama.attention.layer_norm_rms_epsilon': { f32: 1e-5 },
    'llama.vocab_size': { u32: vocab },
  } satisfies Record<string, MetaValue>);
  let seed = 1;
  const q = (name: string, k: number, n: number): TensorSpec => ({ name, dims: [k, n], type: GgmlType.Q4_0, data: randomQ4_0(k * n, seed++ * 2654435761) });
  const tensors: TensorSpec[] = [q('token_embd.weight', hidden, vocab), { name: 'output_norm.weight', dims: [hidden], type: GgmlType.F32, data: ones(hidden) }];
  for (let l = 0; l < layers; l++) {
    const p = `blk.${l}`;
    tensors.push(
      { name: `${p}.attn_norm.weight`, dims: [hidden], type: GgmlType.F32, data: ones(hidden) },
      q(`${p}.attn_q.weight`, hidden, heads * headDim),
      q(`${p}.attn_k.weight`, hidden, kvHeads * headDim),
      q(`${p}.attn_v.weight`, hidden, kvHeads * headDim),
      q(`${p}.attn_output.weight`, heads * headDim, hidden),
      { name: `${p}.ffn_norm.weight`, dims: [hidden], type: GgmlType.F32, data: ones(hidden) },
      q(`${p}.ffn_gate.weight`, hidden, ffn),
      q(`${p}.ffn_up.weight`, hidden, ffn),
      q(`${p}.ffn_down.weight`, ffn, hidden),
    );
  }
  const file = writeGguf(meta, tensors);
  writeFileSync(values.out, file);
  process.stderr.write(`${values.out}: ${layers} layers, hidden ${hidden}, ffn ${ffn}, ${heads}/${kvHeads} heads, vocab ${vocab}, ${(file.length / 1e9).toFixed(2)} GB\n`);
}

main();
