/**
 * What `--execution-provider auto` (the default) resolves to: cuda where ORT's CUDA provider is
 * installed beside onnxruntime-node's library (npm run install:cuda), the native addon is built
 * and the CUDA runtime sees a GPU; else cpu. Cheap (a file check, then cudaGetDeviceCount through
 * the addon) and never throws: a machine without any of it simply runs on the CPU.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { nativeAddon } from './native-run.js';
import type { ExecutionProviderName } from './types.js';

/** The folder of onnxruntime-node's native library (where ORT looks for provider libraries). */
export function ortLibraryDir(): string {
  return join(
    dirname(createRequire(import.meta.url).resolve('onnxruntime-node/package.json')),
    'bin',
    'napi-v6',
    process.platform,
    process.arch,
  );
}

/** Whether ORT's CUDA provider libraries sit beside onnxruntime-node's library (npm run install:cuda). */
export function cudaProviderInstalled(): boolean {
  try {
    const dir = ortLibraryDir();
    return (
      existsSync(join(dir, 'libonnxruntime_providers_cuda.so')) &&
      existsSync(join(dir, 'libonnxruntime_providers_shared.so'))
    );
  } catch {
    return false;
  }
}

export function probeExecutionProvider(): { readonly provider: ExecutionProviderName; readonly reason: string } {
  if (!cudaProviderInstalled()) return { provider: 'cpu', reason: 'no CUDA provider installed (npm run install:cuda)' };
  const addon = nativeAddon();
  if (addon === null) return { provider: 'cpu', reason: 'the native addon is not built' };
  try {
    const devices = addon.cudaDeviceCount();
    return devices > 0
      ? { provider: 'cuda', reason: `${devices} CUDA device(s)` }
      : { provider: 'cpu', reason: 'no CUDA device' };
  } catch (error) {
    return { provider: 'cpu', reason: (error as Error).message };
  }
}
