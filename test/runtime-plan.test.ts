/**
 * RuntimeOptions resolve once into a RuntimePlan: which backend, runner, attention kernel, row
 * minimum and KV placement a converted model gets, without loading anything.
 */
import test from 'ava';
import { ModelFormatError } from '../src/errors.js';
import type { ModelManifest } from '../src/model/model-manifest.js';
import {
  DEVICE_FORWARD_ROWS,
  FORWARD_ROWS_MIN,
  FORWARD_ROWS_MIN_GPU,
  planRuntime,
} from '../src/runtime/runtime-plan.js';
import type { RuntimeOptions } from '../src/runtime/types.js';

const manifest = (dtype?: 'float16'): ModelManifest => ({ dtype }) as unknown as ModelManifest;
const cpu: RuntimeOptions = { executionProvider: 'cpu', intraOpThreads: 0, kvCapacity: 1024 };
const built = () => true;
const missing = () => false;

test('on the cpu: the native runner with its own attention where built, onnxruntime-node otherwise, host KV, 2 rows', (t) => {
  const native = planRuntime(cpu, manifest(), 'm.onnx', built);
  t.like(native, {
    backend: 'cpu-native',
    runner: 'native',
    attention: 'native',
    rowsMin: FORWARD_ROWS_MIN,
    kvPlacement: 'host',
    batchGraphDirs: [],
  });
  t.like(planRuntime({ ...cpu, experimental: { nativeAttention: 'off' } }, manifest(), 'm.onnx', built), {
    backend: 'cpu-native',
    attention: 'onnxruntime',
  });
  t.like(planRuntime(cpu, manifest('float16'), 'm.onnx', built), {
    backend: 'cpu-native',
    attention: 'onnxruntime',
    dtype: 'float16',
  });
  t.like(planRuntime({ ...cpu, nativeRun: 'off' }, manifest(), 'm.onnx', built), {
    backend: 'cpu-onnxruntime',
    runner: 'onnxruntime-node',
    attention: 'onnxruntime',
  });
  t.like(planRuntime(cpu, manifest(), 'm.onnx', missing), { backend: 'cpu-onnxruntime', runner: 'onnxruntime-node' });
  t.like(planRuntime({ ...cpu, batchModelDir: 'k4' }, manifest(), 'm.onnx', built), {
    batchGraphDirs: ['k4'],
    batchPrefillChunkTokens: 512,
  });
});

test('on a GPU: onnxruntime-node with the KV on the device and 4 rows, or the device path on cuda where the addon is built', (t) => {
  const asked: string[] = [];
  const webgpu = planRuntime(
    { ...cpu, executionProvider: 'webgpu' },
    manifest(),
    'm.onnx',
    () => (asked.push('addon'), true),
  );
  t.like(webgpu, {
    backend: 'ort-device-kv',
    runner: 'onnxruntime-node',
    kvPlacement: 'device',
    rowsMin: FORWARD_ROWS_MIN_GPU,
  });
  t.deepEqual(asked, [], 'the addon is not loaded where it cannot run');
  t.like(planRuntime({ ...cpu, executionProvider: 'cuda' }, manifest('float16'), 'm.onnx', built), {
    backend: 'device',
    deviceTarget: 'cuda',
    runner: 'native',
    rowsMin: DEVICE_FORWARD_ROWS,
  });
  t.like(planRuntime({ ...cpu, executionProvider: 'cuda', nativeRun: 'off' }, manifest('float16'), 'm.onnx', built), {
    backend: 'ort-device-kv',
  });
  t.like(planRuntime({ ...cpu, executionProvider: 'cuda' }, manifest('float16'), 'm.onnx', missing), {
    backend: 'ort-device-kv',
  });
  t.like(
    planRuntime({ ...cpu, experimental: { deviceRun: 'emulate', cudaGraphs: false } }, manifest(), 'm.onnx', built),
    {
      backend: 'device',
      deviceTarget: 'host',
      experimental: { cudaGraphs: false, greedyOnDevice: true, warmUp: true, weightOnlyGemm: false },
    },
  );
  t.like(
    planRuntime({ ...cpu, experimental: { deviceRun: 'emulate', weightOnlyGemm: true } }, manifest(), 'm.onnx', built),
    { experimental: { weightOnlyGemm: true } },
  );
});

test('batchSlots asks for the paged graph: a GQA graph is refused naming the file and the conversion; the paged graph needs the device path', (t) => {
  const emulate = { ...cpu, experimental: { deviceRun: 'emulate' as const } };
  t.throws(() => planRuntime({ ...emulate, batchSlots: 8 }, manifest('float16'), 'm.onnx', built), {
    instanceOf: ModelFormatError,
    message: /m\.onnx.*not the paged graph.*--attention paged/,
  });
  const paged = { dtype: 'float16', attention: 'paged' } as unknown as ModelManifest;
  t.is(planRuntime({ ...emulate, batchSlots: 8 }, paged, 'p.onnx', built).batchSlots, 8);
  t.true(planRuntime({ ...emulate }, paged, 'p.onnx', built).batchInvariant, 'batch invariance is the default');
  t.throws(() => planRuntime({ ...cpu, batchSlots: 8 }, paged, 'p.onnx', built), {
    instanceOf: ModelFormatError,
    message: /p\.onnx.*CUDA only/,
  });
  t.throws(() => planRuntime({ ...emulate, batchSlots: 0 }, paged, 'p.onnx', built), {
    message: /batchSlots must be an integer in \[1, 256\], got 0/,
  });
  t.is(planRuntime({ ...emulate }, paged, 'p.onnx', built).prefillTokensPerStep, 2048);
  t.throws(() => planRuntime({ ...emulate, prefillTokensPerStep: 32 }, paged, 'p.onnx', built), {
    message: /prefillTokensPerStep must be an integer in \[64, 8192\], got 32/,
  });
});

test('what cannot run is refused while planning, with the file or the setting named', (t) => {
  t.throws(() => planRuntime({ ...cpu, experimental: { deviceRun: 'emulate' } }, manifest(), 'm.onnx', missing), {
    instanceOf: ModelFormatError,
    message: /m\.onnx.*needs the native addon/,
  });
  t.throws(() => planRuntime({ ...cpu, forwardRowsMin: 0 }, manifest(), 'm.onnx', built), {
    instanceOf: RangeError,
    message: /forwardRowsMin must be an integer in \[1, 64\], got 0/,
  });
  t.throws(
    () =>
      planRuntime({ ...cpu, experimental: { deviceRun: 'emulate' }, forwardRowsMin: 65 }, manifest(), 'm.onnx', built),
    { message: /on the device runner/ },
  );
  t.throws(() => planRuntime({ ...cpu, experimental: { batchPrefillChunkTokens: 513 } }, manifest(), 'm.onnx', built), {
    instanceOf: RangeError,
    message: /batchPrefillChunkTokens/,
  });
});
