import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { type GenerateRequest, type GenerationBackend, NO_SPECULATION } from '../src/contract.js';
import { AnpdError, CancelledError, InvalidRequestError } from '../src/errors.js';
import { WorkerEngine } from '../src/engine/worker-engine.js';
import { defaultEngine } from './support/default-model.js';
import { defaultWorkerEngine } from './support/grpc-server.js';

async function run(backend: GenerationBackend, request: GenerateRequest, signal?: AbortSignal) {
  const tokens: number[] = [];
  let text = '';
  let finishReason = '';
  for await (const event of backend.run(backend.prepare(request), signal)) {
    if (event.type === 'delta') {
      tokens.push(...event.tokenIds);
      text += event.text;
    } else finishReason = event.finishReason;
  }
  return { tokens, text, finishReason };
}

test.after.always(async () => {
  await (await defaultWorkerEngine()).dispose();
});

test('the worker engine gives exactly the in-process engine output (greedy, plain and speculative, and seeded sampling)', async (t) => {
  const [direct, worker] = await Promise.all([defaultEngine(), defaultWorkerEngine()]);
  t.deepEqual(worker.info, direct.info);
  const requests: GenerateRequest[] = [
    { prompt: { kind: 'text', text: 'What is the capital of France?', chat: true }, maxNewTokens: 24 },
    {
      prompt: { kind: 'messages', messages: [{ role: 'user', content: 'Repeat twice: the quick brown fox.' }] },
      maxNewTokens: 40,
    },
    { prompt: { kind: 'text', text: 'Name three colors.', chat: true }, maxNewTokens: 32, speculation: NO_SPECULATION },
    {
      prompt: { kind: 'text', text: 'Once upon a time' },
      maxNewTokens: 32,
      sampling: { temperature: 0.8, topK: 40, topP: 0.95, repetitionPenalty: 1.1, seed: 7 },
    },
  ];
  for (const request of requests) {
    const a = await run(direct, request);
    const b = await run(worker, request);
    t.deepEqual(b.tokens, a.tokens);
    t.is(b.text, a.text);
    t.is(b.finishReason, a.finishReason);
  }
});

test('aborting the signal cancels the run on the worker, which goes on serving', async (t) => {
  const worker = await defaultWorkerEngine();
  const controller = new AbortController();
  const reason = new Error('client went away');
  let deltas = 0;
  const error = await t.throwsAsync(async () => {
    for await (const event of worker.run(
      worker.prepare({
        prompt: { kind: 'text', text: 'Count: one, two, three,' },
        maxNewTokens: 2000,
        ignoreEos: true,
      }),
      controller.signal,
    )) {
      if (event.type === 'delta' && ++deltas === 3) controller.abort(reason);
    }
  });
  t.true(error instanceof CancelledError);
  t.is((error as CancelledError).cause, reason, 'the caller’s own abort reason is reported');
  t.true((error as CancelledError).progress.completionTokens >= 3);
  t.true(deltas < 20, 'stopped within a few steps');
  const after = await run(worker, {
    prompt: { kind: 'text', text: 'What is the capital of France?', chat: true },
    maxNewTokens: 8,
  });
  t.true(after.tokens.length > 0);
});

test('a consumer that stops reading early ends the worker run', async (t) => {
  const worker = await defaultWorkerEngine();
  for await (const event of worker.run(
    worker.prepare({ prompt: { kind: 'text', text: 'Count: one, two,' }, maxNewTokens: 2000, ignoreEos: true }),
  )) {
    if (event.type === 'delta') break;
  }
  const started = performance.now();
  const next = await run(worker, {
    prompt: { kind: 'text', text: 'Hi' },
    maxNewTokens: 4,
    speculation: NO_SPECULATION,
  });
  t.is(next.tokens.length, 4);
  t.true(performance.now() - started < 10_000, 'the abandoned run is not still decoding 2000 tokens');
});

test('validation happens on the calling thread with the engine’s messages', async (t) => {
  const worker = await defaultWorkerEngine();
  t.throws(() => worker.prepare({ prompt: { kind: 'text', text: 'hi' }, maxNewTokens: 0 }), {
    instanceOf: InvalidRequestError,
    message: /max_new_tokens/,
  });
  t.throws(() => worker.prepare({ prompt: { kind: 'tokens', tokenIds: [1, 10_000_000] }, maxNewTokens: 4 }), {
    instanceOf: InvalidRequestError,
    message: /vocabulary/,
  });
});

test('a broken model directory fails worker creation with an error naming the file', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'anpd-broken-'));
  await t.throwsAsync(WorkerEngine.create(dir, { executionProvider: 'cpu', intraOpThreads: 0, kvCapacity: 256 }), {
    instanceOf: AnpdError,
    message: /tokenizer\.json/,
  });
  writeFileSync(join(dir, 'tokenizer.json'), '{}');
  const error = await t.throwsAsync(
    WorkerEngine.create(dir, { executionProvider: 'cpu', intraOpThreads: 0, kvCapacity: 256 }),
  );
  t.true(error instanceof AnpdError, String(error));
  t.regex(error!.message, new RegExp(dir.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')));
});
