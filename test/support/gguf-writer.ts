/** Writes small GGUF files for tests (metadata of a few types, tensors with raw bytes). */
export type MetaValue =
  | { u32: number }
  | { f32: number }
  | { str: string }
  | { strs: string[] }
  | { i32s: number[] }
  | { bool: boolean };

export interface TensorSpec {
  name: string;
  dims: number[];
  type: number;
  data: Uint8Array;
}

export function writeGguf(meta: Record<string, MetaValue>, tensors: TensorSpec[], version = 3, alignment = 32): Buffer {
  const parts: Buffer[] = [];
  const u32 = (v: number) => {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(v);
    parts.push(b);
  };
  const u64 = (v: number) => {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(BigInt(v));
    parts.push(b);
  };
  const str = (s: string) => {
    const e = Buffer.from(s, 'utf8');
    u64(e.length);
    parts.push(e);
  };
  parts.push(Buffer.from('GGUF', 'ascii'));
  u32(version);
  u64(tensors.length);
  u64(Object.keys(meta).length);
  for (const [k, v] of Object.entries(meta)) {
    str(k);
    if ('u32' in v) {
      u32(4);
      u32(v.u32);
    } else if ('f32' in v) {
      u32(6);
      const b = Buffer.alloc(4);
      b.writeFloatLE(v.f32);
      parts.push(b);
    } else if ('str' in v) {
      u32(8);
      str(v.str);
    } else if ('bool' in v) {
      u32(7);
      parts.push(Buffer.from([v.bool ? 1 : 0]));
    } else if ('strs' in v) {
      u32(9);
      u32(8);
      u64(v.strs.length);
      for (const s of v.strs) str(s);
    } else {
      u32(9);
      u32(5);
      u64(v.i32s.length);
      for (const n of v.i32s) {
        const b = Buffer.alloc(4);
        b.writeInt32LE(n);
        parts.push(b);
      }
    }
  }
  let offset = 0;
  const offsets: number[] = [];
  for (const t of tensors) {
    offsets.push(offset);
    offset += Math.ceil(t.data.length / alignment) * alignment;
  }
  tensors.forEach((t, i) => {
    str(t.name);
    u32(t.dims.length);
    for (const d of t.dims) u64(d);
    u32(t.type);
    u64(offsets[i]!);
  });
  let header = Buffer.concat(parts);
  const pad = (alignment - (header.length % alignment)) % alignment;
  const body: Buffer[] = [header, Buffer.alloc(pad)];
  for (const t of tensors) {
    body.push(Buffer.from(t.data));
    body.push(Buffer.alloc((alignment - (t.data.length % alignment)) % alignment));
  }
  header = Buffer.concat(body);
  return header;
}
