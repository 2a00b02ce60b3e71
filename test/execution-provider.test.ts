/**
 * Execution providers: cuda (not bundled in onnxruntime-node's npm build) and webgpu (bundled, but
 * needs a Vulkan device) either load for real or fail with an ExecutionProviderError that names the
 * provider and what is missing — never a silent fall back to the CPU, never a generic model error.
 * The GPU numbers themselves come from bench/device-bench.ts on a GPU machine (docs/benchmarks.md).
 * `info.executionProvider` only echoes the option: what ORT actually placed (every kernel run on
 * webgpu, KV outputs on the device, disabled CPU fallback refusing a graph webgpu cannot take) is
 * observed from outside the runtime by test/webgpu-lavapipe.test.ts.
 */
import test from 'ava';
import { ExecutionProviderError, ModelFormatError } from '../src/errors.js';
import { loadDecoderModel } from '../src/runtime/load-model.js';
import { availableExecutionProviders } from '../src/runtime/ort-session.js';
import { defaultModelDir } from './support/default-model.js';

test('the npm build bundles cpu and webgpu; cuda is listed but not bundled', (t) => {
  const available = availableExecutionProviders();
  t.deepEqual(available.get('cpu'), { bundled: true });
  t.deepEqual(available.get('webgpu'), { bundled: true });
  t.deepEqual(available.get('cuda'), { bundled: false });
});

for (const provider of ['cuda', 'webgpu'] as const) {
  test.serial(
    `${provider}: loads on a machine that has it, else a clear ExecutionProviderError (no CPU fallback)`,
    async (t) => {
      const dir = await defaultModelDir();
      try {
        const model = await loadDecoderModel(dir, { executionProvider: provider, intraOpThreads: 1, kvCapacity: 256 });
        t.is(model.info.executionProvider, provider);
        t.log(`${provider} is available on this machine`);
        await model.dispose();
      } catch (error) {
        t.true(error instanceof ExecutionProviderError, `got ${(error as Error).name}: ${(error as Error).message}`);
        t.false(error instanceof ModelFormatError);
        const e = error as ExecutionProviderError;
        t.is(e.code, 'EXECUTION_PROVIDER');
        t.is(e.provider, provider);
        t.regex(e.message, new RegExp(`execution provider "${provider}"`));
        // cuda: the provider is missing (install command) or, installed, the CUDA runtime or a GPU is.
        t.regex(e.message, provider === 'cuda' ? /npm run install:cuda|LD_LIBRARY_PATH/ : /Vulkan/);
        t.log(e.message.slice(0, 300));
      }
    },
  );
}

test.serial('forwardRowsMin is validated', async (t) => {
  await t.throwsAsync(
    loadDecoderModel(await defaultModelDir(), {
      executionProvider: 'cpu',
      intraOpThreads: 1,
      kvCapacity: 256,
      forwardRowsMin: 0,
    }),
    { instanceOf: RangeError, message: /forwardRowsMin/ },
  );
});
