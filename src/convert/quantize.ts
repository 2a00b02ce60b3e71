/**
 * ggml block formats → float32, and float32 / ggml blocks → ORT MatMulNBits packing.
 *
 * MatMulNBits layout (com.microsoft, block size 32): B is [N][K/32][16] bytes for 4 bits
 * (element 2i in the low nibble, 2i+1 in the high nibble) or [N][K/32][32] for 8 bits;
 * scales are float32 [N·K/32]; 4-bit zero points are packed two per byte (low nibble first) per row.
 * Dequantized weight = scale · (q − zero_point).
 */
import { ModelFormatError } from '../errors.js';
import { GgmlType, type GgufFile, type GgufTensorInfo } from './gguf-reader.js';

export const QUANT_BLOCK = 32;

export interface NBitsWeight {
  readonly bits: 4 | 8;
  /** Output features (rows of the ggml matrix). */
  readonly n: number;
  /** Input features (contiguous dimension). */
  readonly k: number;
  readonly packed: Uint8Array;
  readonly scales: Float32Array;
  /** 4-bit packed zero points [N][ceil(K/32/2)], or undefined for the symmetric default (8 or 128). */
  readonly zeroPoints: Uint8Array | undefined;
  /**
   * Per 32-block offsets [N · K/32] subtracted from every weight of the block (Q4_K's mins):
   * weight = scale · (q − zero_point) − blockMin. MatMulNBits has no such term; the graph adds
   * −(Σ of the block's inputs) · blockMin as a small MatMul beside it. Undefined: none.
   */
  readonly blockMins?: Float32Array | undefined;
}

const f16 = new Float32Array(1);
const f16u = new Uint32Array(f16.buffer);

/** IEEE half → float (exact). */
export function halfToFloat(h: number): number {
  const sign = (h & 0x8000) << 16;
  const exp = (h >> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) {
    if (mant === 0) {
      f16u[0] = sign;
      return f16[0]!;
    }
    return (sign ? -1 : 1) * mant * 2 ** -24;
  }
  if (exp === 31) {
    f16u[0] = sign | 0x7f800000 | (mant << 13);
    return f16[0]!;
  }
  f16u[0] = sign | ((exp + 112) << 23) | (mant << 13);
  return f16[0]!;
}

function tensorBytes(file: GgufFile, t: GgufTensorInfo): Buffer {
  return file.tensorBytes(t);
}

