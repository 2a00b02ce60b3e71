/**
 * GGUF v2/v3 reader: metadata, tensor table and raw tensor bytes.
 * Every structural problem becomes a ModelFormatError that names the file.
 */
import { closeSync, openSync, readFileSync, readSync, statSync } from 'node:fs';
import { ModelFormatError, ModelNotFoundError } from '../errors.js';

export const GGUF_MAGIC = 0x46554747; // "GGUF" little-endian

export enum GgmlType {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q8_1 = 9,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  Q8_K = 15,
  BF16 = 30,
}

/** Elements per block and bytes per block for the types we can read. */
export const GGML_BLOCK: Readonly<Partial<Record<GgmlType, { elements: number; bytes: number }>>> = {
  [GgmlType.F32]: { elements: 1, bytes: 4 },
  [GgmlType.F16]: { elements: 1, bytes: 2 },
  [GgmlType.BF16]: { elements: 1, bytes: 2 },
  [GgmlType.Q4_0]: { elements: 32, bytes: 18 },
  [GgmlType.Q4_1]: { elements: 32, bytes: 20 },
  [GgmlType.Q5_0]: { elements: 32, bytes: 22 },
  [GgmlType.Q5_1]: { elements: 32, bytes: 24 },
  [GgmlType.Q8_0]: { elements: 32, bytes: 34 },
  [GgmlType.Q2_K]: { elements: 256, bytes: 84 },
  [GgmlType.Q3_K]: { elements: 256, bytes: 110 },
  [GgmlType.Q4_K]: { elements: 256, bytes: 144 },
  [GgmlType.Q5_K]: { elements: 256, bytes: 176 },
  [GgmlType.Q6_K]: { elements: 256, bytes: 210 },
};

export type GgufValue = number | bigint | boolean | string | GgufValue[];

export interface GgufTensorInfo {
  readonly name: string;
  /** ggml order: dims[0] is the innermost (contiguous) dimension. */
  readonly dims: readonly number[];
  readonly type: GgmlType;
  readonly elementCount: number;
  /** Absolute byte offset in the file. */
  readonly byteOffset: number;
  readonly byteLength: number;
}

export interface GgufFile {
  readonly path: string;
  readonly version: number;
  readonly metadata: ReadonlyMap<string, GgufValue>;
  readonly tensors: ReadonlyMap<string, GgufTensorInfo>;
  /** Bytes in the file. */
  readonly size: number;
  /** A tensor's raw bytes: a view of the file read whole, or read from disk (files past WHOLE_READ_BYTES_MAX). */
  tensorBytes(t: GgufTensorInfo): Buffer;
}

/**
 * Files up to this size are read whole; larger ones (an 8B model is 4–5 GB, past Node's 2 GiB
 * read and 4 GiB buffer limits) have their header read alone and each tensor read when asked for.
 */
export const WHOLE_READ_BYTES_MAX = 512 * 1024 * 1024;
/** The first header read of a large file; quadrupled while the header runs past it. */
const HEADER_READ_BYTES = 16 * 1024 * 1024;
/** One read's most (Node's readSync takes at most 2 GiB). */
const READ_CHUNK_BYTES = 1024 * 1024 * 1024;

/** Thrown by the header parser when a partial read ends before the header does. */
class HeaderPastRead extends Error {}

// Guards against corrupt headers asking for absurd allocations.
const MAX_KV_COUNT = 1_000_000;
const MAX_TENSOR_COUNT = 1_000_000;
const MAX_ARRAY_LENGTH = 50_000_000;
const MAX_STRING_BYTES = 64 * 1024 * 1024;
const MAX_DIMS = 4;

