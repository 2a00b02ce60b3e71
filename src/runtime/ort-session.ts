/**
 * ONNX Runtime session creation. Failures become ModelFormatError naming the file, never a raw ORT throw.
 */
import { existsSync, statSync } from 'node:fs';
import ort from 'onnxruntime-node';
import { ExecutionProviderError, ModelFormatError, ModelNotFoundError } from '../errors.js';
import type { ExecutionProviderName, RuntimeOptions } from './types.js';

export { ort };

const INSTALL_HINTS: Record<ExecutionProviderName, string> = {
  cpu: '',
  webgpu:
    "it needs a Vulkan loader (libvulkan1) and a Vulkan driver for the GPU (NVIDIA: the driver's ICD plus libglvnd; see docs/gpu.md)",
  cuda: "onnxruntime-node's npm build has no CUDA provider: install ORT's from PyPI with `npm run install:cuda` (it needs CUDA 13's runtime libraries on LD_LIBRARY_PATH; docs/gpu.md)",
};

export function installHint(provider: ExecutionProviderName): string {
  return INSTALL_HINTS[provider];
}

/** Errors that come from the provider or the device, not from the model file. */
export function isProviderFailure(message: string): boolean {
  return /adapter|vulkan|webgpu|dawn|cuda|cudnn|libcu|provider|device/i.test(message);
}

/** Providers this onnxruntime-node build can load, by name (bundled or installed next to the binding). */
export function availableExecutionProviders(): Map<string, { bundled: boolean }> {
  return new Map(
    ort.listSupportedBackends().map((b: { name: string; bundled: boolean }) => [b.name, { bundled: b.bundled }]),
  );
}

/**
 * Checks that `provider` exists in this build before a session is tried, so the error says what
 * is missing rather than what ORT stumbled on.
 */
export function checkExecutionProvider(provider: ExecutionProviderName): void {
  if (provider === 'cpu') return;
  const available = availableExecutionProviders();
  if (!available.has(provider)) {
    throw new ExecutionProviderError(
      provider,
      `this onnxruntime-node build has no such provider (it has: ${[...available.keys()].join(', ')}); ${INSTALL_HINTS[provider]}`,
    );
  }
}

/** `deviceOutputs`: outputs ORT should leave on the device (GPU providers), e.g. the KV cache. */
export async function createOrtSession(
  path: string,
  options: RuntimeOptions,
  deviceOutputs: readonly string[] = [],
): Promise<ort.InferenceSession> {
  if (!existsSync(path)) throw new ModelNotFoundError(path, 'ONNX model file not found');
  const size = statSync(path).size;
  if (size === 0) throw new ModelFormatError(path, 'ONNX model file is empty');
  const provider = options.executionProvider;
  checkExecutionProvider(provider);
  const gpu = provider !== 'cpu';
  try {
    return await ort.InferenceSession.create(path, {
      executionProviders: [provider],
      graphOptimizationLevel: 'all',
      ...(options.intraOpThreads > 0 ? { intraOpNumThreads: options.intraOpThreads } : {}),
      interOpNumThreads: 1,
      logSeverityLevel: 3,
      ...(gpu && deviceOutputs.length > 0
        ? { preferredOutputLocation: Object.fromEntries(deviceOutputs.map((n) => [n, 'gpu-buffer' as const])) }
        : {}),
      // A node the GPU provider cannot run becomes a load error instead of a silent CPU fallback.
      ...(gpu && options.experimental?.allowCpuFallback !== true
        ? { extra: { session: { disable_cpu_ep_fallback: '1' } } }
        : {}),
    });
  } catch (cause) {
    const detail = (cause as Error).message.split('\n')[0]?.slice(0, 500) ?? 'unknown error';
    if (gpu && CPU_FALLBACK_REFUSED.test(detail)) {
      throw new ModelFormatError(
        path,
        `has nodes the ${provider} provider has no kernel for, and CPU fallback is disabled so that a model never runs partly on the CPU unnoticed (ONNX Runtime: ${detail})`,
        { cause },
      );
    }
    if (gpu && isProviderFailure(detail)) {
      throw new ExecutionProviderError(provider, `cannot start: ${detail}; ${INSTALL_HINTS[provider]}`, { cause });
    }
    throw new ModelFormatError(path, `ONNX Runtime cannot load it${gpu ? ` on ${provider}` : ''}: ${detail}`, {
      cause,
    });
  }
}

/** ORT's refusal when disable_cpu_ep_fallback meets a node the GPU provider cannot take. */
const CPU_FALLBACK_REFUSED = /fallback to CPU EP has been explicitly disabled/;
