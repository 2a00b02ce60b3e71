/**
 * What runs the forwards of one graph of our converted model (the single-sequence graph or a batch
 * graph), and the tensors every runner of it allocates alike.
 */
import type { ModelManifest } from '../model/model-manifest.js';
import type { NativeSession } from './native-run.js';
import { ort } from './ort-session.js';

/**
 * onnxruntime-node's session, or (CPU, when built) the native runner's — then no onnxruntime-node
 * session is created for the graph at all (a second copy of the weights, ~150 MB, and its load time).
 */
export type GraphForwards =
  | { readonly session: ort.InferenceSession; readonly native?: undefined }
  | { readonly session?: undefined; readonly native: NativeSession };

/** Frees whichever session runs these forwards. */
export async function releaseForwards(forwards: GraphForwards): Promise<void> {
  await forwards.session?.release();
  forwards.native?.release();
}

/** A zeroed KV tensor in the graph's float type (float16 graphs: binary16 bits in a Uint16Array). */
export function kvTensor(m: ModelManifest, size: number, dims: readonly number[]): ort.Tensor {
  return m.dtype === 'float16'
    ? new ort.Tensor('float16', new Uint16Array(size), dims)
    : new ort.Tensor('float32', new Float32Array(size), dims);
}

/** The buffer and tensor of a given size, made on first use. */
export function cachedTensor<A>(
  map: Map<number, { data: A; tensor: ort.Tensor }>,
  size: number,
  array: (n: number) => A,
  tensor: (data: A) => ort.Tensor,
): { data: A; tensor: ort.Tensor } {
  let entry = map.get(size);
  if (entry === undefined) {
    const data = array(size);
    entry = { data, tensor: tensor(data) };
    map.set(size, entry);
  }
  return entry;
}

/**
 * Runs a forward on host buffers, outputs written into `fetches`: the native runner synchronously
 * (undefined), onnxruntime-node asynchronously (its promise).
 */
export function runHostForward(
  forwards: GraphForwards,
  feeds: Record<string, ort.Tensor>,
  fetches: Record<string, ort.Tensor>,
): Promise<unknown> | undefined {
  if (forwards.native !== undefined) {
    forwards.native.run(feeds, fetches);
    return undefined;
  }
  return forwards.session.run(feeds, fetches);
}
