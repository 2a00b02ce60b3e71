/**
 * Builds the decoder graph of every supported architecture (SUPPORTED_ARCHITECTURES: llama and mistral-as-llama, qwen2, qwen3, gemma3) from GGUF tensors.
 *
 * KV layout: one key and one value tensor per layer, [1, kvHeads, kvCapacity, headDim] float32,
 * fed as past_key_values.* and bound again as the present.* outputs, so GroupQueryAttention writes
 * new entries in place at [pastLength, pastLength+T). The KV "length" is a number the engine owns
 * (seqlens_k / total_sequence_length inputs), which makes rollback free: rewinding to n just means
 * the next forward passes pastLength = n and overwrites the stale tail.
 */
import { ModelFormatError } from '../errors.js';
import type { GgufFile, GgufTensorInfo } from './gguf-reader.js';
import { GgmlType, metaNumber, metaString, requireNumber } from './gguf-reader.js';
import {
  type AttributeValue,
  type GraphSpec,
  type Initializer,
  type NodeSpec,
  OnnxDataType,
  type ValueInfo,
} from './onnx-writer.js';
import { dequantize, matrixShape, type NBitsWeight, QUANT_BLOCK, toNBits, toNBits8, toNBitsParts } from './quantize.js';

export const SUPPORTED_ARCHITECTURES = ['llama', 'qwen2', 'qwen3', 'gemma3'] as const;
export type Architecture = (typeof SUPPORTED_ARCHITECTURES)[number];

export interface DecoderHyperParams {
  readonly architecture: Architecture;
  readonly layers: number;
  readonly hidden: number;
  readonly ffn: number;
  readonly heads: number;
  readonly kvHeads: number;
  readonly headDim: number;
  readonly vocab: number;
  readonly contextLength: number;
  readonly ropeTheta: number;
  readonly rmsEps: number;
  /** llama.cpp's llama rope rotates adjacent pairs (its converter permutes Q/K); the others use NeoX halves. */
  readonly ropeInterleaved: boolean;
  /** Positions are divided by this on global layers (GGUF rope.scaling.factor, type linear). */
  readonly ropeScale: number;
  /** Per-frequency divisors (Llama 3's `rope_freqs.weight`), or undefined. */
  readonly ropeFreqFactors: Float32Array | undefined;
  /** Per-head RMSNorm of q and k before rotary (Qwen3, Gemma 3). */
  readonly qkNorm: boolean;
  /** RMSNorm after attention and after the MLP, before each residual add (Gemma 3). */
  readonly postNorms: boolean;
  /** The gated MLP's activation: SwiGLU or GELU(tanh) (Gemma). */
  readonly activation: 'silu' | 'gelu_tanh';
  /** Embeddings are multiplied by this (Gemma: √hidden). */
  readonly embedScale: number;
  /** Softmax scale of attention. */
  readonly attentionScale: number;
  /** Keys a sliding-window layer sees, itself included (0: none). */
  readonly slidingWindow: number;
  /** Which layers use the sliding window (and the local rope base). */
  readonly slidingLayers: readonly boolean[];
  /** Rope base of sliding-window layers (Gemma 3: 10,000). */
  readonly ropeThetaLocal: number;
  /** Logits are soft-capped to ±this with tanh (0: none). */
  readonly finalLogitSoftcap: number;
}

export interface GraphOptions {
  /** 'nbits': MatMulNBits (4-bit layers, 8-bit head when the GGUF has Q8_0); 'f32': dequantized MatMul. */
  readonly weights: 'nbits' | 'f32';
  /** 'fused': (Skip)SimplifiedLayerNormalization; 'plain': Pow/ReduceMean/Sqrt/Div/Mul. */
  readonly norms: 'fused' | 'plain';
  /** accuracy_level for MatMulNBits (4 = int8 compute, the fast path on CPU). */
  readonly accuracyLevel: number;
  /**
   * 0: one sequence per forward. K > 0: K sequence slots per forward — their new tokens are
   * concatenated along the token axis (the projections and MLP run once over all of them), split
   * per slot for attention (one GroupQueryAttention per slot on that sequence's own KV, exactly as
   * in the single-sequence graph), and joined again. Rows are independent in every other op, so a
   * sequence's logits do not depend on what shares its forward.
   */
  readonly slots?: number;
  /**
   * Activations, norm weights, rotary tables, quantization scales and the KV cache in float32 (CPU,
   * WebGPU) or float16 (CUDA: ORT's CUDA GroupQueryAttention takes only 16-bit types). Logits stay
   * float32 either way (a Cast after the LM head). @default 'float32'
   */
  readonly dtype?: GraphDtype;
  /**
   * float16 only. 'paged': one graph for any number of sequences per forward (continuous batching
   * on CUDA): their new tokens packed along the token axis, attention by ORT's PagedAttention over
   * a block KV cache (each sequence's blocks named by a block table), which writes the new keys in
   * place and attends each sequence to its own past. Absent: GroupQueryAttention, one sequence (or
   * `slots`) per forward.
   */
  readonly attention?: 'paged';
}

export const GRAPH_DTYPES = ['float32', 'float16'] as const;
export type GraphDtype = (typeof GRAPH_DTYPES)[number];

export const DEFAULT_GRAPH_OPTIONS: GraphOptions = { weights: 'nbits', norms: 'fused', accuracyLevel: 4 };

/** The residual stream's scale in float16 graphs of post-norm architectures (Gemma). */
export const FLOAT16_RESIDUAL_SCALE = 1 / 8;

