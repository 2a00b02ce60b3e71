/**
 * The native runner (native/ort-run.c): the same ONNX Runtime as onnxruntime-node, run with the
 * KV cache and logits written in place. Its logits must be bitwise those of onnxruntime-node's run
 * through prefill (across a KV buffer growth), decode, multi-row verify forwards and a rollback.
 * Under CI=true the addon must have been built (npm run build does it); elsewhere a missing addon
 * skips this file with the reason.
 */
import test from 'ava';
import { loadDecoderModel } from '../src/runtime/load-model.js';
import { NATIVE_ADDON_PATH, nativeAddon } from '../src/runtime/native-run.js';
import type { DecoderModel } from '../src/runtime/types.js';
import { defaultModelDir } from './support/default-model.js';

const addon = nativeAddon();
const open = async (nativeRun: 'auto' | 'off'): Promise<DecoderModel> =>
  loadDecoderModel(await defaultModelDir(), { executionProvider: 'cpu', intraOpThreads: 0, kvCapacity: 1024, nativeRun });

if (addon === null && process.env['CI'] === 'true') {
  test('the native runner is built in CI', (t) => {
    t.fail(`${NATIVE_ADDON_PATH} is missing or does not load: npm run build builds it (scripts/build-native.mjs says why not)`);
  });
} else if (addon === null) {
  test.skip(`the native runner (not built: ${NATIVE_ADDON_PATH})`, () => {});
} else {
  test('models use the native runner on the cpu unless nativeRun is off', async (t) => {
    const native = await open('auto');
    const plain = await open('off');
    t.is(native.info.runner, 'native');
    t.is(plain.info.runner, 'onnxruntime-node');
    t.regex(addon.ortVersion, /^1\.\d+\.\d+/);
    await native.dispose();
    await plain.dispose();
  });

  test('native and onnxruntime-node runs give bitwise-equal logits through prefill, buffer growth, decode, verify and rollback', async (t) => {
    const native = await open('auto');
    const plain = await open('off');
    const a = native.createSequence();
    const b = plain.createSequence();
    // 300 prompt tokens: past the first KV buffer (256 slots), so the growth copy is exercised too.
    const prompt = Array.from({ length: 300 }, (_, i) => (i * 7919 + 13) % native.info.vocabSize);
    const steps: { tokens: number[]; rows: number; rewindTo?: number }[] = [
      { tokens: prompt, rows: 1 },
      { tokens: [42], rows: 1 },
      { tokens: [7, 8, 9, 10, 11], rows: 5 },
      { tokens: [12, 13, 14], rows: 3, rewindTo: 303 },
      { tokens: [15], rows: 1 },
    ];
    for (const [i, step] of steps.entries()) {
      if (step.rewindTo !== undefined) {
        a.rewind(step.rewindTo);
        b.rewind(step.rewindTo);
      }
      const x = (await a.forward(step.tokens, step.rows)).slice();
      const y = await b.forward(step.tokens, step.rows);
      t.is(x.length, y.length);
      let differing = 0;
      for (let j = 0; j < x.length; j++) if (!Object.is(x[j], y[j])) differing++;
      t.is(differing, 0, `step ${i}: ${differing} logits differ`);
      t.is(a.length, b.length);
    }
    a.dispose();
    b.dispose();
    await native.dispose();
    await plain.dispose();
  });
}
