/**
 * The native addon (native/ort-run.c, built by scripts/build-native.mjs into dist/native/;
 * without it onnxruntime-node runs every forward, and `anpd serve` says so): the same ONNX
 * Runtime, run with our buffers as outputs and nothing copied back.
 * onnxruntime-node copies every fetched output into a new ArrayBuffer, so binding the KV cache in
 * place still moved the whole cache each step (docs/perf-notes.md, "Outputs in place").
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { projectRoot } from '../paths.js';
import type { ort } from './ort-session.js';

interface Addon {
  readonly ortVersion: string;
  createSession(path: string, intraOpThreads: number, attentionDomain?: string, pagedAttention?: boolean): unknown;
  run(session: unknown, ...lists: unknown[]): void;
  releaseSession(session: unknown): void;
  createCudaSession(
    path: string,
    intraOpThreads: number,
    deviceId: number,
    cudaGraph: boolean,
    weightOnlyGemm: boolean,
  ): unknown;
  cudaDeviceCount(): number;
  deviceAlloc(session: unknown, bytes: number): DeviceBuffer;
  freeDevice(buffer: DeviceBuffer): void;
  deviceWrite(session: unknown, buffer: DeviceBuffer, byteOffset: number, array: ArrayBufferView): void;
  deviceRead(session: unknown, buffer: DeviceBuffer, byteOffset: number, array: ArrayBufferView): void;
  deviceView(buffer: DeviceBuffer, byteOffset: number, bytes: number): DeviceBuffer;
  createBinding(session: unknown, ...lists: unknown[]): unknown;
  shareDeviceMemory(session: unknown, withSession: unknown): void;
  runBinding(session: unknown, binding: unknown, graphId: number): void;
  releaseBinding(binding: unknown): void;
  deviceCopy(
    session: unknown,
    to: DeviceBuffer,
    toOffset: number,
    from: DeviceBuffer,
    fromOffset: number,
    bytes: number,
  ): void;
}

/** Memory the addon allocated for a session: CUDA memory on a CUDA session, host memory otherwise. */
export interface DeviceBuffer {
  readonly __deviceBuffer: unique symbol;
}

/** ONNX TensorProto element types of the tensors our graphs take and give. */
export const ONNX_TYPES: Readonly<Record<string, number>> = {
  float32: 1,
  uint8: 2,
  int8: 3,
  int32: 6,
  int64: 7,
  float16: 10,
};

/** Our kernel registers under GroupQueryAttention's own domain, so the converted graph needs no change. */
const GQA_DOMAIN = 'com.microsoft';

export const NATIVE_ADDON_PATH = join(projectRoot(), 'dist', 'native', 'anpd_ort_run.node');

let addon: Addon | null | undefined;
let addonProblem: string | undefined;

/** Why the addon cannot be here, without loading it: its file is missing. Undefined when it exists. */
export function nativeAddonFileProblem(): string | undefined {
  return existsSync(NATIVE_ADDON_PATH)
    ? undefined
    : `${NATIVE_ADDON_PATH} is missing: the build did not make it (node scripts/build-native.mjs says why)`;
}

/** The addon if it was built and loads here, else null (then onnxruntime-node's run is used). */
export function nativeAddon(): Addon | null {
  if (addon === undefined) {
    addonProblem = nativeAddonFileProblem();
    try {
      addon = addonProblem === undefined ? (createRequire(import.meta.url)(NATIVE_ADDON_PATH) as Addon) : null;
    } catch (error) {
      addon = null;
      addonProblem = `${NATIVE_ADDON_PATH} does not load: ${(error as Error).message.split('\n')[0]}`;
    }
  }
  return addon;
}

/** Why the addon does not load here (loading it if no one has), or undefined when it does. */
export function nativeAddonProblem(): string | undefined {
  nativeAddon();
  return addonProblem;
}

type TensorMap = Record<string, ort.Tensor>;

/** A second session over the same model file, run in place: feeds and fetches keep their buffers. */
export class NativeSession {
  private readonly handle: unknown;
  private readonly addon: Addon;
  readonly ownAttention: boolean;
  // Lists reused across runs: names and types are fixed per sequence, arrays and dims change.
  private readonly inNames: string[] = [];
  private readonly inArrays: ArrayBufferView[] = [];
  private readonly inDims: (readonly number[])[] = [];
  private readonly inTypes: number[] = [];
  private readonly outNames: string[] = [];
  private readonly outArrays: ArrayBufferView[] = [];
  private readonly outDims: (readonly number[])[] = [];
  private readonly outTypes: number[] = [];