/** Dequantizes any supported ggml tensor to float32 in ggml element order. */
export function dequantize(file: GgufFile, t: GgufTensorInfo): Float32Array {
  const src = tensorBytes(file, t);
  const out = new Float32Array(t.elementCount);
  const blocks = t.elementCount / QUANT_BLOCK;
  switch (t.type) {
    case GgmlType.F32:
      for (let i = 0; i < t.elementCount; i++) out[i] = src.readFloatLE(i * 4);
      return out;
    case GgmlType.F16:
      for (let i = 0; i < t.elementCount; i++) out[i] = halfToFloat(src.readUInt16LE(i * 2));
      return out;
    case GgmlType.BF16:
      for (let i = 0; i < t.elementCount; i++) {
        f16u[0] = src.readUInt16LE(i * 2) << 16;
        out[i] = f16[0]!;
      }
      return out;
    case GgmlType.Q4_0:
      for (let b = 0; b < blocks; b++) {
        const o = b * 18;
        const d = halfToFloat(src.readUInt16LE(o));
        for (let j = 0; j < 16; j++) {
          const q = src[o + 2 + j]!;
          out[b * 32 + j] = d * ((q & 0xf) - 8);
          out[b * 32 + j + 16] = d * ((q >> 4) - 8);
        }
      }
      return out;
    case GgmlType.Q4_1:
      for (let b = 0; b < blocks; b++) {
        const o = b * 20;
        const d = halfToFloat(src.readUInt16LE(o));
        const m = halfToFloat(src.readUInt16LE(o + 2));
        for (let j = 0; j < 16; j++) {
          const q = src[o + 4 + j]!;
          out[b * 32 + j] = d * (q & 0xf) + m;
          out[b * 32 + j + 16] = d * (q >> 4) + m;
        }
      }
      return out;
    case GgmlType.Q5_0:
    case GgmlType.Q5_1: {
      // 32 elements: fp16 d (and m for Q5_1), 32 high bits, then low nibbles as in Q4_0.
      const one = t.type === GgmlType.Q5_1;
      const bytes = one ? 24 : 22;
      for (let b = 0; b < blocks; b++) {
        const o = b * bytes;
        const d = halfToFloat(src.readUInt16LE(o));
        const m = one ? halfToFloat(src.readUInt16LE(o + 2)) : 0;
        const qh = src.readUInt32LE(o + (one ? 4 : 2));
        const qs = o + (one ? 8 : 6);
        for (let j = 0; j < 16; j++) {
          const x0 = (src[qs + j]! & 0xf) | (((qh >>> j) << 4) & 0x10);
          const x1 = (src[qs + j]! >> 4) | ((qh >>> (j + 12)) & 0x10);
          out[b * 32 + j] = one ? Math.fround(d * x0) + m : d * (x0 - 16);
          out[b * 32 + j + 16] = one ? Math.fround(d * x1) + m : d * (x1 - 16);
        }
      }
      return out;
    }
    case GgmlType.Q8_0:
      for (let b = 0; b < blocks; b++) {
        const o = b * 34;
        const d = halfToFloat(src.readUInt16LE(o));
        for (let j = 0; j < 32; j++) out[b * 32 + j] = d * src.readInt8(o + 2 + j);
      }
      return out;
    case GgmlType.Q4_K:
    case GgmlType.Q5_K:
    case GgmlType.Q6_K:
      dequantizeK(t.type, src, out, t.elementCount / K_BLOCK);
      return out;
    default:
      throw new ModelFormatError(
        file.path,
        `tensor ${t.name}: ggml type ${GgmlType[t.type]} cannot be dequantized by this converter (supported: ${DEQUANTIZABLE.join(', ')})`,
      );
  }
}

export const DEQUANTIZABLE = [
  'F32',
  'F16',
  'BF16',
  'Q4_0',
  'Q4_1',
  'Q5_0',
  'Q5_1',
  'Q8_0',
  'Q4_K',
  'Q5_K',
  'Q6_K',
] as const;

/** Elements per K-quant super-block. */
export const K_BLOCK = 256;

/** The 6-bit scale and min of sub-block j (0..7) of a Q4_K / Q5_K block, packed in 12 bytes at `at`. */
function scaleMinK4(src: Uint8Array, at: number, j: number): [number, number] {
  if (j < 4) return [src[at + j]! & 63, src[at + j + 4]! & 63];
  return [
    (src[at + j + 4]! & 0xf) | ((src[at + j - 4]! >> 6) << 4),
    (src[at + j + 4]! >> 4) | ((src[at + j]! >> 6) << 4),
  ];
}

/**
 * ggml's K-quant super-blocks (256 elements) → float32, in ggml's arithmetic (float32 products):
 * Q4_K and Q5_K are 8 sub-blocks of 32 with a 6-bit scale and min (w = d·sc·q − dmin·m), Q6_K 16
 * sub-blocks of 16 with an int8 scale (w = d·sc·(q − 32)). Checked against gguf-py's dequantizer
 * (test/fixtures/kquant-blocks.json).
 */
