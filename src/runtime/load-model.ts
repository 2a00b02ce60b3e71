/**
 * Opens a model directory: ours (anpd-model.json + model.onnx) or a Hugging Face ONNX export
 * (config.json + onnx/model*.onnx). Every problem names the file at fault.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ExecutionProviderError, ModelFormatError, ModelNotFoundError } from '../errors.js';
import { MANIFEST_FILE, MANIFEST_FORMAT, type ModelManifest } from '../model/model-manifest.js';
import type { BatchGraph } from './batch-forward.js';
import { GqaDecoderModel } from './gqa-decoder.js';
import { type GraphForwards, releaseForwards } from './graph-forwards.js';
import { planOptimum, planRuntime } from './runtime-plan.js';
import { inspectOptimumSession, OptimumDecoderModel } from './optimum-decoder.js';
import type { DeviceBatchGraph } from './device-batch.js';
import { DeviceDecoderModel } from './device-decoder.js';
import { PagedDecoderModel } from './device-paged.js';
import { DeviceSession, nativeAddon, NativeSession } from './native-run.js';
import { cudaProviderInstalled } from './gpu-probe.js';
import { createOrtSession, installHint, isProviderFailure } from './ort-session.js';
import {
  DEFAULT_RUNTIME_OPTIONS,
  type DecoderModel,
  type RuntimeOptions,
  type RuntimePlan,
  WEBGPU_BATCH_WIDTH_MAX,
} from './types.js';

/** Where Optimum / transformers.js put the decoder, in order of preference. */
export const OPTIMUM_ONNX_CANDIDATES = [
  'onnx/model.onnx',
  'onnx/decoder_with_past_model.onnx',
  'model.onnx',
  'decoder_with_past_model.onnx',
];

function readJsonFile(path: string): Record<string, unknown> {
  try {
    return JSON.parse(readFileSync(path, 'utf8')) as Record<string, unknown>;
  } catch (cause) {
    throw new ModelFormatError(path, `not valid JSON (${(cause as Error).message})`, { cause });
  }
}

/** A batch graph: it must be ours, batched, and converted from the same source weights. */
async function loadBatchGraph(
  dir: string,
  single: ModelManifest,
  options: RuntimeOptions,
  plan: RuntimePlan,
): Promise<BatchGraph> {
  const manifest = readBatchManifest(dir, single, plan);
  // On a GPU every slot's KV stays on the device, as the single-sequence graph's does.
  const deviceKv: string[] = [];
  if (plan.kvPlacement === 'device') {
    for (let s = 0; s < manifest.slots!; s++)
      for (let l = 0; l < manifest.layers; l++) deviceKv.push(`present.${s}.${l}.key`, `present.${s}.${l}.value`);
  }
  const path = join(dir, manifest.onnxFile);
  const native = openNativeSession(path, plan);
  return native !== undefined
    ? { native, width: manifest.slots! }
    : { session: await createOrtSession(path, options, deviceKv), width: manifest.slots! };
}

/** A batch graph directory's manifest, checked against the model's (same weights, slots ≥ 2, the provider's limits). */
function readBatchManifest(dir: string, single: ModelManifest, plan: RuntimePlan): ModelManifest {
  const manifestPath = join(dir, MANIFEST_FILE);
  if (!existsSync(manifestPath))
    throw new ModelNotFoundError(
      dir,
      `batch model directory has no ${MANIFEST_FILE} (convert one with: anpd convert --slots K)`,
    );
  const manifest = readJsonFile(manifestPath) as unknown as ModelManifest;
  if (manifest.format !== MANIFEST_FORMAT || manifest.slots === undefined || manifest.slots < 2) {
    throw new ModelFormatError(manifestPath, 'not a batch graph: expected "slots" ≥ 2 (anpd convert --slots K)');
  }
  if (
    manifest.source.sha256 !== single.source.sha256 ||
    manifest.layers !== single.layers ||
    manifest.vocab !== single.vocab
  ) {
    throw new ModelFormatError(
      manifestPath,
      `was converted from other weights (${manifest.source.file}) than the model (${single.source.file})`,
    );
  }
  // WebGPU binds at most 16 storage buffers per shader: the graph's Split and Concat over K slots take K + 1.
  if (plan.provider === 'webgpu' && manifest.slots > WEBGPU_BATCH_WIDTH_MAX) {
    throw new ModelFormatError(
      manifestPath,
      `has ${manifest.slots} slots; the webgpu provider takes at most ${WEBGPU_BATCH_WIDTH_MAX} (16 storage buffers per shader: K outputs + 1 input)`,
    );
  }
  if (manifest.dtype !== single.dtype)
    throw new ModelFormatError(
      manifestPath,
      `is a ${manifest.dtype ?? 'float32'} graph and the model a ${single.dtype ?? 'float32'} one: convert both with the same --dtype`,
    );
  return manifest;
}