/** Gemma 3 makes every 6th layer global unless the file says otherwise (as llama.cpp does). */
const GEMMA3_SLIDING_PATTERN = 6;

export function readHyperParams(file: GgufFile): DecoderHyperParams {
  const arch = metaString(file, 'general.architecture');
  if (arch === undefined) throw new ModelFormatError(file.path, 'metadata general.architecture is missing');
  if (!(SUPPORTED_ARCHITECTURES as readonly string[]).includes(arch)) {
    throw new ModelFormatError(
      file.path,
      `unsupported architecture "${arch}" (supported: ${SUPPORTED_ARCHITECTURES.join(', ')})`,
    );
  }
  const a = arch as Architecture;
  const hidden = requireNumber(file, `${a}.embedding_length`);
  const heads = requireNumber(file, `${a}.attention.head_count`);
  const layers = requireNumber(file, `${a}.block_count`);
  const embd = file.tensors.get('token_embd.weight');
  if (embd === undefined) throw new ModelFormatError(file.path, 'tensor token_embd.weight is missing');
  const headDim =
    metaNumber(file, `${a}.attention.key_length`) ?? metaNumber(file, `${a}.rope.dimension_count`) ?? hidden / heads;
  const valueDim = metaNumber(file, `${a}.attention.value_length`) ?? headDim;
  const ropeDim = metaNumber(file, `${a}.rope.dimension_count`) ?? headDim;
  if (valueDim !== headDim)
    throw new ModelFormatError(
      file.path,
      `value head size ${valueDim} differs from key head size ${headDim} (not supported)`,
    );
  if (ropeDim !== headDim)
    throw new ModelFormatError(file.path, `partial rotary (${ropeDim} of ${headDim} dimensions) is not supported`);
  const scalingType = metaString(file, `${a}.rope.scaling.type`) ?? 'none';
  if (scalingType !== 'none' && scalingType !== 'linear') {
    throw new ModelFormatError(
      file.path,
      `rope scaling "${scalingType}" is not supported (supported: none, linear, Llama 3 rope_freqs)`,
    );
  }
  const ropeScale = metaNumber(file, `${a}.rope.scaling.factor`) ?? metaNumber(file, `${a}.rope.scale_linear`) ?? 1;
  const freqs = file.tensors.get('rope_freqs.weight');
  const gemma = a === 'gemma3';
  const slidingWindow = gemma ? (metaNumber(file, `${a}.attention.sliding_window`) ?? 0) : 0;
  const pattern = file.metadata.get(`${a}.attention.sliding_window_pattern`);
  const slidingLayers = Array.from({ length: layers }, (_, l) => {
    if (slidingWindow <= 0) return false;
    if (Array.isArray(pattern)) return pattern[l] === true;
    const n = typeof pattern === 'number' ? pattern : GEMMA3_SLIDING_PATTERN;
    return n === 0 || l % n < n - 1;
  });
  return {
    architecture: a,
    layers,
    hidden,
    ffn: requireNumber(file, `${a}.feed_forward_length`),
    heads,
    kvHeads: metaNumber(file, `${a}.attention.head_count_kv`) ?? heads,
    headDim,
    vocab: metaNumber(file, `${a}.vocab_size`) ?? embd.dims[1]!,
    contextLength: requireNumber(file, `${a}.context_length`),
    ropeTheta: metaNumber(file, `${a}.rope.freq_base`) ?? 10000,
    rmsEps: metaNumber(file, `${a}.attention.layer_norm_rms_epsilon`) ?? 1e-5,
    ropeInterleaved: a === 'llama',
    ropeScale: ropeScale > 0 ? ropeScale : 1,
    ropeFreqFactors: freqs === undefined ? undefined : dequantize(file, freqs),
    qkNorm: file.tensors.has('blk.0.attn_q_norm.weight'),
    postNorms: file.tensors.has('blk.0.post_attention_norm.weight'),
    activation: gemma ? 'gelu_tanh' : 'silu',
    embedScale: gemma ? Math.fround(Math.sqrt(hidden)) : 1,
    // As llama.cpp: Gemma 3 27B scales by hidden/heads, every other size by the head size.
    attentionScale: gemma && layers === 62 ? 1 / Math.sqrt(hidden / heads) : 1 / Math.sqrt(headDim),
    slidingWindow,
    slidingLayers,
    ropeThetaLocal: metaNumber(file, `${a}.rope.freq_base_swa`) ?? 10000,
    finalLogitSoftcap: metaNumber(file, `${a}.final_logit_softcapping`) ?? 0,
  };
}

/**
 * cos/sin tables [positions, headDim/2] of rope with base `theta`: angle = (p / scale) · θ^(−2i/d) / factor_i,
 * in double precision, as llama.cpp computes them (its rope takes theta_scale = base^(−2/d) powers).
 */
export function ropeTables(
  positions: number,
  headDim: number,
  theta: number,
  scale: number,
  factors: Float32Array | undefined,
): { cos: Float32Array; sin: Float32Array } {
  const half = headDim / 2;
  const cos = new Float32Array(positions * half);
  const sin = new Float32Array(positions * half);
  for (let p = 0; p < positions; p++) {
    for (let i = 0; i < half; i++) {
      const angle = ((p / scale) * theta ** ((-2 * i) / headDim)) / (factors?.[i] ?? 1);
      cos[p * half + i] = Math.cos(angle);
      sin[p * half + i] = Math.sin(angle);
    }
  }
  return { cos, sin };
}