export function dequantizeK(type: GgmlType, src: Uint8Array, out: Float32Array, blocks: number): void {
  const f = Math.fround;
  const half = (o: number) => halfToFloat(src[o]! | (src[o + 1]! << 8));
  for (let b = 0; b < blocks; b++) {
    const y = b * K_BLOCK;
    if (type === GgmlType.Q6_K) {
      const o = b * 210;
      const d = half(o + 208);
      for (let n = 0; n < 2; n++) {
        const ql = o + 64 * n;
        const qh = o + 128 + 32 * n;
        const sc = o + 192 + 8 * n;
        const yn = y + 128 * n;
        for (let l = 0; l < 32; l++) {
          const is = l >> 4;
          const h = src[qh + l]!;
          const q1 = ((src[ql + l]! & 0xf) | ((h & 3) << 4)) - 32;
          const q2 = ((src[ql + l + 32]! & 0xf) | (((h >> 2) & 3) << 4)) - 32;
          const q3 = ((src[ql + l]! >> 4) | (((h >> 4) & 3) << 4)) - 32;
          const q4 = ((src[ql + l + 32]! >> 4) | (((h >> 6) & 3) << 4)) - 32;
          const s = (k: number) => (src[sc + is + k]! << 24) >> 24;
          out[yn + l] = f(f(d * s(0)) * q1);
          out[yn + l + 32] = f(f(d * s(2)) * q2);
          out[yn + l + 64] = f(f(d * s(4)) * q3);
          out[yn + l + 96] = f(f(d * s(6)) * q4);
        }
      }
      continue;
    }
    const five = type === GgmlType.Q5_K;
    const o = b * (five ? 176 : 144);
    const d = half(o);
    const dmin = half(o + 2);
    const qs = o + (five ? 48 : 16);
    const qh = o + 16;
    for (let j = 0; j < 4; j++) {
      const [sc1, m1] = scaleMinK4(src, o + 4, 2 * j);
      const [sc2, m2] = scaleMinK4(src, o + 4, 2 * j + 1);
      const d1 = f(d * sc1),
        min1 = f(dmin * m1),
        d2 = f(d * sc2),
        min2 = f(dmin * m2);
      for (let l = 0; l < 32; l++) {
        const q = src[qs + 32 * j + l]!;
        const hi1 = five && src[qh + l]! & (1 << (2 * j)) ? 16 : 0;
        const hi2 = five && src[qh + l]! & (2 << (2 * j)) ? 16 : 0;
        out[y + 64 * j + l] = f(f(d1 * ((q & 0xf) + hi1)) - min1);
        out[y + 64 * j + 32 + l] = f(f(d2 * ((q >> 4) + hi2)) - min2);
      }
    }
  }
}

/** The ggml matrix shape as (rows N, row length K). */
export function matrixShape(file: GgufFile, t: GgufTensorInfo): { n: number; k: number } {
  if (t.dims.length !== 2)
    throw new ModelFormatError(file.path, `tensor ${t.name} should be 2-D, has dims [${t.dims.join(', ')}]`);
  const k = t.dims[0]!;
  const n = t.dims[1]!;
  if (k % QUANT_BLOCK !== 0)
    throw new ModelFormatError(file.path, `tensor ${t.name}: row length ${k} is not a multiple of ${QUANT_BLOCK}`);
  return { n, k };
}

/**
 * Q8_0 (w = d·q, q ∈ [−128, 127]) maps exactly onto 8-bit MatMulNBits with the default zero point 128.
 */
export function q8_0ToNBits(file: GgufFile, t: GgufTensorInfo): NBitsWeight {
  if (t.type !== GgmlType.Q8_0) throw new Error(`q8_0ToNBits: ${t.name} is ${GgmlType[t.type]}`);
  const { n, k } = matrixShape(file, t);
  const src = tensorBytes(file, t);
  const blocks = (n * k) / QUANT_BLOCK;
  const packed = new Uint8Array(blocks * 32);
  const scales = new Float32Array(blocks);
  for (let b = 0; b < blocks; b++) {
    const o = b * 34;
    scales[b] = halfToFloat(src.readUInt16LE(o));
    for (let j = 0; j < 32; j++) packed[b * 32 + j] = (src.readInt8(o + 2 + j) + 128) & 0xff;
  }
  return { bits: 8, n, k, packed, scales, zeroPoints: undefined };
}

/**
 * Any tensor → 8-bit MatMulNBits, symmetric per 32-block (zero point 128, scale max|w|/127): for
 * 5- and 6-bit sources, whose grids 4 bits would coarsen. The rounding error is at most half of
 * max|w|/127 per block — under a quarter of a Q6_K step. Q8_0 maps exactly.
 */
