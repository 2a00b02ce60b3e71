/**
 * RuntimeOptions resolved once, for one model directory, into what will run it: the backend (which
 * DecoderModel implementation), the runner and attention kernel of its forwards, the float type,
 * the row minimum, where the KV cache lives and the batch graphs. load-model.ts makes the plan;
 * each backend reads only the plan, never the options.
 */
import { ModelFormatError } from '../errors.js';
import type { ModelManifest } from '../model/model-manifest.js';
import { FORWARD_TOKENS_MAX } from './check-forward.js';
import {
  type ModelInfo,
  PAGED_BATCH_SLOTS_DEFAULT,
  PAGED_BATCH_SLOTS_MAX,
  PREFILL_TOKENS_PER_STEP_DEFAULT,
  PREFILL_TOKENS_PER_STEP_MAX,
  PREFILL_TOKENS_PER_STEP_MIN,
  type RuntimeOptions,
  type RuntimePlan,
} from './types.js';

/** Query rows every forward runs at least on the CPU (see gqa-sequence.ts, batch invariance). */
export const FORWARD_ROWS_MIN = 2;
/**
 * On WebGPU, MatMulNBits takes another kernel from 4 rows on (the T-ratio table steps there), and
 * with 2-row forwards plain decoding and draft verification gave different tokens on 3 of 10
 * prompts on an H200 (docs/perf-notes.md, "GPU"): GPU forwards run at least 4 rows.
 */
export const FORWARD_ROWS_MIN_GPU = 4;
/**
 * Query rows of every short forward on the device path, so decoding and verification share one
 * shape (drafts are kept to 3 tokens: ModelInfo.verifyTokensMax). Measured on an H200 in one run
 * (bench/results/h200-issue18/run2-rows.json, peers-rows4/8.json): a graph forward costs
 * 1.2–1.5 ms up to 4 rows and ~0.25 ms more from 5 (ORT's MatMulNBits switches kernels); 4 rows
 * gave the best plain decoding (0.71–0.73× llama.cpp against 0.62–0.63× with 8) and the same or
 * better ANPD.
 */
export const DEVICE_FORWARD_ROWS = 4;

/**
 * The plan for our converted model at `onnxPath` (`manifest`); `nativeBuilt` says whether the
 * native addon loads (asked only where it could run). Machine checks (a CUDA device, the
 * provider's libraries) stay with the backend that needs them.
 */
export function planRuntime(
  options: RuntimeOptions,
  manifest: ModelManifest,
  onnxPath: string,
  nativeBuilt: () => boolean,
): RuntimePlan {
  const x = options.experimental ?? {};
  const provider = options.executionProvider;
  const dtype = manifest.dtype ?? 'float32';
  const deviceRun = x.deviceRun ?? 'auto';
  // --native-run off keeps every forward on onnxruntime-node, the device path's included.
  const deviceTarget =
    deviceRun === 'emulate'
      ? 'host'
      : provider === 'cuda' && deviceRun === 'auto' && options.nativeRun !== 'off' && nativeBuilt()
        ? 'cuda'
        : undefined;
  if (deviceRun === 'emulate' && !nativeBuilt())
    throw new ModelFormatError(
      onnxPath,
      'deviceRun "emulate" needs the native addon, which is not built or does not load (node scripts/build-native.mjs says why)',
    );
  const common = {
    provider,
    dtype,
    deviceId: options.deviceId ?? 0,
    intraOpThreads: options.intraOpThreads,
    kvCapacity: options.kvCapacity,
    batchGraphDirs:
      options.batchModelDir === undefined
        ? []
        : typeof options.batchModelDir === 'string'
          ? [options.batchModelDir]
          : options.batchModelDir,
    experimental: {
      cudaGraphs: x.cudaGraphs ?? true,
      greedyOnDevice: x.greedyOnDevice ?? true,
      warmUp: x.warmUp ?? true,
      weightOnlyGemm: x.weightOnlyGemm ?? false,
    },
    batchInvariant: options.batchInvariant ?? true,
    batchSlots: options.batchSlots ?? PAGED_BATCH_SLOTS_DEFAULT,
    prefillTokensPerStep: options.prefillTokensPerStep ?? PREFILL_TOKENS_PER_STEP_DEFAULT,
  };
  const prefillTokens = common.prefillTokensPerStep;
  if (
    !Number.isInteger(prefillTokens) ||
    prefillTokens < PREFILL_TOKENS_PER_STEP_MIN ||
    prefillTokens > PREFILL_TOKENS_PER_STEP_MAX
  )
    throw new RangeError(
      `prefillTokensPerStep must be an integer in [${PREFILL_TOKENS_PER_STEP_MIN}, ${PREFILL_TOKENS_PER_STEP_MAX}], got ${prefillTokens}`,
    );
  if (!Number.isInteger(common.batchSlots) || common.batchSlots < 1 || common.batchSlots > PAGED_BATCH_SLOTS_MAX)
    throw new RangeError(`batchSlots must be an integer in [1, ${PAGED_BATCH_SLOTS_MAX}], got ${common.batchSlots}`);
  if (options.batchSlots !== undefined && manifest.attention !== 'paged')
    throw new ModelFormatError(
      onnxPath,
      'is not the paged graph, and batchSlots (--batch-slots on cuda) batches only that one: convert the GGUF with anpd convert --attention paged --dtype float16 (serve does it for the default and registry models)',
    );
  // ORT runs PagedAttention on CUDA only; the emulated device path runs it on the addon's CPU kernel.
  if (manifest.attention === 'paged' && deviceTarget === undefined)
    throw new ModelFormatError(
      onnxPath,
      'is the paged graph (PagedAttention), which ONNX Runtime runs on CUDA only: serve it with --execution-provider cuda and the native addon built, or convert without --attention paged',
    );
  if (deviceTarget !== undefined) {
    const rowsMin = checkRowsMin(options.forwardRowsMin ?? DEVICE_FORWARD_ROWS, ' on the device runner');
    return {
      ...common,
      backend: 'device',
      runner: 'native',
      attention: 'onnxruntime',
      rowsMin,
      kvPlacement: 'device',
      deviceTarget,
      batchPrefillChunkTokens: FORWARD_TOKENS_MAX,
    };
  }
  const rowsMin = checkRowsMin(
    options.forwardRowsMin ?? (provider === 'cpu' ? FORWARD_ROWS_MIN : FORWARD_ROWS_MIN_GPU),
    '',
  );
  const chunk = x.batchPrefillChunkTokens ?? FORWARD_TOKENS_MAX;
  if (!Number.isInteger(chunk) || chunk < 1 || chunk > FORWARD_TOKENS_MAX)
    throw new RangeError(`batchPrefillChunkTokens must be an integer in [1, ${FORWARD_TOKENS_MAX}], got ${chunk}`);
  if (provider !== 'cpu')
    return {
      ...common,
      backend: 'ort-device-kv',
      runner: 'onnxruntime-node',
      attention: 'onnxruntime',
      rowsMin,
      kvPlacement: 'device',
      batchPrefillChunkTokens: chunk,
    };
  // The addon runs on the host, with host buffers. Every session of a model (the single-sequence
  // graph and the batch graphs) is native or none is, so the kernel choice is the same for all the
  // forwards of a sequence. Our kernel is float32.
  const native = (options.nativeRun ?? 'auto') !== 'off' && nativeBuilt();
  const ownAttention = native && (x.nativeAttention ?? 'auto') === 'auto' && dtype !== 'float16';
  return {
    ...common,
    backend: native ? 'cpu-native' : 'cpu-onnxruntime',
    runner: native ? 'native' : 'onnxruntime-node',
    attention: ownAttention ? 'native' : 'onnxruntime',
    rowsMin,
    kvPlacement: 'host',
    batchPrefillChunkTokens: chunk,
  };
}

