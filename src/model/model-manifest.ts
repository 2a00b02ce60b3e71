/**
 * `anpd-model.json`: what the converter writes next to `model.onnx` and the runtime reads back.
 * Optimum/transformers.js exports have no manifest; `runtime/load-model.ts` derives the same facts from `config.json`.
 */
export const MANIFEST_FILE = 'anpd-model.json';
export const MANIFEST_FORMAT = 'anpd-gqa-decoder';
/** Bump when the converter's output changes: it keys the conversion cache. */
export const CONVERTER_VERSION = 4;

export interface ModelManifest {
  readonly format: typeof MANIFEST_FORMAT;
  readonly converterVersion: number;
  readonly name: string;
  readonly architecture: string;
  readonly layers: number;
  readonly hidden: number;
  readonly heads: number;
  readonly kvHeads: number;
  readonly headDim: number;
  readonly vocab: number;
  readonly contextLength: number;
  readonly bosTokenId: number | null;
  readonly eosTokenIds: readonly number[];
  readonly onnxFile: string;
  readonly weights: string;
  readonly norms: string;
  /** K-slot batch graph (GraphOptions.slots): K sequences per forward. Absent: one sequence. */
  readonly slots?: number;
  /** Float type of activations and KV (GraphOptions.dtype). Absent: float32. */
  readonly dtype?: 'float32' | 'float16';
  /** The graph also outputs `argmax` (int64 [1, rows]): each logits row's argmax (float16 graphs, slot graphs included). */
  readonly greedyOutput?: boolean;
  /** The paged graph (GraphOptions.attention): any number of sequences per forward, a block KV cache of kvBlockSize positions a block. */
  readonly attention?: 'paged';
  readonly kvBlockSize?: number;
  readonly source: { readonly file: string; readonly sha256: string };
}