export function toNBits8(file: GgufFile, t: GgufTensorInfo): NBitsWeight {
  if (t.type === GgmlType.Q8_0) return q8_0ToNBits(file, t);
  if (t.type === GgmlType.Q5_0) return q5_0ToNBits(file, t);
  const { n, k } = matrixShape(file, t);
  const w = dequantize(file, t);
  const blocks = (n * k) / QUANT_BLOCK;
  const packed = new Uint8Array(blocks * QUANT_BLOCK);
  const scales = new Float32Array(blocks);
  for (let b = 0; b < blocks; b++) {
    const base = b * QUANT_BLOCK;
    let amax = 0;
    for (let j = 0; j < QUANT_BLOCK; j++) amax = Math.max(amax, Math.abs(w[base + j]!));
    const scale = amax === 0 ? 1 : Math.fround(amax / 127);
    scales[b] = scale;
    for (let j = 0; j < QUANT_BLOCK; j++)
      packed[base + j] = Math.min(127, Math.max(-127, Math.round(w[base + j]! / scale))) + 128;
  }
  return { bits: 8, n, k, packed, scales, zeroPoints: undefined };
}

/**
 * Q5_0 (w = d·(q − 16), q ∈ [0, 31]) maps exactly onto 8-bit MatMulNBits: q + 112 with the default
 * zero point 128.
 */
export function q5_0ToNBits(file: GgufFile, t: GgufTensorInfo): NBitsWeight {
  if (t.type !== GgmlType.Q5_0) throw new Error(`q5_0ToNBits: ${t.name} is ${GgmlType[t.type]}`);
  const { n, k } = matrixShape(file, t);
  const w = dequantize(file, t);
  const src = tensorBytes(file, t);
  const blocks = (n * k) / QUANT_BLOCK;
  const packed = new Uint8Array(blocks * 32);
  const scales = new Float32Array(blocks);
  for (let b = 0; b < blocks; b++) {
    const d = halfToFloat(src.readUInt16LE(b * 22));
    scales[b] = d;
    for (let j = 0; j < 32; j++) packed[b * 32 + j] = d === 0 ? 128 : Math.round(w[b * 32 + j]! / d) + 128;
  }
  return { bits: 8, n, k, packed, scales, zeroPoints: undefined };
}

/**
 * Whether the converter gives this ggml type 8 bits rather than 4: 5-, 6- and 8-bit sources, whose
 * grids 4 bits would coarsen (Q5_0 and Q8_0 map exactly).
 */
export function wantsEightBits(type: GgmlType): boolean {
  return (
    type === GgmlType.Q5_0 ||
    type === GgmlType.Q5_1 ||
    type === GgmlType.Q5_K ||
    type === GgmlType.Q6_K ||
    type === GgmlType.Q8_0
  );
}

/**
 * The MatMulNBits form of a ggml matrix: Q8_0 and Q5_0 exactly in 8 bits; Q5_1, Q5_K and Q6_K
 * requantized to 8 bits; everything else to 4 bits (Q4_0 exactly, the rest requantized per 32-block, Q4_K's
 * 32-element sub-blocks included).
 */
export function toNBits(file: GgufFile, t: GgufTensorInfo): NBitsWeight {
  return wantsEightBits(t.type) ? toNBits8(file, t) : toNBits4(file, t);
}

/** The parts of a fused projection (q/k/v, gate/up) share one width: 8 bits if any part wants them, else 4. */
export function toNBitsParts(file: GgufFile, ts: readonly GgufTensorInfo[]): NBitsWeight[] {
  const eight = ts.some((t) => wantsEightBits(t.type));
  return ts.map((t) => (eight ? toNBits8(file, t) : toNBits4(file, t)));
}

/**
 * Any tensor → 4-bit MatMulNBits with uint8 zero points (ORT's fast path).
 * Q4_0 maps exactly (scale d, the default zero point 8, so none stored). Other formats are requantized per 32-block: min-max init,
 * then a few least-squares refinements of scale and zero point; the converted ONNX model is then
 * the reference the engine is judged against.
 */