/** Names of the graph's inputs and outputs: the runtime binds these. */
export const IO = {
  inputIds: 'input_ids',
  seqlensK: 'seqlens_k',
  totalSequenceLength: 'total_sequence_length',
  /** Rows [logits_start, logits_end) of the new positions go through the LM head. */
  logitsStart: 'logits_start',
  logitsEnd: 'logits_end',
  logits: 'logits',
  /** float16 graphs: the argmax of each logits row (int64), so greedy decoding can skip the logits' download. */
  argmax: 'argmax',
  pastKey: (layer: number) => `past_key_values.${layer}.key`,
  pastValue: (layer: number) => `past_key_values.${layer}.value`,
  presentKey: (layer: number) => `present.${layer}.key`,
  presentValue: (layer: number) => `present.${layer}.value`,
} as const;

/** Inputs and outputs of the paged graph (GraphOptions.attention 'paged'): B sequences, T tokens in all. */
export const PAGED_IO = {
  /** [1, T] int64: every sequence's new tokens, one after the other. */
  inputIds: 'input_ids',
  /** [B + 1] int32: where each sequence's tokens start in input_ids (0, …, T). */
  cumulativeSequenceLength: 'cumulative_sequence_length',
  /** [B] int32: tokens already in each sequence's cache (the new ones go at these positions). */
  pastSeqlens: 'past_seqlens',
  /** [B, blocks per sequence] int32: each sequence's cache blocks, in position order. */
  blockTable: 'block_table',
  /** [2] int32, host: upper bounds of the new tokens and of the KV length per sequence (sizes kernels; CUDA graphs need it). */
  attentionMetadata: 'attention_metadata',
  /** [R] int64: which of the T rows go through the LM head (logits come back in that order). */
  logitsIndex: 'logits_index',
  logits: 'logits',
  argmax: 'argmax',
  /** [blocks, block size, kvHeads, headDim]: every sequence's keys of a layer (written in place). */
  keyCache: (layer: number) => `key_cache.${layer}`,
  valueCache: (layer: number) => `value_cache.${layer}`,
  keyCacheOut: (layer: number) => `key_cache_out.${layer}`,
  valueCacheOut: (layer: number) => `value_cache_out.${layer}`,
} as const;

/** Positions per KV block of the paged graph: what ORT's flash path over a paged cache needs for the head size. */
export function pagedBlockSize(headDim: number): number {
  return headDim <= 64 ? 256 : headDim <= 128 ? 128 : 64;
}

/** Inputs and outputs of the K-slot graph (GraphOptions.slots); slot s's KV is its own tensors. */
export const SLOT_IO = {
  inputIds: 'input_ids',
  /** [K] int64: new tokens of each slot, in slot order (their sum is input_ids' length). */
  slotTokens: 'slot_tokens',
  /** [R] int64: which rows of input_ids go through the LM head (logits come back in that order). */
  logitsIndex: 'logits_index',
  logits: 'logits',
  seqlensK: (slot: number) => `seqlens_k.${slot}`,
  totalSequenceLength: (slot: number) => `total_sequence_length.${slot}`,
  pastKey: (slot: number, layer: number) => `past_key_values.${slot}.${layer}.key`,
  pastValue: (slot: number, layer: number) => `past_key_values.${slot}.${layer}.value`,
  presentKey: (slot: number, layer: number) => `present.${slot}.${layer}.key`,
  presentValue: (slot: number, layer: number) => `present.${slot}.${layer}.value`,
} as const;

function f32Bytes(a: Float32Array): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

const f32View = new Float32Array(1);
const u32View = new Uint32Array(f32View.buffer);

/** IEEE binary16 bits of x, rounded to nearest even (as ORT's and numpy's conversions round). */
export function toHalfBits(x: number): number {
  f32View[0] = x;
  const bits = u32View[0]!;
  const sign = (bits >>> 16) & 0x8000;
  const exponent = (bits >>> 23) & 0xff;
  let mantissa = bits & 0x7fffff;
  if (exponent === 0xff) return sign | 0x7c00 | (mantissa !== 0 ? 0x200 : 0);
  const e = exponent - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mantissa |= 0x800000;
    const shift = 14 - e;
    const half = mantissa >>> shift;
    const rest = mantissa & ((1 << shift) - 1);
    const midpoint = 1 << (shift - 1);
    return sign | (rest > midpoint || (rest === midpoint && (half & 1) === 1) ? half + 1 : half);
  }
  const half = (e << 10) | (mantissa >>> 13);
  const rest = mantissa & 0x1fff;
  // A carry out of the mantissa rolls into the exponent, which is the right rounding (up to infinity).
  return sign | (rest > 0x1000 || (rest === 0x1000 && (half & 1) === 1) ? half + 1 : half);
}

function f16Bytes(a: Float32Array): Uint8Array {
  const out = new Uint16Array(a.length);
  for (let i = 0; i < a.length; i++) out[i] = toHalfBits(a[i]!);
  return new Uint8Array(out.buffer);
}

class GraphBuilder {
  readonly nodes: NodeSpec[] = [];
  readonly initializers: Initializer[] = [];
  private counter = 0;
  /** The element type of activations and of every real-valued initializer. */
  readonly floatType: OnnxDataType;