export function readGguf(
  path: string,
  limits: { readonly wholeReadBytesMax?: number; readonly headerReadBytes?: number } = {},
): GgufFile {
  let size: number;
  try {
    size = statSync(path).size;
  } catch {
    throw new ModelNotFoundError(path, 'GGUF file not found');
  }
  if (size < 24) throw new ModelFormatError(path, `file is ${size} bytes, too short to be GGUF`);
  if (size <= (limits.wholeReadBytesMax ?? WHOLE_READ_BYTES_MAX)) return parseGguf(path, readFileSync(path));
  const tensorBytes = (t: GgufTensorInfo): Buffer => readRange(path, t.byteOffset, t.byteLength);
  for (let headBytes = limits.headerReadBytes ?? HEADER_READ_BYTES; ; headBytes *= 4) {
    const head = readRange(path, 0, Math.min(headBytes, size));
    try {
      return parseHeader(path, head, size, head.length < size, tensorBytes);
    } catch (e) {
      if (!(e instanceof HeaderPastRead)) throw e;
    }
  }
}

/** `length` bytes of the file from `offset` (in reads of at most READ_CHUNK_BYTES). */
function readRange(path: string, offset: number, length: number): Buffer {
  const out = Buffer.allocUnsafe(length);
  const fd = openSync(path, 'r');
  try {
    for (let done = 0; done < length; ) {
      const n = readSync(fd, out, done, Math.min(READ_CHUNK_BYTES, length - done), offset + done);
      if (n === 0) throw new ModelFormatError(path, `truncated: byte ${offset + done} could not be read`);
      done += n;
    }
  } finally {
    closeSync(fd);
  }
  return out;
}

/** A GGUF held in memory whole. */
export function parseGguf(path: string, buffer: Buffer): GgufFile {
  return parseHeader(path, buffer, buffer.length, false, (t) =>
    buffer.subarray(t.byteOffset, t.byteOffset + t.byteLength),
  );
}

/**
 * Metadata and tensor table from `buffer` (the file's first bytes; all of them unless `partial`).
 * A partial buffer that ends inside the header throws HeaderPastRead (the caller reads more).
 */