export function toNBits4(file: GgufFile, t: GgufTensorInfo): NBitsWeight {
  if (t.type === GgmlType.Q4_K) return q4_KToNBits(file, t);
  const { n, k } = matrixShape(file, t);
  const blocksPerRow = k / QUANT_BLOCK;
  const blocks = n * blocksPerRow;
  const packed = new Uint8Array(blocks * 16);
  const scales = new Float32Array(blocks);
  if (t.type === GgmlType.Q4_0) {
    const src = tensorBytes(file, t);
    for (let b = 0; b < blocks; b++) {
      scales[b] = halfToFloat(src.readUInt16LE(b * 18));
      // ggml keeps elements j and j+16 in one byte; MatMulNBits keeps 2i and 2i+1.
      for (let i = 0; i < 16; i++) {
        const lo = nibbleQ4_0(src, b, 2 * i);
        const hi = nibbleQ4_0(src, b, 2 * i + 1);
        packed[b * 16 + i] = lo | (hi << 4);
      }
    }
    // No zero points: MatMulNBits' default, 8, is Q4_0's, and only such nodes take ORT's fpA_intB
    // kernels on CUDA (RuntimeOptions.experimental.weightOnlyGemm).
    return { bits: 4, n, k, packed, scales, zeroPoints: undefined };
  }
  const zpStride = Math.ceil(blocksPerRow / 2);
  const zeroPoints = new Uint8Array(n * zpStride);
  const w = dequantize(file, t);
  const q = new Uint8Array(QUANT_BLOCK);
  for (let row = 0; row < n; row++) {
    for (let bj = 0; bj < blocksPerRow; bj++) {
      const b = row * blocksPerRow + bj;
      const base = b * QUANT_BLOCK;
      const { scale, zero } = quantizeBlock4(w, base, q);
      scales[b] = scale;
      for (let i = 0; i < 16; i++) packed[b * 16 + i] = q[2 * i]! | (q[2 * i + 1]! << 4);
      const zi = row * zpStride + (bj >> 1);
      zeroPoints[zi] = bj & 1 ? zeroPoints[zi]! | (zero << 4) : zero;
    }
  }
  return { bits: 4, n, k, packed, scales, zeroPoints };
}

/**
 * Q4_K exactly: each 32-element sub-block is w = (d·sc)·q − dmin·m with q ∈ [0, 15], i.e. 4-bit
 * MatMulNBits with scale d·sc, zero point 0, and the sub-block's min as a block offset (see
 * NBitsWeight.blockMins). Requantizing instead to a 4-bit grid with an integer zero point cost
 * 8% of the weights' RMS on Gemma 3 270M (bench/results/gemma3-270m/accuracy.json).
 */
export function q4_KToNBits(file: GgufFile, t: GgufTensorInfo): NBitsWeight {
  if (t.type !== GgmlType.Q4_K) throw new Error(`q4_KToNBits: ${t.name} is ${GgmlType[t.type]}`);
  const { n, k } = matrixShape(file, t);
  const src = tensorBytes(file, t);
  const blocks = (n * k) / QUANT_BLOCK;
  const packed = new Uint8Array(blocks * 16);
  const scales = new Float32Array(blocks);
  const blockMins = new Float32Array(blocks);
  const f = Math.fround;
  for (let sb = 0; sb < blocks / 8; sb++) {
    const o = sb * 144;
    const d = halfToFloat(src.readUInt16LE(o));
    const dmin = halfToFloat(src.readUInt16LE(o + 2));
    for (let j = 0; j < 8; j++) {
      const [sc, m] = scaleMinK4(src, o + 4, j);
      const b = sb * 8 + j;
      scales[b] = f(d * sc);
      blockMins[b] = f(dmin * m);
      // Sub-blocks 2i and 2i+1 share 32 bytes: low nibbles, then high nibbles.
      const qs = o + 16 + 32 * (j >> 1);
      const shift = j & 1 ? 4 : 0;
      for (let i = 0; i < 16; i++) {
        const lo = (src[qs + 2 * i]! >> shift) & 0xf;
        const hi = (src[qs + 2 * i + 1]! >> shift) & 0xf;
        packed[b * 16 + i] = lo | (hi << 4);
      }
    }
  }
  const zeroPoints = new Uint8Array(n * Math.ceil(k / QUANT_BLOCK / 2));
  return { bits: 4, n, k, packed, scales, zeroPoints, blockMins };
}