  constructor(dtype: GraphDtype) {
    this.floatType = dtype === 'float16' ? OnnxDataType.FLOAT16 : OnnxDataType.FLOAT;
  }

  fresh(prefix: string): string {
    return `${prefix}_${this.counter++}`;
  }

  node(
    op: string,
    inputs: readonly string[],
    outputs: readonly string[],
    attributes?: NodeSpec['attributes'],
    domain?: string,
  ): void {
    this.nodes.push({
      op,
      inputs,
      outputs,
      name: this.fresh(op),
      ...(attributes ? { attributes } : {}),
      ...(domain ? { domain } : {}),
    });
  }

  one(op: string, inputs: readonly string[], attributes?: NodeSpec['attributes'], domain?: string): string {
    const out = this.fresh(op.toLowerCase());
    this.node(op, inputs, [out], attributes, domain);
    return out;
  }

  init(name: string, type: OnnxDataType, dims: readonly number[], data: Uint8Array): string {
    this.initializers.push({ name, type, dims, data });
    return name;
  }

  /** A real-valued initializer in the graph's float type. */
  f32(name: string, dims: readonly number[], data: Float32Array): string {
    return this.floatType === OnnxDataType.FLOAT16
      ? this.init(name, OnnxDataType.FLOAT16, dims, f16Bytes(data))
      : this.init(name, OnnxDataType.FLOAT, dims, f32Bytes(data));
  }

  i64(name: string, values: readonly number[], scalar = false): string {
    const data = new BigInt64Array(values.map((v) => BigInt(v)));
    return this.init(name, OnnxDataType.INT64, scalar ? [] : [values.length], new Uint8Array(data.buffer));
  }
}

/** Concatenates NBits weights along N (rows are independent, so the blobs simply append). */
function concatRows(parts: readonly NBitsWeight[]): NBitsWeight {
  const first = parts[0]!;
  for (const p of parts) {
    if (p.k !== first.k || p.bits !== first.bits || (p.bits === 8 && p.zeroPoints !== undefined)) {
      throw new Error('concatRows: incompatible parts');
    }
  }
  const cat = <T extends Uint8Array | Float32Array>(arrays: T[], ctor: new (n: number) => T): T => {
    const out = new ctor(arrays.reduce((s, a) => s + a.length, 0));
    let o = 0;
    for (const a of arrays) {
      out.set(a as never, o);
      o += a.length;
    }
    return out;
  };
  // Block mins (Q4_K) where any part has them; the others' blocks get 0.
  const withMins = parts.some((p) => p.blockMins !== undefined);
  return {
    bits: first.bits,
    n: parts.reduce((s, p) => s + p.n, 0),
    k: first.k,
    packed: cat(
      parts.map((p) => p.packed),
      Uint8Array,
    ),
    scales: cat(
      parts.map((p) => p.scales),
      Float32Array,
    ),
    // Zero points where any part has them; a symmetric part (Q4_0) gets its implied default, 8.
    zeroPoints: parts.every((p) => p.zeroPoints === undefined)
      ? undefined
      : cat(
          parts.map((p) => p.zeroPoints ?? new Uint8Array(p.n * Math.ceil(p.k / QUANT_BLOCK / 2)).fill(0x88)),
          Uint8Array,
        ),
    blockMins: withMins
      ? cat(
          parts.map((p) => p.blockMins ?? new Float32Array(p.scales.length)),
          Float32Array,
        )
      : undefined,
  };
}

export interface BuiltGraph {
  readonly graph: GraphSpec;
  readonly hyper: DecoderHyperParams;
  readonly kvCapacityDim: string;
  /** The graph also outputs IO.argmax. */
  readonly greedyOutput: boolean;
}

export type ProgressFn = (done: number, total: number) => void;

