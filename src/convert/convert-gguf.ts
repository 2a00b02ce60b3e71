/**
 * GGUF file → model directory (model.onnx, tokenizer.json, tokenizer_config.json, anpd-model.json).
 * Deterministic: the same GGUF and options give byte-identical files. The directory is written under
 * a temporary name and renamed into place, so a half-written conversion is never mistaken for a cache hit.
 */
import { createHash } from 'node:crypto';
import { closeSync, existsSync, mkdirSync, openSync, renameSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { basename, join } from 'node:path';
import { CONVERTER_VERSION, MANIFEST_FILE, MANIFEST_FORMAT, type ModelManifest } from '../model/model-manifest.js';
import { readGguf } from './gguf-reader.js';
import { buildTokenizer } from './gguf-tokenizer.js';
import { buildDecoderGraph, DEFAULT_GRAPH_OPTIONS, type GraphOptions, pagedBlockSize } from './decoder-graph.js';
import { encodeModel } from './onnx-writer.js';

export const ONNX_FILE = 'model.onnx';

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

export function sha256File(buffer: Uint8Array): string {
  return createHash('sha256').update(buffer).digest('hex');
}

export function convertGguf(
  ggufPath: string,
  outDir: string,
  options: GraphOptions = DEFAULT_GRAPH_OPTIONS,
  progress?: ConvertProgress,
): ConvertResult {
  const started = performance.now();
  progress?.('read', 0, 1);
  const file = readGguf(ggufPath);
  const sha256 = sha256File(file.buffer);
  progress?.('read', 1, 1);
  const tokenizer = buildTokenizer(file);
  const built = buildDecoderGraph(file, options, (done, total) => progress?.('convert', done, total));
  const hp = built.hyper;

  const tmp = `${outDir}.tmp-${process.pid}`;
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(tmp, { recursive: true });
  const chunks = encodeModel({
    graph: built.graph,
    opsets: [
      { domain: '', version: 21 },
      { domain: 'com.microsoft', version: 1 },
    ],
    producerName: 'anpd-serve gguf converter',
    producerVersion: String(CONVERTER_VERSION),
    metadata: { source_sha256: sha256 },
  });
  const total = chunks.reduce((s, c) => s + c.length, 0);
  const fd = openSync(join(tmp, ONNX_FILE), 'w');
  let written = 0;
  try {
    for (const c of chunks) {
      writeSync(fd, c);
      written += c.length;
      if (c.length > 1 << 20) progress?.('write', written, total);
    }
  } finally {
    closeSync(fd);
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
