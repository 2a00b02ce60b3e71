/**
 * GGUF file → model directory (model.onnx, tokenizer.json, tokenizer_config.json, anpd-model.json).
 * Deterministic: the same GGUF and options give byte-identical files. The directory is written under
 * a temporary name and renamed into place, so a half-written conversion is never mistaken for a cache hit.
 */
import { createHash } from 'node:crypto';
import {
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readSync,
  renameSync,
  rmSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { basename, join } from 'node:path';
import { CONVERTER_VERSION, MANIFEST_FILE, MANIFEST_FORMAT, type ModelManifest } from '../model/model-manifest.js';
import { readGguf } from './gguf-reader.js';
import { buildTokenizer } from './gguf-tokenizer.js';
import { buildDecoderGraph, DEFAULT_GRAPH_OPTIONS, type GraphOptions, pagedBlockSize } from './decoder-graph.js';
import { encodeModel, type ExternalData } from './onnx-writer.js';

export const ONNX_FILE = 'model.onnx';
/** The weights of a model too large for one protobuf (ONNX external data), beside ONNX_FILE. */
export const ONNX_DATA_FILE = 'model.onnx.data';
/** Initializer bytes kept inside model.onnx; past this they go to ONNX_DATA_FILE (protobuf stops at 2 GiB). */
export const ONNX_INLINE_BYTES_MAX = 1536 * 1024 * 1024;
/** Initializers smaller than this stay inline even then (norm weights, shapes). */
const EXTERNAL_MIN_BYTES = 4096;

export interface ConvertProgress {
  /** Called with a phase name, units done and units total. */
  (phase: string, done: number, total: number): void;
}

export interface ConvertResult {
  readonly dir: string;
  readonly manifest: ModelManifest;
  readonly onnxBytes: number;
  readonly convertMs: number;
}

/** The file's SHA-256, read in 64 MiB chunks (GGUFs run past Node's 2 GiB single read). */
export function sha256File(path: string): string {
  const hash = createHash('sha256');
  const chunk = Buffer.allocUnsafe(64 * 1024 * 1024);
  const fd = openSync(path, 'r');
  try {
    for (let n = readSync(fd, chunk, 0, chunk.length, null); n > 0; n = readSync(fd, chunk, 0, chunk.length, null))
      hash.update(chunk.subarray(0, n));
  } finally {
    closeSync(fd);
  }
  return hash.digest('hex');
}

export function convertGguf(
  ggufPath: string,
  outDir: string,
  options: GraphOptions = DEFAULT_GRAPH_OPTIONS,
  progress?: ConvertProgress,
  limits: { readonly inlineBytesMax?: number } = {},
): ConvertResult {
  const started = performance.now();
  progress?.('read', 0, 1);
  const file = readGguf(ggufPath);
  const sha256 = sha256File(ggufPath);
  progress?.('read', 1, 1);
  const tokenizer = buildTokenizer(file);
  const built = buildDecoderGraph(file, options, (done, total) => progress?.('convert', done, total));
  const hp = built.hyper;

  const tmp = `${outDir}.tmp-${process.pid}`;
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(tmp, { recursive: true });
  // Past ONNX's 2 GiB protobuf limit (a ~3B+ model at 4 bits), the weights go to model.onnx.data.
  const initializerBytes = built.graph.initializers.reduce((sum, t) => sum + t.data.length, 0);
  const external: ExternalData | undefined =
    initializerBytes > (limits.inlineBytesMax ?? ONNX_INLINE_BYTES_MAX)
      ? { location: ONNX_DATA_FILE, minBytes: EXTERNAL_MIN_BYTES, chunks: [], length: 0 }
      : undefined;
  const chunks = encodeModel(
    {
      graph: built.graph,
      opsets: [
        { domain: '', version: 21 },
        { domain: 'com.microsoft', version: 1 },
      ],
      producerName: 'anpd-serve gguf converter',
      producerVersion: String(CONVERTER_VERSION),
      metadata: { source_sha256: sha256 },
    },
    external,
  );
  const files: [string, Uint8Array[]][] = [[ONNX_FILE, chunks]];
  if (external !== undefined) files.push([ONNX_DATA_FILE, external.chunks]);
  const total = files.reduce((s, [, cs]) => s + cs.reduce((n, c) => n + c.length, 0), 0);
  let written = 0;
  for (const [name, fileChunks] of files) {
    const fd = openSync(join(tmp, name), 'w');
    try {
      for (const c of fileChunks) {
        writeSync(fd, c);
        written += c.length;
        if (c.length > 1 << 20) progress?.('write', written, total);
      }
    } finally {
      closeSync(fd);
    }
  }
  progress?.('write', total, total);

  const manifest: ModelManifest = {
    format: MANIFEST_FORMAT,
    converterVersion: CONVERTER_VERSION,
    name:
      typeof file.metadata.get('general.name') === 'string'
        ? (file.metadata.get('general.name') as string)
        : basename(ggufPath),
    architecture: hp.architecture,
    layers: hp.layers,
    hidden: hp.hidden,
    heads: hp.heads,
    kvHeads: hp.kvHeads,
    headDim: hp.headDim,
    vocab: hp.vocab,
    contextLength: hp.contextLength,
    bosTokenId: tokenizer.bosTokenId ?? null,
    eosTokenIds: tokenizer.eosTokenIds,
    onnxFile: ONNX_FILE,
    weights: options.weights,
    norms: options.norms,
    ...(options.slots !== undefined && options.slots > 0 ? { slots: options.slots } : {}),
    ...(options.attention === 'paged' ? { attention: 'paged' as const, kvBlockSize: pagedBlockSize(hp.headDim) } : {}),
    ...(options.dtype === 'float16' ? { dtype: options.dtype } : {}),
    ...(built.greedyOutput ? { greedyOutput: true } : {}),
    source: { file: basename(ggufPath), sha256 },
  };
  writeFileSync(join(tmp, 'tokenizer.json'), JSON.stringify(tokenizer.tokenizerJson));
  writeFileSync(join(tmp, 'tokenizer_config.json'), JSON.stringify(tokenizer.tokenizerConfig, null, 2));
  // Written last: its presence marks a complete directory.
  writeFileSync(join(tmp, MANIFEST_FILE), JSON.stringify(manifest, null, 2));
  rmSync(outDir, { recursive: true, force: true });
  renameSync(tmp, outDir);
  return { dir: outDir, manifest, onnxBytes: total, convertMs: performance.now() - started };
}

/** The cache key of a conversion: source checksum, converter version and graph options. */
export function conversionKey(ggufSha256: string, options: GraphOptions): string {
  const slots = options.slots ?? 0;
  const dtype = options.dtype === 'float16' ? '-f16' : '';
  const paged = options.attention === 'paged' ? '-paged' : '';
  return `${ggufSha256.slice(0, 16)}-v${CONVERTER_VERSION}-${options.weights}-${options.norms}-a${options.accuracyLevel}${slots > 0 ? `-s${slots}` : ''}${dtype}${paged}`;
}

export function isConverted(dir: string): boolean {
  return existsSync(join(dir, MANIFEST_FILE)) && existsSync(join(dir, ONNX_FILE));
}
