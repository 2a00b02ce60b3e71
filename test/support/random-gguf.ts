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
  /** The GGUF architecture, whose tensor names and metadata the file gets. @default 'llama' */
  readonly architecture?: 'llama' | 'qwen2' | 'qwen3' | 'gemma3';
  /** @default hidden / heads */
  readonly headDim?: number;
  /** gemma3: keys a sliding-window layer sees (every 6th layer, from the 6th, is global). */
  readonly slidingWindow?: number;
  /** llama: write Llama 3's rope_freqs.weight (per-frequency divisors). */
  readonly ropeFreqs?: boolean;
}

/** Bytes per block, elements per block, and fp16 fields the generator fixes: [byte offset, half bits]. */
const BLOCKS: Partial<
  Record<GgmlType, { bytes: number; elements: number; halves: readonly (readonly [number, number])[] }>
> = {
  // Magnitudes chosen so that weights stay within about ±0.25 (a few layers keep activations finite).
  [GgmlType.Q4_0]: { bytes: 18, elements: 32, halves: [[0, 0x2266]] }, // 0.0125 · (q − 8)
  [GgmlType.Q5_0]: { bytes: 22, elements: 32, halves: [[0, 0x2000]] }, // 2^-7 · (q − 16)
  [GgmlType.Q5_1]: {
    bytes: 24,
    elements: 32,
    halves: [
      [0, 0x2000],
      [2, 0xafae],
    ],
  }, // 2^-7 · q − 0.12
  [GgmlType.Q8_0]: { bytes: 34, elements: 32, halves: [[0, 0x1c00]] }, // 2^-8 · q
  [GgmlType.Q4_K]: {
    bytes: 144,
    elements: 256,
    halves: [
      [0, 0x0c00],
      [2, 0x0c00],
    ],
  }, // 2^-12 · sc · q − 2^-12 · m
  [GgmlType.Q5_K]: {
    bytes: 176,
    elements: 256,
    halves: [
      [0, 0x0800],
      [2, 0x0800],
    ],
  }, // 2^-13 · sc · q − 2^-13 · m
  [GgmlType.Q6_K]: { bytes: 210, elements: 256, halves: [[208, 0x0400]] }, // 2^-16 · sc · (q − 32)
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
    for (const [offset, bits] of spec.halves) {
      out[b * spec.bytes + offset] = bits & 0xff;
      out[b * spec.bytes + offset + 1] = bits >> 8;
    }
  }
  return out;
}

function ones(n: number): Uint8Array {
  return new Uint8Array(new Float32Array(n).fill(1).buffer);
}

/** Deterministic float32 values in [lo, hi). */
function uniform(n: number, lo: number, hi: number, seed: number): Uint8Array {
  const out = new Float32Array(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = lo + ((x >>> 0) / 2 ** 32) * (hi - lo);
  }
  return new Uint8Array(out.buffer);
}

function toMeta(key: string, value: GgufValue): MetaValue | undefined {
  if (typeof value === 'string') return { str: value };
  if (typeof value === 'boolean') return { bool: value };
  if (typeof value === 'bigint') return { u32: Number(value) };
  if (typeof value === 'number')
    return Number.isInteger(value) && !/eps|freq|scale/.test(key) ? { u32: value } : { f32: value };
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
export function randomLlamaGguf(
  tokenizerFrom: GgufFile,
  shape: RandomLlamaShape,
  typeOf: (name: string) => GgmlType,
  seed = 1,
): Buffer {
  const { layers, hidden, ffn, heads, kvHeads } = shape;
  const arch = shape.architecture ?? 'llama';
  const headDim = shape.headDim ?? hidden / heads;
  const meta: Record<string, MetaValue> = {};
  for (const [key, value] of tokenizerFrom.metadata) {
    if (key.startsWith(`${String(tokenizerFrom.metadata.get('general.architecture'))}.`) || key.startsWith('general.'))
      continue;
    const m = toMeta(key, value);
    if (m !== undefined) meta[key] = m;
  }
  const vocab = (tokenizerFrom.metadata.get('tokenizer.ggml.tokens') as unknown[]).length;
  Object.assign(meta, {
    'general.architecture': { str: arch },
    'general.name': { str: `random ${arch} ${layers}x${hidden}` },
    [`${arch}.block_count`]: { u32: layers },
    [`${arch}.context_length`]: { u32: 8192 },
    [`${arch}.embedding_length`]: { u32: hidden },
    [`${arch}.feed_forward_length`]: { u32: ffn },
    [`${arch}.attention.head_count`]: { u32: heads },
    [`${arch}.attention.head_count_kv`]: { u32: kvHeads },
    [`${arch}.attention.key_length`]: { u32: headDim },
    [`${arch}.attention.value_length`]: { u32: headDim },
    [`${arch}.rope.dimension_count`]: { u32: headDim },
    [`${arch}.rope.freq_base`]: { f32: 130000 },
    [`${arch}.attention.layer_norm_rms_epsilon`]: { f32: 1e-5 },
    [`${arch}.vocab_size`]: { u32: vocab },
  } satisfies Record<string, MetaValue>);
  if (arch === 'gemma3' && shape.slidingWindow !== undefined)
    meta[`${arch}.attention.sliding_window`] = { u32: shape.slidingWindow };
  let next = seed;
  const nextSeed = () => (next++ * 2654435761) >>> 0;
  const matrix = (name: string, k: number, n: number): TensorSpec => {
    const type = typeOf(name);
    return { name, dims: [k, n], type, data: randomBlocks(type, k * n, nextSeed()) };
  };
  const norm = (name: string): TensorSpec => ({ name, dims: [hidden], type: GgmlType.F32, data: ones(hidden) });
  // The newer architectures' extra vectors get varied values, so a misplaced one shows.
  const vector = (name: string, n: number, lo: number, hi: number): TensorSpec => ({
    name,
    dims: [n],
    type: GgmlType.F32,
    data: uniform(n, lo, hi, nextSeed()),
  });
  const tensors: TensorSpec[] = [matrix('token_embd.weight', hidden, vocab), norm('output_norm.weight')];
  if (shape.ropeFreqs === true) tensors.push(vector('rope_freqs.weight', headDim / 2, 1, 8));
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
    if (arch === 'qwen2') {
      tensors.push(
        vector(`${p}.attn_q.bias`, heads * headDim, -0.5, 0.5),
        vector(`${p}.attn_k.bias`, kvHeads * headDim, -0.5, 0.5),
        vector(`${p}.attn_v.bias`, kvHeads * headDim, -0.5, 0.5),
      );
    }
    if (arch === 'qwen3' || arch === 'gemma3') {
      tensors.push(
        vector(`${p}.attn_q_norm.weight`, headDim, 0.5, 1.5),
        vector(`${p}.attn_k_norm.weight`, headDim, 0.5, 1.5),
      );
    }
    if (arch === 'gemma3') {
      tensors.push(
        vector(`${p}.post_attention_norm.weight`, hidden, 0.5, 1.5),
        vector(`${p}.post_ffw_norm.weight`, hidden, 0.5, 1.5),
      );
    }
  }
  return writeGguf(meta, tensors);
}
