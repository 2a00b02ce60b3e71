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
  return file.buffer.subarray(t.byteOffset, t.byteOffset + t.byteLength);
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
    case GgmlType.Q8_0:
      for (let b = 0; b < blocks; b++) {
        const o = b * 34;
        const d = halfToFloat(src.readUInt16LE(o));
        for (let j = 0; j < 32; j++) out[b * 32 + j] = d * src.readInt8(o + 2 + j);
      }
      return out;
    default:
      throw new ModelFormatError(file.path, `tensor ${t.name}: ggml type ${GgmlType[t.type]} cannot be dequantized by this converter (supported: F32, F16, BF16, Q4_0, Q4_1, Q8_0)`);
  }
}

/** The ggml matrix shape as (rows N, row length K). */
export function matrixShape(file: GgufFile, t: GgufTensorInfo): { n: number; k: number } {
  if (t.dims.length !== 2) throw new ModelFormatError(file.path, `tensor ${t.name} should be 2-D, has dims [${t.dims.join(', ')}]`);
  const k = t.dims[0]!;
  const n = t.dims[1]!;
  if (k % QUANT_BLOCK !== 0) throw new ModelFormatError(file.path, `tensor ${t.name}: row length ${k} is not a multiple of ${QUANT_BLOCK}`);
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
 * Any tensor → 4-bit MatMulNBits with uint8 zero points (ORT's fast path).
 * Q4_0 maps exactly (scale d, zero point 8). Other formats are requantized per 32-block: min-max init,
 * then a few least-squares refinements of scale and zero point; the converted ONNX model is then
 * the reference the engine is judged against.
 */
export function toNBits4(file: GgufFile, t: GgufTensorInfo): NBitsWeight {
  const { n, k } = matrixShape(file, t);
  const blocksPerRow = k / QUANT_BLOCK;
  const blocks = n * blocksPerRow;
  const packed = new Uint8Array(blocks * 16);
  const scales = new Float32Array(blocks);
  const zpStride = Math.ceil(blocksPerRow / 2);
  const zeroPoints = new Uint8Array(n * zpStride);
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
    zeroPoints.fill(0x88);
    return { bits: 4, n, k, packed, scales, zeroPoints };
  }
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
    let sq = 0, sqq = 0, sv = 0, sqv = 0;
    for (let j = 0; j < QUANT_BLOCK; j++) {
      const qi = trial[j]!;
      const v = w[base + j]!;
      sq += qi; sqq += qi * qi; sv += v; sqv += qi * v;
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
        for (let i = 0; i < 16; i++) {
          const byte = wt.packed[b * 16 + i]!;
          out[base + 2 * i] = s * ((byte & 0xf) - z);
          out[base + 2 * i + 1] = s * ((byte >> 4) - z);
        }
      }
    }
  }
  return out;
}
