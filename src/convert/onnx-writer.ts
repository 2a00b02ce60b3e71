/**
 * A minimal ONNX ModelProto encoder: just the protobuf fields a decoder graph needs.
 * Field numbers follow onnx/onnx.proto3. Writing protobuf by hand keeps the converter free of a
 * code generator and lets it stream 100 MB of initializers without copying them into JS objects.
 */

export enum OnnxDataType {
  FLOAT = 1,
  UINT8 = 2,
  INT8 = 3,
  INT32 = 6,
  INT64 = 7,
  FLOAT16 = 10,
}

export type Dim = number | string;

export interface ValueInfo {
  readonly name: string;
  readonly type: OnnxDataType;
  readonly shape: readonly Dim[];
}

export type AttributeValue = number | string | readonly number[] | { readonly float: number };

export interface NodeSpec {
  readonly op: string;
  readonly inputs: readonly string[];
  readonly outputs: readonly string[];
  readonly name?: string;
  readonly domain?: string;
  readonly attributes?: Readonly<Record<string, AttributeValue>>;
}

export interface Initializer {
  readonly name: string;
  readonly type: OnnxDataType;
  readonly dims: readonly number[];
  readonly data: Uint8Array;
}

export interface GraphSpec {
  readonly name: string;
  readonly nodes: readonly NodeSpec[];
  readonly inputs: readonly ValueInfo[];
  readonly outputs: readonly ValueInfo[];
  readonly initializers: readonly Initializer[];
}

export interface ModelSpec {
  readonly graph: GraphSpec;
  readonly opsets: readonly { readonly domain: string; readonly version: number }[];
  readonly producerName: string;
  readonly producerVersion: string;
  readonly metadata?: Readonly<Record<string, string>>;
}

/** Growable protobuf writer. Nested messages are encoded to their own writer, then copied in. */
class ProtoWriter {
  private chunks: Uint8Array[] = [];
  private scratch = new Uint8Array(64);
  private scratchLen = 0;
  length = 0;

  private flushScratch(): void {
    if (this.scratchLen === 0) return;
    this.chunks.push(this.scratch.slice(0, this.scratchLen));
    this.scratchLen = 0;
  }

  private byte(b: number): void {
    if (this.scratchLen === this.scratch.length) this.flushScratch();
    this.scratch[this.scratchLen++] = b;
    this.length++;
  }

  varint(value: number | bigint): void {
    let v = BigInt.asUintN(64, BigInt(value));
    while (v >= 0x80n) {
      this.byte(Number(v & 0x7fn) | 0x80);
      v >>= 7n;
    }
    this.byte(Number(v));
  }

  tag(field: number, wire: number): void {
    this.varint((field << 3) | wire);
  }

  bytes(field: number, data: Uint8Array): void {
    this.tag(field, 2);
    this.varint(data.length);
    this.flushScratch();
    this.chunks.push(data);
    this.length += data.length;
  }

  string(field: number, s: string): void {
    this.bytes(field, new TextEncoder().encode(s));
  }

  int(field: number, v: number): void {
    this.tag(field, 0);
    this.varint(v);
  }

  float(field: number, v: number): void {
    this.tag(field, 5);
    const b = new Uint8Array(4);
    new DataView(b.buffer).setFloat32(0, v, true);
    for (const x of b) this.byte(x);
  }

  message(field: number, inner: ProtoWriter): void {
    this.tag(field, 2);
    this.varint(inner.length);
    this.flushScratch();
    for (const c of inner.finish()) this.chunks.push(c);
    this.length += inner.length;
  }

  finish(): Uint8Array[] {
    this.flushScratch();
    return this.chunks;
  }
}

const ATTR_FLOAT = 1;
const ATTR_INT = 2;
const ATTR_STRING = 3;
const ATTR_INTS = 7;

function encodeAttribute(name: string, value: AttributeValue): ProtoWriter {
  const w = new ProtoWriter();
  w.string(1, name);
  if (typeof value === 'number') {
    if (!Number.isInteger(value)) throw new Error(`attribute ${name}: use { float } for non-integer values`);
    w.int(3, value);
    w.int(20, ATTR_INT);
  } else if (typeof value === 'string') {
    w.string(4, value);
    w.int(20, ATTR_STRING);
  } else if (Array.isArray(value)) {
    for (const v of value as readonly number[]) w.int(8, v);
    w.int(20, ATTR_INTS);
  } else {
    w.float(2, (value as { float: number }).float);
    w.int(20, ATTR_FLOAT);
  }
  return w;
}

