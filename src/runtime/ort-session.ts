/**
 * ONNX Runtime session creation. Failures become ModelFormatError naming the file, never a raw ORT throw.
 */
import { existsSync, statSync } from 'node:fs';
import ort from 'onnxruntime-node';
import { ModelFormatError, ModelNotFoundError } from '../errors.js';
import type { RuntimeOptions } from './types.js';

export { ort };

export async function createOrtSession(path: string, options: RuntimeOptions): Promise<ort.InferenceSession> {
  if (!existsSync(path)) throw new ModelNotFoundError(path, 'ONNX model file not found');
  const size = statSync(path).size;
  if (size === 0) throw new ModelFormatError(path, 'ONNX model file is empty');
  try {
    return await ort.InferenceSession.create(path, {
      executionProviders: [options.executionProvider],
      graphOptimizationLevel: 'all',
      ...(options.intraOpThreads > 0 ? { intraOpNumThreads: options.intraOpThreads } : {}),
      interOpNumThreads: 1,
      logSeverityLevel: 3,
    });
  } catch (cause) {
    const detail = (cause as Error).message.split('\n')[0]?.slice(0, 500) ?? 'unknown error';
    throw new ModelFormatError(path, `ONNX Runtime cannot load it: ${detail}`, { cause });
  }
}