  /**
   * ownAttention: the graph's GroupQueryAttention nodes run on the addon's kernel
   * (native/gqa-attention.c, which reads each KV head once per forward) instead of ORT's.
   */
  constructor(addon: Addon, path: string, intraOpThreads: number, ownAttention: boolean) {
    this.addon = addon;
    this.ownAttention = ownAttention;
    this.handle = addon.createSession(path, intraOpThreads, ownAttention ? GQA_DOMAIN : undefined);
  }

  /** Frees the ORT session now (the GC would, later); a run after it throws. */
  release(): void {
    this.addon.releaseSession(this.handle);
  }

  /** Runs synchronously, as onnxruntime-node's run does on the calling thread; outputs land in `fetches`' buffers. */
  run(feeds: TensorMap, fetches: TensorMap): void {
    fill(feeds, this.inNames, this.inArrays, this.inDims, this.inTypes);
    fill(fetches, this.outNames, this.outArrays, this.outDims, this.outTypes);
    this.addon.run(
      this.handle,
      this.inNames,
      this.inArrays,
      this.inDims,
      this.inTypes,
      this.outNames,
      this.outArrays,
      this.outDims,
      this.outTypes,
    );
  }
}

/** One input or output of a device run: its data (host array or device buffer), shape and ONNX element type. */
export interface DeviceValue {
  data: ArrayBufferView | DeviceBuffer;
  dims: readonly number[];
  readonly type: number;
}

/**
 * A session whose forwards read and write device memory in place (native/device.c): on ORT's CUDA
 * provider with CUDA graphs, or — `target: 'host'` — on the CPU provider with host memory standing
 * in for the device (the same code path, for machines without a GPU and for the tests).
 */
export class DeviceSession {
  private readonly handle: unknown;
  private readonly addon: Addon;
  readonly target: 'cuda' | 'host';
  readonly cudaGraphs: boolean;
  private readonly inNames: string[] = [];
  private readonly inArrays: (ArrayBufferView | DeviceBuffer)[] = [];
  private readonly inDims: (readonly number[])[] = [];
  private readonly inTypes: number[] = [];
  private readonly outNames: string[] = [];
  private readonly outArrays: (ArrayBufferView | DeviceBuffer)[] = [];
  private readonly outDims: (readonly number[])[] = [];
  private readonly outTypes: number[] = [];

  constructor(
    addon: Addon,
    path: string,
    options: {
      readonly target: 'cuda' | 'host';
      readonly intraOpThreads: number;
      readonly deviceId?: number;
      readonly cudaGraphs?: boolean;
      /** CUDA: ORT's fpA_intB kernels for MatMulNBits nodes without zero points (RuntimeOptions.experimental.weightOnlyGemm). */
      readonly weightOnlyGemm?: boolean;
      /** Another session of the same target and device whose buffers this one may read and write (a model's batch graphs). */
      readonly shareWith?: DeviceSession;
      /** Host target: PagedAttention nodes run on the addon's CPU kernel (ORT has only CUDA's). */
      readonly pagedAttention?: boolean;
    },
  ) {
    this.addon = addon;
    this.target = options.target;
    this.cudaGraphs = options.target === 'cuda' && options.cudaGraphs !== false;
    this.handle =
      options.target === 'cuda'
        ? addon.createCudaSession(
            path,
            options.intraOpThreads,
            options.deviceId ?? 0,
            this.cudaGraphs,
            options.weightOnlyGemm === true,
          )
        : addon.createSession(path, options.intraOpThreads, undefined, options.pagedAttention === true);
    if (options.shareWith !== undefined) addon.shareDeviceMemory(this.handle, options.shareWith.handle);
  }

  /** Zeroed memory of `bytes` bytes, freed by free() or when collected. */
  alloc(bytes: number): DeviceBuffer {
    return this.addon.deviceAlloc(this.handle, bytes);
  }

  free(buffer: DeviceBuffer): void {
    this.addon.freeDevice(buffer);
  }