/** The CPU native runner's session, where the plan has it (every session of the model, with the plan's attention kernel). */
function openNativeSession(path: string, plan: RuntimePlan): NativeSession | undefined {
  if (plan.backend !== 'cpu-native') return undefined;
  const addon = nativeAddon();
  if (addon === null) return undefined;
  try {
    return new NativeSession(addon, path, plan.intraOpThreads, plan.attention === 'native');
  } catch (cause) {
    throw new ModelFormatError(
      path,
      `ONNX Runtime cannot load it (native runner): ${(cause as Error).message.split('\n')[0]}`,
      { cause },
    );
  }
}

/**
 * The device path (src/runtime/device-decoder.ts): on 'cuda' when the addon is built (unless
 * deviceRun is 'off'), or emulated on the CPU provider (deviceRun 'emulate'); the plan says which.
 */
function openDeviceModel(
  path: string,
  manifest: ModelManifest,
  plan: RuntimePlan,
): DeviceDecoderModel | PagedDecoderModel {
  const target = plan.deviceTarget!;
  const addon = nativeAddon()!;
  if (target === 'cuda') {
    // What the machine lacks comes first: the provider, then the CUDA runtime or a device.
    if (!cudaProviderInstalled())
      throw new ExecutionProviderError(
        'cuda',
        `ORT's CUDA provider is not installed beside onnxruntime-node's library; ${installHint('cuda')}`,
      );
    let devices: number;
    try {
      devices = addon.cudaDeviceCount();
    } catch (cause) {
      throw new ExecutionProviderError(
        'cuda',
        `cannot start: ${(cause as Error).message} (the provider is installed; it needs CUDA 13's runtime libraries on LD_LIBRARY_PATH and an NVIDIA GPU with its driver; docs/gpu.md)`,
        { cause },
      );
    }
    const deviceId = plan.deviceId;
    if (deviceId >= devices)
      throw new ExecutionProviderError('cuda', `no CUDA device ${deviceId} (this machine has ${devices})`);
    if (manifest.dtype !== 'float16') {
      throw new ModelFormatError(
        path,
        "is a float32 graph; ORT's CUDA attention takes float16 (convert with --dtype float16; serve converts the default model so for cuda)",
      );
    }
  }
  const open = (onnxPath: string, shareWith?: DeviceSession): DeviceSession =>
    new DeviceSession(addon, onnxPath, {
      target,
      intraOpThreads: plan.intraOpThreads,
      deviceId: plan.deviceId,
      cudaGraphs: plan.experimental.cudaGraphs,
      weightOnlyGemm: plan.experimental.weightOnlyGemm,
      ...(shareWith !== undefined ? { shareWith } : {}),
      ...(target === 'host' && manifest.attention === 'paged' ? { pagedAttention: true } : {}),
    });
  let session: DeviceSession;
  try {
    session = open(path);
  } catch (cause) {
    const detail = (cause as Error).message.split('\n')[0]?.slice(0, 500) ?? 'unknown error';
    if (target === 'cuda' && isProviderFailure(detail))
      throw new ExecutionProviderError('cuda', `cannot start: ${detail}; ${installHint('cuda')}`, { cause });
    throw new ModelFormatError(
      path,
      `ONNX Runtime cannot load it (${target === 'cuda' ? 'CUDA execution provider' : 'device path on the CPU'}): ${detail}`,
      { cause },
    );
  }
  if (manifest.attention === 'paged') {
    try {
      return new PagedDecoderModel(session, manifest, plan, plan.batchSlots);
    } catch (error) {
      session.release();
      throw error;
    }
  }
  // Batch graphs: every slot's KV in one device buffer per layer, shared with the single-sequence
  // session (device-batch.ts).
  const batches: DeviceBatchGraph[] = [];
  try {
    for (const dir of plan.batchGraphDirs) {
      const batch = readBatchManifest(dir, manifest, plan);
      const onnxPath = join(dir, batch.onnxFile);
      // Converters before argmax was added to slot graphs made float16 slot graphs without it.
      if ((batch.greedyOutput === true) !== (manifest.greedyOutput === true))
        throw new ModelFormatError(
          join(dir, MANIFEST_FILE),
          'has no argmax output, unlike the model: convert it again (anpd convert --slots K --dtype float16)',
        );
      if (batches.some((b) => b.width === batch.slots))
        throw new ModelFormatError(
          join(dir, MANIFEST_FILE),
          `a second ${batch.slots}-slot graph: give each slot count once`,
        );
      try {
        batches.push({ width: batch.slots!, session: open(onnxPath, session) });
      } catch (cause) {
        throw new ModelFormatError(
          onnxPath,
          `ONNX Runtime cannot load it (device path): ${(cause as Error).message.split('\n')[0]?.slice(0, 500)}`,
          { cause },
        );
      }
    }
    return new DeviceDecoderModel(session, manifest, plan, batches);
  } catch (error) {
    for (const b of batches) b.session.release();
    session.release();
    throw error;
  }
}

