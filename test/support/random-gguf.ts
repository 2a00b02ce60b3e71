/**
 * Llama-shaped GGUF files with random weights of chosen ggml types, carrying a real GGUF's
 * tokenizer metadata so that the converter and both engines load them: for the converter's tests
 * (every quant type through the graph against the reference forward) and for speed at other model
 * sizes (bench/gpu/random-gguf.ts). Deterministic for a given seed.
 */
import { GgmlType, type GgufFile, type GgufValue } from '../../src/convert/gguf-reader.js';
import { type MetaValue, type TensorSpec, writeGguf } from './gguf-writer.js';

export interface RandomLlamaShape {
  readonly layers: number;
  readonly hidden: number;
  readonly ffn: number;
  readonly heads: number;
  readonly kvHeads: number;
}

/** Bytes per block, elements per block, and the byte offsets of fp16 scales the generator sets to `scale`. */
const BLOCKS: Partial<Record<GgmlType, { bytes: number; elements: number; halves: readonly number[]; scale: number }>> = {
  // Magnitudes chosen so that weights stay within about ±0.25 (a few layers keep activations finite).
  [GgmlType.Q4_0]: { bytes: 18, elements: 32, halves: [0], scale: 0x2266 }, // 0.0125 · (q − 8)
  [GgmlType.Q8_0]: { bytes: 34, elements: 32, halves: [0], scale: 0x1c00 }, // 2^-8 · q
  [GgmlType.Q4_K]: { bytes: 144, elements: 256, halves: [0, 2], scale: 0x0c00 }, // 2^-12 · sc · q − 2^-12 · m
  [GgmlType.Q5_K]: { bytes: 176, elements: 256, halves: [0, 2], scale: 0x0800 }, // 2^-13 · sc · q − 2^-13 · m
  [GgmlType.Q6_K]: { bytes: 210, elements: 256, halves: [208], scale: 0x0400 }, // 2^-16 · sc · (q − 32)
};

export function randomBlocks(type: GgmlType, elements: number, seed: number): Uint8Array {
  const spec = BLOCKS[type];
  if (spec === undefined) throw new Error(`randomBlocks: no generator for ${GgmlType[type]}`);
  const blocks = elements / spec.elements;
  const out = new Uint8Array(blocks * spec.bytes);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < out.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  for (let b = 0; b < blocks; b++) {
    for (const h of spec.halves) {
      out[b * spec.bytes + h] = spec.scale & 0xff;
      out[b * spec.bytes + h + 1] = spec.scale >> 8;
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

/**
 * A llama GGUF of the given shape; `typeOf(tensor name)` picks each matrix's ggml type (norms are
 * F32). The vocabulary and tokenizer come from `tokenizerFrom`.
 */
export function randomLlamaGguf(tokenizerFrom: GgufFile, shape: RandomLlamaShape, typeOf: (name: string) => GgmlType, seed = 1): Buffer {
  const { layers, hidden, ffn, heads, kvHeads } = shape;
  const headDim = hidden / heads;
  const meta: Record<string, MetaValue> = {};
  for (const [key, value] of tokenizerFrom.metadata) {
    if (key.startsWith('llama.') || key.startsWith('general.')) continue;
    const m = toMeta(key, value);
    if (m !== undefined) meta[key] = m;
  }
  const vocab = (tokenizerFrom.metadata.get('tokenizer.ggml.tokens') as unknown[]).length;
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
  let next = seed;
  const matrix = (name: string, k: number, n: number): TensorSpec => {
    const type = typeOf(name);
    return { name, dims: [k, n], type, data: randomBlocks(type, k * n, (next++ * 2654435761) >>> 0) };
  };
  const norm = (name: string): TensorSpec => ({ name, dims: [hidden], type: GgmlType.F32, data: ones(hidden) });
  const tensors: TensorSpec[] = [matrix('token_embd.weight', hidden, vocab), norm('output_norm.weight')];
  for (let l = 0; l < layers; l++) {
    const p = `blk.${l}`;
    tensors.push(
      norm(`${p}.attn_norm.weight`),
      matrix(`${p}.attn_q.weight`, hidden, heads * headDim),
      matrix(`${p}.attn_k.weight`, hidden, kvHeads * headDim),
      matrix(`${p}.attn_v.weight`, hidden, kvHeads * headDim),
      matrix(`${p}.attn_output.weight`, heads * headDim, hidden),
      norm(`${p}.ffn_norm.weight`),
      matrix(`${p}.ffn_gate.weight`, hidden, ffn),
      matrix(`${p}.ffn_up.weight`, hidden, ffn),
      matrix(`${p}.ffn_down.weight`, ffn, hidden),
    );
  }
  return writeGguf(meta, tensors);
}