export function buildDecoderGraph(
  file: GgufFile,
  options: GraphOptions = DEFAULT_GRAPH_OPTIONS,
  progress?: ProgressFn,
): BuiltGraph {
  const hp = readHyperParams(file);
  const g = new GraphBuilder(options.dtype ?? 'float32');
  const kvType = g.floatType;
  const slots = options.slots ?? 0;
  if (!Number.isInteger(slots) || slots < 0 || slots > 64)
    throw new RangeError(`slots must be an integer in [0, 64], got ${slots}`);
  const paged = options.attention === 'paged';
  if (paged && (options.dtype !== 'float16' || slots > 0))
    throw new RangeError('paged attention is a float16 graph of its own (no slots): ORT runs it on CUDA only');
  const tensor = (name: string): GgufTensorInfo => {
    const t = file.tensors.get(name);
    if (t === undefined)
      throw new ModelFormatError(file.path, `tensor ${name} is missing (architecture ${hp.architecture})`);
    return t;
  };
  const optionalTensor = (name: string): GgufTensorInfo | undefined => file.tensors.get(name);
  const vector = (name: string): string => g.f32(name, [tensor(name).elementCount], dequantize(file, tensor(name)));

  /** y = x · Wᵀ for a ggml matrix W [N rows, K]; x [1, T, K] → [1, T, N]. */
  const linear = (x: string, name: string, weight: NBitsWeight | GgufTensorInfo): string => {
    if (options.weights === 'f32') {
      const t = weight as GgufTensorInfo;
      const { n, k } = matrixShape(file, t);
      const w = dequantize(file, t);
      const wt = new Float32Array(k * n); // MatMul wants [K, N]
      for (let r = 0; r < n; r++) for (let c = 0; c < k; c++) wt[c * n + r] = w[r * k + c]!;
      return g.one('MatMul', [x, g.f32(name, [k, n], wt)]);
    }
    const wq = weight as NBitsWeight;
    const blocksPerRow = wq.k / QUANT_BLOCK;
    const blob = (QUANT_BLOCK * wq.bits) / 8;
    const inputs = [
      x,
      g.init(`${name}.qweight`, OnnxDataType.UINT8, [wq.n, blocksPerRow, blob], wq.packed),
      g.f32(`${name}.scales`, [wq.n * blocksPerRow], wq.scales),
    ];
    if (wq.zeroPoints !== undefined) {
      inputs.push(g.init(`${name}.qzeros`, OnnxDataType.UINT8, [wq.zeroPoints.length], wq.zeroPoints));
    }
    const y = g.one(
      'MatMulNBits',
      inputs,
      { K: wq.k, N: wq.n, bits: wq.bits, block_size: QUANT_BLOCK, accuracy_level: options.accuracyLevel },
      'com.microsoft',
    );
    if (wq.blockMins === undefined) return y;
    // Q4_K's mins: y −= (Σ of each 32-block of x) · mins, a [K/32 × N] MatMul (1 extra bit a weight).
    const mins = new Float32Array(blocksPerRow * wq.n); // [K/32, N]
    for (let r = 0; r < wq.n; r++)
      for (let b = 0; b < blocksPerRow; b++) mins[b * wq.n + r] = wq.blockMins[r * blocksPerRow + b]!;
    const blockSums = g.one(
      'ReduceSum',
      [g.one('Reshape', [x, g.i64(g.fresh('shape'), [0, 0, blocksPerRow, QUANT_BLOCK])]), g.i64(g.fresh('axes'), [-1])],
      { keepdims: 0 },
    );
    return g.one('Sub', [y, g.one('MatMul', [blockSums, g.f32(`${name}.block_mins`, [blocksPerRow, wq.n], mins)])]);
  };
  const quant = (t: GgufTensorInfo): NBitsWeight => toNBits(file, t);

  /** Concatenated Q/K/V (or gate/up) projection: one MatMul instead of several small ones. */
  const fusedLinear = (x: string, name: string, names: readonly string[]): string => {
    const ts = names.map(tensor);
    if (options.weights === 'f32') {
      const outs = ts.map((t, i) => linear(x, `${name}.${i}`, t));
      return g.one('Concat', outs, { axis: -1 });
    }
    const parts = toNBitsParts(file, ts);
    return linear(x, name, concatRows(parts));
  };

  // float16 cannot hold Gemma's residual stream (it reaches ~1e5 on Gemma 3 270M; float16 stops at
  // 65,504): there the stream is carried scaled by 2^-3. RMSNorm does not see the scale when its
  // epsilon is scaled by the square, so the residual's norms take eps·s²; what is added to the
  // stream (the post-norms' outputs, the embedding) is scaled by s. A power of two: exact in float.
  const residualScale = g.floatType === OnnxDataType.FLOAT16 && hp.postNorms ? FLOAT16_RESIDUAL_SCALE : 1;
  const residualEps = hp.rmsEps * residualScale * residualScale;
  const rmsNorm = (x: string, weight: string, epsilon = hp.rmsEps): string => {
    if (options.norms === 'fused')
      return g.one('SimplifiedLayerNormalization', [x, weight], {
        axis: -1,
        epsilon: { float: epsilon },
        stash_type: 1,
      });
    const sq = g.one('Mul', [x, x]);
    const mean = g.one('ReduceMean', [sq, g.i64(g.fresh('axes'), [-1])], { keepdims: 1 });
    const rms = g.one('Sqrt', [g.one('Add', [mean, g.f32(g.fresh('eps'), [], new Float32Array([epsilon]))])]);
    return g.one('Mul', [g.one('Div', [x, rms]), weight]);
  };
  /** Returns [normalized(x + residual), x + residual]: a norm of the residual stream. */
  const skipNorm = (x: string, residual: string, weight: string): [string, string] => {
    if (options.norms === 'fused') {
      const normed = g.fresh('skipnorm');
      const sum = g.fresh('residual');
      g.node(
        'SkipSimplifiedLayerNormalization',
        [x, residual, weight],
        [normed, '', '', sum],
        { epsilon: { float: residualEps } },
        'com.microsoft',
      );
      return [normed, sum];
    }
    const sum = g.one('Add', [x, residual]);
    return [rmsNorm(sum, weight, residualEps), sum];
  };
  /** A post-norm's weight, times the residual scale (its output is added to the stream). */
  const postNormWeight = (name: string): string => {
    const w = dequantize(file, tensor(name));
    return g.f32(name, [w.length], residualScale === 1 ? w : w.map((v) => v * residualScale));
  };

  // Rotary tables [contextLength, headDim/2]: the global base (with its scaling) and, for sliding
  // layers, the local one.
  const tables = (theta: number, scale: number, name: string): [string, string] => {
    const { cos, sin } = ropeTables(hp.contextLength, hp.headDim, theta, scale, hp.ropeFreqFactors);
    return [
      g.f32(`${name}.cos_cache`, [hp.contextLength, hp.headDim / 2], cos),
      g.f32(`${name}.sin_cache`, [hp.contextLength, hp.headDim / 2], sin),
    ];
  };
  const globalRope = tables(hp.ropeTheta, hp.ropeScale, 'rotary');
  const localRope = hp.slidingLayers.some((s) => s) ? tables(hp.ropeThetaLocal, 1, 'rotary_local') : globalRope;

  // Embedding: gather rows of the (usually Q8_0) table.
  const embd = tensor('token_embd.weight');
  let x: string;
  // Quantized gather where the 8-bit form is exact (Q8_0, Q5_0); other types are dequantized.
  if ((embd.type === GgmlType.Q8_0 || embd.type === GgmlType.Q5_0) && options.weights === 'nbits') {
    const q = toNBits8(file, embd);
    x = g.one(
      'GatherBlockQuantized',
      [
        g.init('token_embd.qweight', OnnxDataType.UINT8, [q.n, q.k], q.packed),
        IO.inputIds,
        g.f32('token_embd.scales', [q.n, q.k / QUANT_BLOCK], q.scales),
      ],
      { gather_axis: 0, quantize_axis: 1, block_size: QUANT_BLOCK, bits: 8 },
      'com.microsoft',
    );
  } else {
    x = g.one('Gather', [g.f32('token_embd.weight', [hp.vocab, hp.hidden], dequantize(file, embd)), IO.inputIds], {
      axis: 0,
    });
  }
  const embedScale = hp.embedScale * residualScale;
  if (embedScale !== 1) x = g.one('Mul', [x, g.f32('token_embd.scale', [], new Float32Array([embedScale]))]);

  const kvCapacityDim = 'kv_capacity';
  const totalSteps = hp.layers + 1;
  let residual = x;
  let normed = rmsNorm(x, vector('blk.0.attn_norm.weight'), residualEps);
  for (let l = 0; l < hp.layers; l++) {
    const p = `blk.${l}`;
    let qkv = fusedLinear(normed, `${p}.attn_qkv`, [`${p}.attn_q.weight`, `${p}.attn_k.weight`, `${p}.attn_v.weight`]);
    const biases = ['q', 'k', 'v'].map((n) => optionalTensor(`${p}.attn_${n}.bias`));
    if (biases.some((b) => b !== undefined)) {
      if (!biases.every((b) => b !== undefined))
        throw new ModelFormatError(file.path, `${p}: only some of the q/k/v biases are present`);
      const parts = biases.map((b) => dequantize(file, b!));
      const all = new Float32Array(parts.reduce((s, a) => s + a.length, 0));
      let o = 0;
      for (const a of parts) {
        all.set(a, o);
        o += a.length;
      }
      qkv = g.one('Add', [qkv, g.f32(`${p}.attn_qkv.bias`, [all.length], all)]);
    }
    const sliding = hp.slidingLayers[l] === true;
    const [cosCache, sinCache] = sliding ? localRope : globalRope;
    const gqaAttributes: Record<string, AttributeValue> = {
      num_heads: hp.heads,
      kv_num_heads: hp.kvHeads,
      do_rotary: 1,
      rotary_interleaved: hp.ropeInterleaved ? 1 : 0,
    };
    if (hp.attentionScale !== 1 / Math.sqrt(hp.headDim)) gqaAttributes['scale'] = { float: hp.attentionScale };
    // ORT 1.30 counts the query's own key in its window (as llama.cpp and Hugging Face do; measured
    // in test/architectures.test.ts, and older ORT releases counted one more).
    if (sliding) gqaAttributes['local_window_size'] = hp.slidingWindow;
    // q, k, v as one packed input, or (with per-head q/k norms) as three.
    let qkvInputs: string[] = [qkv, '', ''];
    if (hp.qkNorm) {
      const [q, k, v] = [g.fresh('q'), g.fresh('k'), g.fresh('v')];
      const qWidth = hp.heads * hp.headDim;
      const kvWidth = hp.kvHeads * hp.headDim;
      g.node('Split', [qkv, g.i64(g.fresh('split'), [qWidth, kvWidth, kvWidth])], [q, k, v], { axis: -1 });
      const headNorm = (x: string, heads: number, weight: string): string => {
        const perHead = g.one('Reshape', [x, g.i64(g.fresh('shape'), [0, 0, heads, hp.headDim])]);
        return g.one('Reshape', [
          rmsNorm(perHead, vector(weight)),
          g.i64(g.fresh('shape'), [0, 0, heads * hp.headDim]),
        ]);
      };
      qkvInputs = [
        headNorm(q, hp.heads, `${p}.attn_q_norm.weight`),
        headNorm(k, hp.kvHeads, `${p}.attn_k_norm.weight`),
        v,
      ];
    }
    let attn = g.fresh('attn');
    if (paged) {
      // PagedAttention takes [tokens, hidden] (the packed sequences, no batch axis).
      const flatAttn = g.fresh('attn_flat');
      const pagedAttributes: Record<string, AttributeValue> = {
        num_heads: hp.heads,
        kv_num_heads: hp.kvHeads,
        do_rotary: 1,
        rotary_interleaved: hp.ropeInterleaved ? 1 : 0,
      };
      if (gqaAttributes['scale'] !== undefined) pagedAttributes['scale'] = gqaAttributes['scale'];
      if (sliding) pagedAttributes['local_window_size'] = hp.slidingWindow;
      g.node(
        'PagedAttention',
        [
          ...qkvInputs.map((x) => (x === '' ? '' : g.one('Squeeze', [x, g.i64(g.fresh('axes'), [0])]))),
          PAGED_IO.keyCache(l),
          PAGED_IO.valueCache(l),
          PAGED_IO.cumulativeSequenceLength,
          PAGED_IO.pastSeqlens,
          PAGED_IO.blockTable,
          cosCache,
          sinCache,
          '',
          '',
          '',
          '',
          '',
          '',
          PAGED_IO.attentionMetadata,
        ],
        [flatAttn, PAGED_IO.keyCacheOut(l), PAGED_IO.valueCacheOut(l)],
        pagedAttributes,
        'com.microsoft',
      );
      attn = g.one('Unsqueeze', [flatAttn, g.i64(g.fresh('axes'), [0])]);
    } else if (slots === 0) {
      g.node(
        'GroupQueryAttention',
        [...qkvInputs, IO.pastKey(l), IO.pastValue(l), IO.seqlensK, IO.totalSequenceLength, cosCache, sinCache],
        [attn, IO.presentKey(l), IO.presentValue(l)],
        gqaAttributes,
        'com.microsoft',
      );
    } else {
      // Each input is split per slot the same way (packed qkv, or q, k and v separately).
      const perSlot = qkvInputs.map((input) => {
        if (input === '') return Array.from({ length: slots }, () => '');
        const parts = Array.from({ length: slots }, () => g.fresh('slot_part'));
        g.node('Split', [input, SLOT_IO.slotTokens], parts, { axis: 1 });
        return parts;
      });
      const attns = Array.from({ length: slots }, (_, s) => {
        const out = g.fresh('attn_slot');
        g.node(
          'GroupQueryAttention',
          [
            ...perSlot.map((parts) => parts[s]!),
            SLOT_IO.pastKey(s, l),
            SLOT_IO.pastValue(s, l),
            SLOT_IO.seqlensK(s),
            SLOT_IO.totalSequenceLength(s),
            cosCache,
            sinCache,
          ],
          [out, SLOT_IO.presentKey(s, l), SLOT_IO.presentValue(s, l)],
          gqaAttributes,
          'com.microsoft',
        );
        return out;
      });
      attn = g.one('Concat', attns, { axis: 1 });
    }
    const o = linear(
      attn,
      `${p}.attn_output`,
      options.weights === 'f32' ? tensor(`${p}.attn_output.weight`) : quant(tensor(`${p}.attn_output.weight`)),
    );
    const attnOut = hp.postNorms ? rmsNorm(o, postNormWeight(`${p}.post_attention_norm.weight`)) : o;
    const [ffnIn, res1] = skipNorm(attnOut, residual, vector(`${p}.ffn_norm.weight`));
    const gateUp = fusedLinear(ffnIn, `${p}.ffn_gate_up`, [`${p}.ffn_gate.weight`, `${p}.ffn_up.weight`]);
    const gate = g.fresh('gate');
    const up = g.fresh('up');
    g.node('Split', [gateUp, g.i64(g.fresh('split'), [hp.ffn, hp.ffn])], [gate, up], { axis: -1 });
    const gateAct =
      hp.activation === 'silu'
        ? g.one('Mul', [gate, g.one('Sigmoid', [gate])])
        : g.one('FastGelu', [gate], undefined, 'com.microsoft');
    const act = g.one('Mul', [gateAct, up]);
    const down = linear(
      act,
      `${p}.ffn_down`,
      options.weights === 'f32' ? tensor(`${p}.ffn_down.weight`) : quant(tensor(`${p}.ffn_down.weight`)),
    );
    const ffnOut = hp.postNorms ? rmsNorm(down, postNormWeight(`${p}.post_ffw_norm.weight`)) : down;
    const nextNorm = l + 1 < hp.layers ? `blk.${l + 1}.attn_norm.weight` : 'output_norm.weight';
    [normed, residual] = skipNorm(ffnOut, res1, vector(nextNorm));
    progress?.(l + 1, totalSteps);
  }

  // Only the requested rows go through the LM head: prefill needs one, a padded decode step one
  // (the pad row is skipped), verification all of them.
  const kept =
    slots === 0 && !paged
      ? g.one('Slice', [normed, IO.logitsStart, IO.logitsEnd, g.i64('slice.axis', [1])])
      : g.one('Gather', [normed, SLOT_IO.logitsIndex], { axis: 1 });
  const headTensor = optionalTensor('output.weight') ?? embd;
  const head = options.weights === 'f32' ? headTensor : quant(headTensor);
  let logits = linear(kept, 'lm_head', head);
  if (hp.finalLogitSoftcap > 0) {
    const cap = g.f32('logits.softcap', [], new Float32Array([hp.finalLogitSoftcap]));
    logits = g.one('Mul', [g.one('Tanh', [g.one('Div', [logits, cap])]), cap]);
  }
  if (kvType === OnnxDataType.FLOAT) g.node('Identity', [logits], [IO.logits]);
  else g.node('Cast', [logits], [IO.logits], { to: OnnxDataType.FLOAT });
  // On a GPU a logits row is vocab × 4 bytes to bring back (1 MB for Gemma's 262k tokens) and to
  // scan on the host: greedy decoding reads 8 bytes a row instead.
  const greedyOutput = kvType === OnnxDataType.FLOAT16;
  if (greedyOutput) g.node('ArgMax', [IO.logits], [IO.argmax], { axis: -1, keepdims: 0, select_last_index: 0 });
  progress?.(totalSteps, totalSteps);

  const kvShape = [1, hp.kvHeads, kvCapacityDim, hp.headDim];
  if (paged) {
    const blockSize = pagedBlockSize(hp.headDim);
    const cacheShape = ['kv_blocks', blockSize, hp.kvHeads, hp.headDim];
    const pagedInputs: ValueInfo[] = [
      { name: PAGED_IO.inputIds, type: OnnxDataType.INT64, shape: [1, 'tokens'] },
      { name: PAGED_IO.cumulativeSequenceLength, type: OnnxDataType.INT32, shape: ['batch_plus_one'] },
      { name: PAGED_IO.pastSeqlens, type: OnnxDataType.INT32, shape: ['batch'] },
      { name: PAGED_IO.blockTable, type: OnnxDataType.INT32, shape: ['batch', 'blocks_per_sequence'] },
      { name: PAGED_IO.attentionMetadata, type: OnnxDataType.INT32, shape: [2] },
      { name: PAGED_IO.logitsIndex, type: OnnxDataType.INT64, shape: ['logits_rows'] },
    ];
    const pagedOutputs: ValueInfo[] = [
      { name: PAGED_IO.logits, type: OnnxDataType.FLOAT, shape: [1, 'logits_rows', hp.vocab] },
      { name: PAGED_IO.argmax, type: OnnxDataType.INT64, shape: [1, 'logits_rows'] },
    ];
    for (let l = 0; l < hp.layers; l++) {
      pagedInputs.push(
        { name: PAGED_IO.keyCache(l), type: kvType, shape: cacheShape },
        { name: PAGED_IO.valueCache(l), type: kvType, shape: cacheShape },
      );
      pagedOutputs.push(
        { name: PAGED_IO.keyCacheOut(l), type: kvType, shape: cacheShape },
        { name: PAGED_IO.valueCacheOut(l), type: kvType, shape: cacheShape },
      );
    }
    return {
      graph: {
        name: `${hp.architecture}-decoder-paged`,
        nodes: g.nodes,
        inputs: pagedInputs,
        outputs: pagedOutputs,
        initializers: g.initializers,
      },
      hyper: hp,
      kvCapacityDim: 'kv_blocks',
      greedyOutput,
    };
  }
  if (slots > 0) {
    const slotInputs: ValueInfo[] = [
      { name: SLOT_IO.inputIds, type: OnnxDataType.INT64, shape: [1, 'tokens'] },
      { name: SLOT_IO.slotTokens, type: OnnxDataType.INT64, shape: [slots] },
      { name: SLOT_IO.logitsIndex, type: OnnxDataType.INT64, shape: ['logits_rows'] },
    ];
    const slotOutputs: ValueInfo[] = [
      { name: SLOT_IO.logits, type: OnnxDataType.FLOAT, shape: [1, 'logits_rows', hp.vocab] },
    ];
    if (greedyOutput) slotOutputs.push({ name: IO.argmax, type: OnnxDataType.INT64, shape: [1, 'logits_rows'] });
    for (let s = 0; s < slots; s++) {
      const kv = [1, hp.kvHeads, `kv_capacity_${s}`, hp.headDim];
      slotInputs.push(
        { name: SLOT_IO.seqlensK(s), type: OnnxDataType.INT32, shape: [1] },
        { name: SLOT_IO.totalSequenceLength(s), type: OnnxDataType.INT32, shape: [] },
      );
      for (let l = 0; l < hp.layers; l++) {
        slotInputs.push(
          { name: SLOT_IO.pastKey(s, l), type: kvType, shape: kv },
          { name: SLOT_IO.pastValue(s, l), type: kvType, shape: kv },
        );
        slotOutputs.push(
          { name: SLOT_IO.presentKey(s, l), type: kvType, shape: kv },
          { name: SLOT_IO.presentValue(s, l), type: kvType, shape: kv },
        );
      }
    }
    return {
      graph: {
        name: `${hp.architecture}-decoder-${slots}-slots`,
        nodes: g.nodes,
        inputs: slotInputs,
        outputs: slotOutputs,
        initializers: g.initializers,
      },
      hyper: hp,
      kvCapacityDim,
      greedyOutput,
    };
  }
  const inputs: ValueInfo[] = [
    { name: IO.inputIds, type: OnnxDataType.INT64, shape: [1, 'sequence_length'] },
    { name: IO.seqlensK, type: OnnxDataType.INT32, shape: [1] },
    { name: IO.totalSequenceLength, type: OnnxDataType.INT32, shape: [] },
    { name: IO.logitsStart, type: OnnxDataType.INT64, shape: [1] },
    { name: IO.logitsEnd, type: OnnxDataType.INT64, shape: [1] },
  ];
  const outputs: ValueInfo[] = [{ name: IO.logits, type: OnnxDataType.FLOAT, shape: [1, 'logits_length', hp.vocab] }];
  if (greedyOutput) outputs.push({ name: IO.argmax, type: OnnxDataType.INT64, shape: [1, 'logits_length'] });
  for (let l = 0; l < hp.layers; l++) {
    inputs.push({ name: IO.pastKey(l), type: kvType, shape: kvShape });
    inputs.push({ name: IO.pastValue(l), type: kvType, shape: kvShape });
    outputs.push({ name: IO.presentKey(l), type: kvType, shape: kvShape });
    outputs.push({ name: IO.presentValue(l), type: kvType, shape: kvShape });
  }
  return {
    graph: { name: `${hp.architecture}-decoder`, nodes: g.nodes, inputs, outputs, initializers: g.initializers },
    hyper: hp,
    kvCapacityDim,
    greedyOutput,
  };
}