function parseHeader(
  path: string,
  buffer: Buffer,
  fileSize: number,
  partial: boolean,
  tensorBytes: (t: GgufTensorInfo) => Buffer,
): GgufFile {
  const fail = (message: string): never => {
    throw new ModelFormatError(path, message);
  };
  let pos = 0;
  const need = (n: number): void => {
    if (pos + n <= buffer.length) return;
    if (partial) throw new HeaderPastRead();
    fail(`truncated: header needs byte ${pos + n} but the file has ${fileSize}`);
  };
  const u32 = (): number => {
    need(4);
    const v = buffer.readUInt32LE(pos);
    pos += 4;
    return v;
  };
  const u64 = (): number => {
    need(8);
    const v = buffer.readBigUInt64LE(pos);
    pos += 8;
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) fail(`64-bit value ${v} at byte ${pos - 8} is out of range`);
    return Number(v);
  };
  const str = (): string => {
    const len = u64();
    if (len > MAX_STRING_BYTES) fail(`string of ${len} bytes at byte ${pos}`);
    need(len);
    const s = buffer.toString('utf8', pos, pos + len);
    pos += len;
    return s;
  };
  const scalar = (type: number): GgufValue => {
    switch (type) {
      case 0:
        need(1);
        return buffer.readUInt8(pos++);
      case 1:
        need(1);
        return buffer.readInt8(pos++);
      case 2:
        need(2);
        pos += 2;
        return buffer.readUInt16LE(pos - 2);
      case 3:
        need(2);
        pos += 2;
        return buffer.readInt16LE(pos - 2);
      case 4:
        return u32();
      case 5:
        need(4);
        pos += 4;
        return buffer.readInt32LE(pos - 4);
      case 6:
        need(4);
        pos += 4;
        return buffer.readFloatLE(pos - 4);
      case 7:
        need(1);
        return buffer.readUInt8(pos++) !== 0;
      case 8:
        return str();
      case 10:
        need(8);
        pos += 8;
        return buffer.readBigUInt64LE(pos - 8);
      case 11:
        need(8);
        pos += 8;
        return buffer.readBigInt64LE(pos - 8);
      case 12:
        need(8);
        pos += 8;
        return buffer.readDoubleLE(pos - 8);
      default:
        return fail(`unknown metadata value type ${type} at byte ${pos}`);
    }
  };
  const value = (type: number): GgufValue => {
    if (type !== 9) return scalar(type);
    const itemType = u32();
    const count = u64();
    if (count > MAX_ARRAY_LENGTH) fail(`metadata array of ${count} items`);
    const out: GgufValue[] = new Array(count);
    for (let i = 0; i < count; i++) out[i] = value(itemType);
    return out;
  };

  need(4);
  const magic = buffer.readUInt32LE(0);
  if (magic !== GGUF_MAGIC) {
    fail(`wrong magic 0x${magic.toString(16).padStart(8, '0')} (expected "GGUF"): not a GGUF file`);
  }
  pos = 4;
  const version = u32();
  if (version !== 2 && version !== 3) fail(`unsupported GGUF version ${version} (supported: 2, 3)`);
  const tensorCount = u64();
  const kvCount = u64();
  if (tensorCount > MAX_TENSOR_COUNT) fail(`tensor count ${tensorCount} is implausible`);
  if (kvCount > MAX_KV_COUNT) fail(`metadata count ${kvCount} is implausible`);

  const metadata = new Map<string, GgufValue>();
  for (let i = 0; i < kvCount; i++) {
    const key = str();
    metadata.set(key, value(u32()));
  }

  const infos: { name: string; dims: number[]; type: number; offset: number }[] = [];
  for (let i = 0; i < tensorCount; i++) {
    const name = str();
    const nDims = u32();
    if (nDims < 1 || nDims > MAX_DIMS) fail(`tensor ${name} has ${nDims} dimensions`);
    const dims: number[] = [];
    for (let d = 0; d < nDims; d++) dims.push(u64());
    infos.push({ name, dims, type: u32(), offset: u64() });
  }
  const alignmentValue = metadata.get('general.alignment');
  const alignment = typeof alignmentValue === 'number' ? alignmentValue : 32;
  const dataStart = Math.ceil(pos / alignment) * alignment;

  const tensors = new Map<string, GgufTensorInfo>();
  for (const info of infos) {
    const block = GGML_BLOCK[info.type as GgmlType];
    if (block === undefined) {
      fail(
        `tensor ${info.name} has ggml type ${info.type} (${GgmlType[info.type] ?? 'unknown'}), which this converter does not support`,
      );
    }
    const elementCount = info.dims.reduce((a, b) => a * b, 1);
    if (elementCount % block!.elements !== 0)
      fail(`tensor ${info.name}: ${elementCount} elements is not a whole number of blocks`);
    const byteLength = (elementCount / block!.elements) * block!.bytes;
    const byteOffset = dataStart + info.offset;
    if (byteOffset + byteLength > fileSize) {
      fail(`truncated: tensor ${info.name} needs bytes up to ${byteOffset + byteLength} but the file has ${fileSize}`);
    }
    tensors.set(info.name, {
      name: info.name,
      dims: info.dims,
      type: info.type as GgmlType,
      elementCount,
      byteOffset,
      byteLength,
    });
  }
  return { path, version, metadata, tensors, size: fileSize, tensorBytes };
}

export function metaString(file: GgufFile, key: string): string | undefined {
  const v = file.metadata.get(key);
  return typeof v === 'string' ? v : undefined;
}

export function metaNumber(file: GgufFile, key: string): number | undefined {
  const v = file.metadata.get(key);
  if (typeof v === 'number') return v;
  if (typeof v === 'bigint') return Number(v);
  return undefined;
}

export function requireNumber(file: GgufFile, key: string): number {
  const v = metaNumber(file, key);
  if (v === undefined) throw new ModelFormatError(file.path, `metadata key ${key} is missing or not a number`);
  return v;
}