function nibbleQ4_0(src: Buffer, block: number, element: number): number {
  const byte = src[block * 18 + 2 + (element & 15)]!;
  return element < 16 ? byte & 0xf : byte >> 4;
}

const REFINE_ROUNDS = 4;

/** Quantizes w[base..base+32) into q (0..15); returns scale and integer zero point. */
export function quantizeBlock4(w: Float32Array, base: number, q: Uint8Array): { scale: number; zero: number } {
  let min = Infinity;
  let max = -Infinity;
  for (let j = 0; j < QUANT_BLOCK; j++) {
    const v = w[base + j]!;
    if (v < min) min = v;
    if (v > max) max = v;
  }
  if (max === min) {
    q.fill(0);
    return { scale: max === 0 ? 1 : Math.abs(max), zero: max >= 0 ? 0 : 1 };
  }
  let scale = (max - min) / 15;
  let zero = Math.min(15, Math.max(0, Math.round(-min / scale)));
  let bestErr = Infinity;
  let bestScale = scale;
  let bestZero = zero;
  const trial = new Uint8Array(QUANT_BLOCK);
  for (let round = 0; round < REFINE_ROUNDS; round++) {
    let err = 0;
    for (let j = 0; j < QUANT_BLOCK; j++) {
      const v = w[base + j]!;
      const qi = Math.min(15, Math.max(0, Math.round(v / scale) + zero));
      trial[j] = qi;
      const e = v - scale * (qi - zero);
      err += e * e;
    }
    if (err < bestErr) {
      bestErr = err;
      bestScale = scale;
      bestZero = zero;
      q.set(trial);
    }
    // Least squares for v ≈ s·q − s·z, i.e. v ≈ a·q + c with c = −s·z; then round z.
    let sq = 0,
      sqq = 0,
      sv = 0,
      sqv = 0;
    for (let j = 0; j < QUANT_BLOCK; j++) {
      const qi = trial[j]!;
      const v = w[base + j]!;
      sq += qi;
      sqq += qi * qi;
      sv += v;
      sqv += qi * v;
    }
    const det = QUANT_BLOCK * sqq - sq * sq;
    if (det <= 0) break;
    const a = (QUANT_BLOCK * sqv - sq * sv) / det;
    const c = (sv - a * sq) / QUANT_BLOCK;
    if (!(a > 0)) break;
    scale = a;
    zero = Math.min(15, Math.max(0, Math.round(-c / a)));
  }
  return { scale: Math.fround(bestScale), zero: bestZero };
}

/** NBits → float32 [N][K], as ORT's MatMulNBits dequantizes it (used by tests and the reference forward). */
export function dequantizeNBits(wt: NBitsWeight): Float32Array {
  const out = new Float32Array(wt.n * wt.k);
  const blocksPerRow = wt.k / QUANT_BLOCK;
  const zpStride = Math.ceil(blocksPerRow / 2);
  for (let row = 0; row < wt.n; row++) {
    for (let bj = 0; bj < blocksPerRow; bj++) {
      const b = row * blocksPerRow + bj;
      const s = wt.scales[b]!;
      const base = b * QUANT_BLOCK;
      if (wt.bits === 8) {
        for (let j = 0; j < 32; j++) out[base + j] = s * (wt.packed[b * 32 + j]! - 128);
      } else {
        let z = 8;
        if (wt.zeroPoints !== undefined) {
          const zb = wt.zeroPoints[row * zpStride + (bj >> 1)]!;
          z = bj & 1 ? zb >> 4 : zb & 0xf;
        }
        const m = wt.blockMins?.[b] ?? 0;
        for (let i = 0; i < 16; i++) {
          const byte = wt.packed[b * 16 + i]!;
          out[base + 2 * i] = s * ((byte & 0xf) - z) - m;
          out[base + 2 * i + 1] = s * ((byte >> 4) - z) - m;
        }
      }
    }
  }
  return out;
}