function encodeNode(node: NodeSpec): ProtoWriter {
  const w = new ProtoWriter();
  for (const i of node.inputs) w.string(1, i);
  for (const o of node.outputs) w.string(2, o);
  if (node.name !== undefined) w.string(3, node.name);
  w.string(4, node.op);
  for (const [k, v] of Object.entries(node.attributes ?? {})) w.message(5, encodeAttribute(k, v));
  if (node.domain !== undefined && node.domain !== '') w.string(7, node.domain);
  return w;
}

function encodeValueInfo(v: ValueInfo): ProtoWriter {
  const shape = new ProtoWriter();
  for (const d of v.shape) {
    const dim = new ProtoWriter();
    if (typeof d === 'number') dim.int(1, d);
    else dim.string(2, d);
    shape.message(1, dim);
  }
  const tensorType = new ProtoWriter();
  tensorType.int(1, v.type);
  tensorType.message(2, shape);
  const type = new ProtoWriter();
  type.message(1, tensorType);
  const w = new ProtoWriter();
  w.string(1, v.name);
  w.message(2, type);
  return w;
}

/**
 * ONNX external data: initializers of at least `minBytes` go to one file beside the model (named
 * `location`, relative to the model's folder) instead of into the protobuf, which cannot pass 2 GiB.
 * Filled by encodeModel: `chunks` in file order, each tensor at a 4 KiB-aligned offset (mappable).
 */
export interface ExternalData {
  readonly location: string;
  readonly minBytes: number;
  readonly chunks: Uint8Array[];
  length: number;
}

const EXTERNAL_ALIGN = 4096;

function encodeInitializer(t: Initializer, external: ExternalData | undefined): ProtoWriter {
  const w = new ProtoWriter();
  for (const d of t.dims) w.int(1, d);
  w.int(2, t.type);
  w.string(8, t.name);
  if (external === undefined || t.data.length < external.minBytes) {
    w.bytes(9, t.data);
    return w;
  }
  const pad = (EXTERNAL_ALIGN - (external.length % EXTERNAL_ALIGN)) % EXTERNAL_ALIGN;
  if (pad > 0) external.chunks.push(new Uint8Array(pad));
  const offset = external.length + pad;
  external.chunks.push(t.data);
  external.length = offset + t.data.length;
  for (const [key, value] of [
    ['location', external.location],
    ['offset', String(offset)],
    ['length', String(t.data.length)],
  ] as const) {
    const entry = new ProtoWriter();
    entry.string(1, key);
    entry.string(2, value);
    w.message(13, entry); // external_data
  }
  w.int(14, 1); // data_location = EXTERNAL
  return w;
}

/**
 * Encodes a model as a list of byte chunks (write them in order; no 100 MB concatenation needed).
 * With `external`, large initializers go there instead (write its chunks to its location).
 */
export function encodeModel(model: ModelSpec, external?: ExternalData): Uint8Array[] {
  const g = new ProtoWriter();
  for (const n of model.graph.nodes) g.message(1, encodeNode(n));
  g.string(2, model.graph.name);
  for (const t of model.graph.initializers) g.message(5, encodeInitializer(t, external));
  for (const i of model.graph.inputs) g.message(11, encodeValueInfo(i));
  for (const o of model.graph.outputs) g.message(12, encodeValueInfo(o));

  const m = new ProtoWriter();
  m.int(1, 8); // ir_version 8 (ORT 1.30 reads up to 11)
  m.string(2, model.producerName);
  m.string(3, model.producerVersion);
  m.message(7, g);
  for (const o of model.opsets) {
    const os = new ProtoWriter();
    if (o.domain !== '') os.string(1, o.domain);
    os.int(2, o.version);
    m.message(8, os);
  }
  for (const [k, v] of Object.entries(model.metadata ?? {})) {
    const e = new ProtoWriter();
    e.string(1, k);
    e.string(2, v);
    m.message(14, e);
  }
  return m.finish();
}