  /** Host → device, finished when it returns (ordered after every earlier run). */
  write(buffer: DeviceBuffer, byteOffset: number, array: ArrayBufferView): void {
    this.addon.deviceWrite(this.handle, buffer, byteOffset, array);
  }

  /** Device → host, finished when it returns. */
  read(buffer: DeviceBuffer, byteOffset: number, array: ArrayBufferView): void {
    this.addon.deviceRead(this.handle, buffer, byteOffset, array);
  }

  /** The bytes [byteOffset, byteOffset + bytes) of `buffer` as a buffer of their own (frees nothing; dies with `buffer`). */
  view(buffer: DeviceBuffer, byteOffset: number, bytes: number): DeviceBuffer {
    return this.addon.deviceView(buffer, byteOffset, bytes);
  }

  /** Device → device, finished when it returns (ordered after every earlier run). */
  copy(to: DeviceBuffer, toOffset: number, from: DeviceBuffer, fromOffset: number, bytes: number): void {
    this.addon.deviceCopy(this.handle, to, toOffset, from, fromOffset, bytes);
  }

  /** graphId ≥ 0: the CUDA graph this run captures or replays (same shapes and addresses every time); -1: none. */
  run(
    inputs: Readonly<Record<string, DeviceValue>>,
    outputs: Readonly<Record<string, DeviceValue>>,
    graphId: number,
  ): void {
    fillValues(inputs, this.inNames, this.inArrays, this.inDims, this.inTypes);
    fillValues(outputs, this.outNames, this.outArrays, this.outDims, this.outTypes);
    this.addon.run(
      this.handle,
      this.inNames,
      this.inArrays,
      this.inDims,
      this.inTypes,
      this.outNames,
      this.outArrays,
      this.outDims,
      this.outTypes,
      this.cudaGraphs ? graphId : -1,
    );
  }

  /**
   * Binds `inputs` and `outputs` once (their memory and shapes are fixed from now on; contents may
   * change): run() then costs no per-value work, however many KV tensors the graph has.
   */
  bind(inputs: Readonly<Record<string, DeviceValue>>, outputs: Readonly<Record<string, DeviceValue>>): BoundRun {
    fillValues(inputs, this.inNames, this.inArrays, this.inDims, this.inTypes);
    fillValues(outputs, this.outNames, this.outArrays, this.outDims, this.outTypes);
    const binding = this.addon.createBinding(
      this.handle,
      this.inNames,
      this.inArrays,
      this.inDims,
      this.inTypes,
      this.outNames,
      this.outArrays,
      this.outDims,
      this.outTypes,
    );
    const graphs = this.cudaGraphs;
    return {
      run: (graphId) => this.addon.runBinding(this.handle, binding, graphs ? graphId : -1),
      release: () => this.addon.releaseBinding(binding),
    };
  }

  release(): void {
    this.addon.releaseSession(this.handle);
  }
}

/** A run with its values bound once (DeviceSession.bind). */
export interface BoundRun {
  /** graphId as DeviceSession.run's. */
  run(graphId: number): void;
  /** Frees the binding now (before its session is released). */
  release(): void;
}

function fillValues(
  values: Readonly<Record<string, DeviceValue>>,
  names: string[],
  arrays: (ArrayBufferView | DeviceBuffer)[],
  dims: (readonly number[])[],
  types: number[],
): void {
  let i = 0;
  for (const name in values) {
    const value = values[name]!;
    names[i] = name;
    arrays[i] = value.data;
    dims[i] = value.dims;
    types[i] = value.type;
    i++;
  }
  names.length = arrays.length = dims.length = types.length = i;
}

function fill(
  tensors: TensorMap,
  names: string[],
  arrays: ArrayBufferView[],
  dims: (readonly number[])[],
  types: number[],
): void {
  let i = 0;
  for (const name in tensors) {
    const tensor = tensors[name]!;
    const type = ONNX_TYPES[tensor.type];
    if (type === undefined)
      throw new TypeError(`native run: tensor ${name} has type ${tensor.type}, which the addon does not take`);
    names[i] = name;
    arrays[i] = tensor.data as ArrayBufferView;
    dims[i] = tensor.dims;
    types[i] = type;
    i++;
  }
  names.length = arrays.length = dims.length = types.length = i;
}