/** The plan of a Hugging Face ONNX export: onnxruntime-node, its own cache layout, no pad rows. */
export function planOptimum(options: RuntimeOptions): RuntimePlan {
  return {
    backend: 'optimum',
    provider: options.executionProvider,
    runner: 'onnxruntime-node',
    attention: 'onnxruntime',
    dtype: 'float32',
    rowsMin: 1,
    kvPlacement: 'host',
    deviceId: options.deviceId ?? 0,
    intraOpThreads: options.intraOpThreads,
    kvCapacity: options.kvCapacity,
    batchGraphDirs: [],
    batchPrefillChunkTokens: FORWARD_TOKENS_MAX,
    experimental: { cudaGraphs: false, greedyOnDevice: false, warmUp: false, weightOnlyGemm: false },
    batchInvariant: false,
    batchSlots: 1,
    prefillTokensPerStep: PREFILL_TOKENS_PER_STEP_DEFAULT,
  };
}

function checkRowsMin(rows: number, where: string): number {
  if (!Number.isInteger(rows) || rows < 1 || rows > 64)
    throw new RangeError(`forwardRowsMin must be an integer in [1, 64]${where}, got ${rows}`);
  return rows;
}

/** ModelInfo of our converted model run by `plan`. */
export function convertedModelInfo(
  manifest: ModelManifest,
  plan: RuntimePlan,
  shape: { readonly contextLength: number; readonly batchSlots: number; readonly verifyTokensMax?: number },
): ModelInfo {
  return {
    name: manifest.name,
    kind: 'anpd-gqa',
    architecture: manifest.architecture,
    vocabSize: manifest.vocab,
    contextLength: shape.contextLength,
    bosTokenId: manifest.bosTokenId ?? undefined,
    eosTokenIds: manifest.eosTokenIds,
    executionProvider: plan.provider,
    batchSlots: shape.batchSlots,
    forwardRowsMin: plan.rowsMin,
    ...(shape.verifyTokensMax !== undefined ? { verifyTokensMax: shape.verifyTokensMax } : {}),
    runner: plan.runner,
    attention: plan.attention,
    dtype: plan.dtype,
    // The device path (emulated on the CPU too) says its own: its KV comes in whole sets.
    ...(plan.provider === 'cpu' && plan.backend !== 'device'
      ? {
          kvBytesPerPosition:
            manifest.layers * 2 * manifest.kvHeads * manifest.headDim * (plan.dtype === 'float16' ? 2 : 4),
        }
      : {}),
  };
}
