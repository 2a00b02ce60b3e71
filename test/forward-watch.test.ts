import test from 'ava';
import { ForwardWatch } from '../src/engine/forward-watch.js';
import type { BatchExecutor, DecoderModel } from '../src/runtime/types.js';
import { FakeDecoderModel } from './support/fake-decoder-model.js';

test('the watch shows the wrapped model’s batch graphs and plan, so batching survives the wrapper', (t) => {
  const fake = new FakeDecoderModel();
  const executor = { widths: [2, 4] } as unknown as BatchExecutor;
  const inner: DecoderModel = Object.assign(Object.create(fake) as DecoderModel, { batchExecutor: executor });
  const watch = new ForwardWatch(inner);
  t.is(watch.batchExecutor, executor);
  t.is(watch.plan, inner.plan);
  t.is(watch.info, fake.info);
  t.is(new ForwardWatch(fake).batchExecutor, undefined);
});

test('a forward counts as in flight until it returns, and marks progress when it ends', async (t) => {
  const watch = new ForwardWatch(new FakeDecoderModel({ forwardDelayMs: 20 }));
  const sequence = watch.createSequence({ capacity: 64 });
  const before = watch.progressAt;
  const pending = sequence.forward([2, 3, 4], 1);
  t.is(watch.inFlight, 1);
  await pending;
  t.is(watch.inFlight, 0);
  t.true(watch.progressAt >= before);
  t.is(sequence.length, 3);
  sequence.dispose();
});
