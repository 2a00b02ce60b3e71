import test from 'ava';
import type { Engine } from '../src/engine/engine.js';
import type { GenerateRequest, GenerationFinal } from '../src/contract.js';
import { CancelledError, ContextOverflowError, InvalidRequestError } from '../src/errors.js';
import { defaultEngine } from './support/default-model.js';

async function run(engine: Engine, request: GenerateRequest, signal?: AbortSignal) {
  let text = '';
  const tokens: number[] = [];
  let final: GenerationFinal | undefined;
  for await (const e of engine.generate(request, signal)) {
    if (e.type === 'delta') {
      text += e.text;
      tokens.push(...e.tokenIds);
    } else final = e;
  }
  return { text, tokens, final: final! };
}

test('the instruct model answers "What is the capital of France?" with Paris', async (t) => {
  const engine = await defaultEngine();
  const r = await run(engine, {
    prompt: { kind: 'text', text: 'What is the capital of France?', chat: true },
    maxNewTokens: 40,
  });
  t.regex(r.text, /Paris/);
  t.is(r.final.finishReason, 'eos_token');
  t.is(r.final.completionTokens, r.tokens.length);
  t.true(r.final.promptTokens > 5);
});

test('chat messages render through the model chat template', (t) => {
  return defaultEngine().then((engine) => {
    const rendered = engine.tokenizer.applyChatTemplate([{ role: 'user', content: 'Hi' }]);
    t.is(
      rendered,
      '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n',
    );
    const ids = engine.tokenizePrompt({ kind: 'messages', messages: [{ role: 'user', content: 'Hi' }] });
    t.is(ids[0], engine.tokenizer.tokenToId('<|im_start|>'));
  });
});

test('max_new_tokens stops generation exactly at the limit', async (t) => {
  const engine = await defaultEngine();
  const r = await run(engine, {
    prompt: { kind: 'text', text: 'Count from one to one hundred: one, two, three,' },
    maxNewTokens: 7,
    ignoreEos: true,
  });
  t.is(r.tokens.length, 7);
  t.is(r.final.finishReason, 'length');
  t.is(r.final.completionTokens, 7);
});

test('a stop sequence ends generation and is not part of the text', async (t) => {
  const engine = await defaultEngine();
  const request: GenerateRequest = {
    prompt: { kind: 'text', text: 'List the days of the week, comma separated: Monday, Tuesday,' },
    maxNewTokens: 40,
    ignoreEos: true,
  };
  const free = await run(engine, request);
  t.regex(free.text, /Thursday/);
  const stopped = await run(engine, { ...request, stopSequences: ['Thursday'] });
  t.is(stopped.final.finishReason, 'stop_sequence');
  t.false(stopped.text.includes('Thursday'));
  t.true(
    free.text.startsWith(stopped.text),
    `${JSON.stringify(stopped.text)} should be a prefix of ${JSON.stringify(free.text)}`,
  );
  t.false(stopped.text.includes('Thurs'), 'no partial stop sequence is emitted');
});

test('stop token ids end generation like EOS', async (t) => {
  const engine = await defaultEngine();
  const comma = engine.tokenizer.encode(',', { addSpecialTokens: false })[0]!;
  const r = await run(engine, {
    prompt: { kind: 'text', text: 'Monday, Tuesday, Wednesday' },
    maxNewTokens: 20,
    stopTokenIds: [comma],
    ignoreEos: true,
  });
  t.is(r.final.finishReason, 'eos_token');
  t.false(r.tokens.includes(comma));
});

test('greedy decoding is deterministic and the same seed gives the same sample', async (t) => {
  const engine = await defaultEngine();
  const prompt = { kind: 'text' as const, text: 'Write a sentence about the sea.', chat: true };
  const g1 = await run(engine, { prompt, maxNewTokens: 24 });
  const g2 = await run(engine, { prompt, maxNewTokens: 24 });
  t.deepEqual(g1.tokens, g2.tokens);
  const sampling = { temperature: 1.0, topK: 50, topP: 0.95, repetitionPenalty: 1, seed: 1234 };
  const s1 = await run(engine, { prompt, maxNewTokens: 24, ignoreEos: true, sampling });
  const s2 = await run(engine, { prompt, maxNewTokens: 24, ignoreEos: true, sampling });
  t.deepEqual(s1.tokens, s2.tokens);
  const s3 = await run(engine, { prompt, maxNewTokens: 24, ignoreEos: true, sampling: { ...sampling, seed: 99 } });
  t.notDeepEqual(s1.tokens, s3.tokens);
});

test('streamed text equals the decoded tokens, unicode and emoji included', async (t) => {
  const engine = await defaultEngine();
  const r = await run(engine, {
    prompt: { kind: 'text', text: 'Repeat exactly: 🎉 café 東京 naïve 🚀🚀', chat: true },
    maxNewTokens: 30,
  });
  t.is(r.text, engine.tokenizer.decode(r.tokens, { skipSpecialTokens: true }));
  t.false(r.text.includes('\uFFFD'));
});

test('a prompt longer than the context is refused with a clear error', async (t) => {
  const engine = await defaultEngine();
  const context = engine.model.info.contextLength;
  const tokens = new Array<number>(context + 10).fill(28);
  const error = await t.throwsAsync(run(engine, { prompt: { kind: 'tokens', tokenIds: tokens }, maxNewTokens: 5 }), {
    instanceOf: ContextOverflowError,
  });
  t.regex(error!.message, new RegExp(`prompt of ${context + 10} tokens .* exceeds the context of ${context} tokens`));
});

test('invalid requests name what is wrong', async (t) => {
  const engine = await defaultEngine();
  const prompt = { kind: 'text' as const, text: 'hello' };
  await t.throwsAsync(run(engine, { prompt, maxNewTokens: 0 }), {
    instanceOf: InvalidRequestError,
    message: /max_new_tokens/,
  });
  await t.throwsAsync(run(engine, { prompt: { kind: 'tokens', tokenIds: [1, 999999] }, maxNewTokens: 4 }), {
    instanceOf: InvalidRequestError,
    message: /token id 999999/,
  });
  await t.throwsAsync(run(engine, { prompt: { kind: 'text', text: '' }, maxNewTokens: 4 }), {
    instanceOf: InvalidRequestError,
    message: /empty/,
  });
  await t.throwsAsync(
    run(engine, {
      prompt,
      maxNewTokens: 4,
      sampling: { temperature: -1, topK: 0, topP: 1, repetitionPenalty: 1, seed: 0 },
    }),
    { message: /temperature/ },
  );
  await t.throwsAsync(
    run(engine, {
      prompt,
      maxNewTokens: 4,
      sampling: { temperature: 1, topK: 0, topP: 0, repetitionPenalty: 1, seed: 0 },
    }),
    { message: /top_p/ },
  );
});

test('an aborted signal cancels generation between rounds', async (t) => {
  const engine = await defaultEngine();
  const controller = new AbortController();
  let deltas = 0;
  const error = await t.throwsAsync(async () => {
    for await (const e of engine.generate(
      { prompt: { kind: 'text', text: 'Tell me a long story.' }, maxNewTokens: 200, ignoreEos: true },
      controller.signal,
    )) {
      if (e.type === 'delta' && ++deltas === 3) controller.abort(new Error('client went away'));
    }
  });
  t.true(error instanceof CancelledError);
  t.is(deltas, 3);
});