export async function loadDecoderModel(
  dir: string,
  options: RuntimeOptions = DEFAULT_RUNTIME_OPTIONS,
): Promise<DecoderModel> {
  if (!existsSync(dir)) throw new ModelNotFoundError(dir, 'model directory not found');
  const manifestPath = join(dir, MANIFEST_FILE);
  if (existsSync(manifestPath)) {
    const manifest = readJsonFile(manifestPath) as unknown as ModelManifest;
    if (manifest.format !== MANIFEST_FORMAT)
      throw new ModelFormatError(manifestPath, `format "${String(manifest.format)}" is not "${MANIFEST_FORMAT}"`);
    const onnxPath = join(dir, manifest.onnxFile);
    const plan = planRuntime(options, manifest, onnxPath, () => nativeAddon() !== null);
    if (plan.backend === 'device') {
      const device = openDeviceModel(onnxPath, manifest, plan);
      // On CUDA, before the first request: each forward shape's first run is slow.
      if (device.session.target === 'cuda' && plan.experimental.warmUp) await device.warmUp();
      return device;
    }
    // On a GPU the KV cache stays on the device: ORT leaves the present.* outputs there.
    const deviceKv =
      plan.kvPlacement === 'device'
        ? Array.from({ length: manifest.layers }, (_, l) => [`present.${l}.key`, `present.${l}.value`]).flat()
        : [];
    // With the native runner, no onnxruntime-node session for this graph: nothing would run on it.
    const native = openNativeSession(onnxPath, plan);
    const forwards: GraphForwards =
      native !== undefined ? { native } : { session: await createOrtSession(onnxPath, options, deviceKv) };
    if (plan.batchGraphDirs.length === 0) return new GqaDecoderModel(forwards, manifest, plan, []);
    const batches: BatchGraph[] = [];
    try {
      for (const batchDir of plan.batchGraphDirs) {
        const batch = await loadBatchGraph(batchDir, manifest, options, plan);
        batches.push(batch);
        if (batches.some((b) => b !== batch && b.width === batch.width))
          throw new ModelFormatError(
            join(batchDir, MANIFEST_FILE),
            `a second ${batch.width}-slot graph: give each slot count once`,
          );
      }
      return new GqaDecoderModel(forwards, manifest, plan, batches);
    } catch (error) {
      for (const f of [forwards, ...batches]) await releaseForwards(f);
      throw error;
    }
  }
  const configPath = join(dir, 'config.json');
  if (!existsSync(configPath)) {
    throw new ModelNotFoundError(
      dir,
      `not a model directory: expected ${MANIFEST_FILE} (converted GGUF) or config.json (Hugging Face ONNX export)`,
    );
  }
  const config = readJsonFile(configPath);
  const num = (key: string): number | undefined =>
    typeof config[key] === 'number' ? (config[key] as number) : undefined;
  const need = (key: string): number => {
    const v = num(key);
    if (v === undefined) throw new ModelFormatError(configPath, `"${key}" is missing or not a number`);
    return v;
  };
  const heads = need('num_attention_heads');
  const hidden = need('hidden_size');
  const kvHeads = num('num_key_value_heads') ?? heads;
  const headDim = num('head_dim') ?? hidden / heads;
  const onnxRel = OPTIMUM_ONNX_CANDIDATES.find((c) => existsSync(join(dir, c)));
  if (onnxRel === undefined)
    throw new ModelNotFoundError(dir, `no ONNX decoder found (looked for ${OPTIMUM_ONNX_CANDIDATES.join(', ')})`);
  const onnxPath = join(dir, onnxRel);
  const session = await createOrtSession(onnxPath, options);
  const layout = inspectOptimumSession(onnxPath, session, { kvHeads, headDim });
  const expectedLayers = num('num_hidden_layers');
  if (expectedLayers !== undefined && expectedLayers !== layout.layers) {
    throw new ModelFormatError(
      onnxPath,
      `has ${layout.layers} past_key_values layers but config.json says num_hidden_layers = ${expectedLayers}`,
    );
  }
  const plan = planOptimum(options);
  const eos = config['eos_token_id'];
  const eosTokenIds = Array.isArray(eos)
    ? eos.filter((x): x is number => typeof x === 'number')
    : typeof eos === 'number'
      ? [eos]
      : [];
  return new OptimumDecoderModel(
    session,
    layout,
    {
      name:
        typeof config['_name_or_path'] === 'string' && config['_name_or_path'] !== ''
          ? (config['_name_or_path'] as string)
          : dir,
      kind: 'optimum',
      architecture: typeof config['model_type'] === 'string' ? (config['model_type'] as string) : 'unknown',
      vocabSize: need('vocab_size'),
      contextLength: Math.min(num('max_position_embeddings') ?? options.kvCapacity, options.kvCapacity),
      bosTokenId: num('bos_token_id'),
      eosTokenIds,
      executionProvider: plan.provider,
      batchSlots: 1,
      forwardRowsMin: plan.rowsMin,
      runner: plan.runner,
      attention: plan.attention,
      // The runner feeds and reads float32 KV (inspectOptimumSession refuses other types).
      dtype: plan.dtype,
    },
    plan,
  );
}
