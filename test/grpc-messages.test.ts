import test from 'ava';
import { DEFAULT_SPECULATION } from '../src/contract.js';
import type { ServiceFinal } from '../src/engine/inference-service.js';
import { prepareGeneration } from '../src/engine/validate.js';
import { InvalidRequestError } from '../src/errors.js';
import {
  type GenerateRequestMsg,
  REQUEST_ID_CHARS_MAX,
  foldSeed,
  parseGenerateRequest,
  toFinalInfo,
} from '../src/transport/grpc/messages.js';
import { FakeDecoderModel, FakeTokenizer } from './support/fake-decoder-model.js';

const TEXT: GenerateRequestMsg = { prompt: 'text', text: 'Hello' };

/** Wire message → the request the service validates (engine/validate.ts): range messages name the proto fields. */
function validated(msg: GenerateRequestMsg) {
  const model = new FakeDecoderModel();
  return prepareGeneration(new FakeTokenizer(), model.info, parseGenerateRequest(msg).request, {
    maxNewTokensDefault: 16,
    maxNewTokensLimit: 64,
  });
}

function withSampling(sampling: NonNullable<GenerateRequestMsg['sampling']>): GenerateRequestMsg {
  return { ...TEXT, sampling };
}

function final(overrides: Partial<ServiceFinal> = {}): ServiceFinal {
  return {
    type: 'final',
    finishReason: 'length',
    promptTokens: 11,
    completionTokens: 7,
    firstTokenMs: 20,
    prefillMs: 15,
    totalMs: 100,
    queueMs: 5,
    stats: {
      rounds: 4,
      draftRounds: 3,
      zeroAcceptRounds: 1,
      draftTokensProposed: 9,
      draftTokensAccepted: 3,
      draftedAtPosition: [],
      acceptedAtPosition: [],
      forwardMs: 50,
      draftMs: 1,
      poolDraftTokens: 0,
      poolAcceptedTokens: 0,
    },
    ...overrides,
  };
}

test('a text prompt maps to an engine text prompt', (t) => {
  const parsed = parseGenerateRequest({ request_id: 'r1', model: 'm', prompt: 'text', text: 'Hello there' });
  t.is(parsed.requestId, 'r1');
  t.is(parsed.model, 'm');
  t.deepEqual(parsed.request.prompt, { kind: 'text', text: 'Hello there' });
});

test('a messages prompt maps to an engine messages prompt', (t) => {
  const parsed = parseGenerateRequest({
    prompt: 'messages',
    messages: {
      messages: [
        { role: 'system', content: 'Be brief.' },
        { role: 'user', content: 'Hi' },
        { role: 'assistant', content: 'Hello!' },
      ],
    },
  });
  t.deepEqual(parsed.request.prompt, {
    kind: 'messages',
    messages: [
      { role: 'system', content: 'Be brief.' },
      { role: 'user', content: 'Hi' },
      { role: 'assistant', content: 'Hello!' },
    ],
  });
});

test('a token_ids prompt maps to an engine tokens prompt', (t) => {
  const parsed = parseGenerateRequest({ prompt: 'token_ids', token_ids: { ids: [1, 2, 3] } });
  t.deepEqual(parsed.request.prompt, { kind: 'tokens', tokenIds: [1, 2, 3] });
});

test('absent request_id and model become empty strings', (t) => {
  const parsed = parseGenerateRequest(TEXT);
  t.is(parsed.requestId, '');
  t.is(parsed.model, '');
});

test('a missing prompt is rejected with a message mentioning prompt', (t) => {
  const error = t.throws(() => parseGenerateRequest({}), { instanceOf: InvalidRequestError, message: /prompt/ });
  t.is(error?.code, 'INVALID_REQUEST');
  // A prompt field set without the oneof discriminator is still missing.
  t.throws(() => parseGenerateRequest({ text: 'Hello' }), { instanceOf: InvalidRequestError, message: /prompt/ });
});

test('an empty text prompt is rejected', (t) => {
  t.throws(() => parseGenerateRequest({ prompt: 'text', text: '' }), {
    instanceOf: InvalidRequestError,
    message: /text/,
  });
  t.throws(() => parseGenerateRequest({ prompt: 'text' }), { instanceOf: InvalidRequestError, message: /text/ });
});

test('an empty token id list is rejected', (t) => {
  t.throws(() => parseGenerateRequest({ prompt: 'token_ids', token_ids: { ids: [] } }), {
    instanceOf: InvalidRequestError,
    message: /token_ids\.ids/,
  });
  t.throws(() => parseGenerateRequest({ prompt: 'token_ids' }), {
    instanceOf: InvalidRequestError,
    message: /token_ids\.ids/,
  });
});

test('an empty message list is rejected', (t) => {
  t.throws(() => parseGenerateRequest({ prompt: 'messages', messages: { messages: [] } }), {
    instanceOf: InvalidRequestError,
    message: /messages\.messages/,
  });
  t.throws(() => parseGenerateRequest({ prompt: 'messages' }), {
    instanceOf: InvalidRequestError,
    message: /messages\.messages/,
  });
});

test('a chat message with an unknown role is rejected naming its index', (t) => {
  t.throws(
    () =>
      parseGenerateRequest({
        prompt: 'messages',
        messages: {
          messages: [
            { role: 'user', content: 'Hi' },
            { role: 'wizard', content: 'Abracadabra' },
          ],
        },
      }),
    { instanceOf: InvalidRequestError, message: /messages\.messages\[1\]\.role.*"wizard"/ },
  );
  t.throws(() => parseGenerateRequest({ prompt: 'messages', messages: { messages: [{ content: 'Hi' }] } }), {
    instanceOf: InvalidRequestError,
    message: /messages\.messages\[0\]\.role/,
  });
});

test('a chat message with empty content is rejected naming its index', (t) => {
  t.throws(
    () =>
      parseGenerateRequest({
        prompt: 'messages',
        messages: {
          messages: [
            { role: 'system', content: 'x' },
            { role: 'user', content: 'y' },
            { role: 'user', content: '' },
          ],
        },
      }),
    { instanceOf: InvalidRequestError, message: /messages\.messages\[2\]\.content/ },
  );
  t.throws(() => parseGenerateRequest({ prompt: 'messages', messages: { messages: [{ role: 'user' }] } }), {
    instanceOf: InvalidRequestError,
    message: /messages\.messages\[0\]\.content/,
  });
});

test('unset sampling gives greedy defaults', (t) => {
  const parsed = parseGenerateRequest(TEXT);
  t.deepEqual(parsed.request.sampling, { temperature: 0, topP: 1, topK: 0, repetitionPenalty: 1, seed: 0 });
  t.is(parsed.seed, '0');
  t.deepEqual(parseGenerateRequest(withSampling({})).request.sampling, {
    temperature: 0,
    topP: 1,
    topK: 0,
    repetitionPenalty: 1,
    seed: 0,
  });
});

test('set sampling fields are carried over and the seed string is echoed', (t) => {
  const parsed = parseGenerateRequest(
    withSampling({ temperature: 0.7, top_p: 0.9, top_k: 40, repetition_penalty: 1.1, seed: '42' }),
  );
  t.deepEqual(parsed.request.sampling, { temperature: 0.7, topP: 0.9, topK: 40, repetitionPenalty: 1.1, seed: 42 });
  t.is(parsed.seed, '42');
});

test('top_p outside (0, 1] is rejected naming sampling.top_p (by the validator, after parsing)', (t) => {
  t.throws(() => validated(withSampling({ top_p: 0 })), {
    instanceOf: InvalidRequestError,
    message: /sampling\.top_p/,
  });
  t.throws(() => validated(withSampling({ top_p: 1.5 })), {
    instanceOf: InvalidRequestError,
    message: /sampling\.top_p.*1\.5/,
  });
  t.throws(() => validated(withSampling({ top_p: -0.1 })), {
    instanceOf: InvalidRequestError,
    message: /sampling\.top_p/,
  });
  t.throws(() => validated(withSampling({ top_p: Number.NaN })), {
    instanceOf: InvalidRequestError,
    message: /sampling\.top_p/,
  });
  t.is(parseGenerateRequest(withSampling({ top_p: 1 })).request.sampling?.topP, 1);
  t.notThrows(() => parseGenerateRequest(withSampling({ top_p: 0 })), 'the transport checks only the wire shape');
});

test('a negative or non-finite temperature is rejected naming sampling.temperature', (t) => {
  t.throws(() => validated(withSampling({ temperature: -0.5 })), {
    instanceOf: InvalidRequestError,
    message: /sampling\.temperature.*-0\.5/,
  });
  t.throws(() => validated(withSampling({ temperature: Number.POSITIVE_INFINITY })), {
    instanceOf: InvalidRequestError,
    message: /sampling\.temperature/,
  });
  t.throws(() => validated(withSampling({ temperature: Number.NaN })), {
    instanceOf: InvalidRequestError,
    message: /sampling\.temperature/,
  });
});

test('a repetition_penalty of 0 or below is rejected naming sampling.repetition_penalty', (t) => {
  t.throws(() => validated(withSampling({ repetition_penalty: 0 })), {
    instanceOf: InvalidRequestError,
    message: /sampling\.repetition_penalty/,
  });
  t.throws(() => validated(withSampling({ repetition_penalty: -1 })), {
    instanceOf: InvalidRequestError,
    message: /sampling\.repetition_penalty/,
  });
  t.throws(() => validated(withSampling({ repetition_penalty: Number.POSITIVE_INFINITY })), {
    instanceOf: InvalidRequestError,
    message: /sampling\.repetition_penalty/,
  });
});

test('a non-numeric seed is rejected naming sampling.seed', (t) => {
  t.throws(() => parseGenerateRequest(withSampling({ seed: 'abc' })), {
    instanceOf: InvalidRequestError,
    message: /sampling\.seed.*"abc"/,
  });
});

test('speculation mode MODE_OFF maps to off and everything else to ngram', (t) => {
  t.is(parseGenerateRequest({ ...TEXT, speculation: { mode: 'MODE_OFF' } }).request.speculation?.mode, 'off');
  t.is(parseGenerateRequest({ ...TEXT, speculation: { mode: 'MODE_NGRAM' } }).request.speculation?.mode, 'ngram');
  t.is(parseGenerateRequest({ ...TEXT, speculation: { mode: 'MODE_DEFAULT' } }).request.speculation?.mode, 'ngram');
  t.is(parseGenerateRequest({ ...TEXT, speculation: {} }).request.speculation?.mode, 'ngram');
  t.is(parseGenerateRequest(TEXT).request.speculation?.mode, 'ngram');
});

test('unset speculation gives the default speculation options', (t) => {
  t.deepEqual(parseGenerateRequest(TEXT).request.speculation, DEFAULT_SPECULATION);
});

test('max_draft_tokens and ngram_n of 0 mean the defaults', (t) => {
  const parsed = parseGenerateRequest({
    ...TEXT,
    speculation: { mode: 'MODE_NGRAM', max_draft_tokens: 0, ngram_n: 0 },
  });
  t.is(parsed.request.speculation?.draftTokensMax, DEFAULT_SPECULATION.draftTokensMax);
  t.is(parsed.request.speculation?.ngramN, DEFAULT_SPECULATION.ngramN);
});

test('set max_draft_tokens and ngram_n are carried over', (t) => {
  const parsed = parseGenerateRequest({ ...TEXT, speculation: { max_draft_tokens: 3, ngram_n: 2 } });
  t.like(parsed.request.speculation, { mode: 'ngram', draftTokensMax: 3, ngramN: 2 });
  t.is(parsed.request.speculation?.draftLength, DEFAULT_SPECULATION.draftLength);
  t.is(parsed.request.speculation?.drafter, DEFAULT_SPECULATION.drafter);
});

test('unset max_new_tokens stays 0 so the service applies its default', (t) => {
  t.is(parseGenerateRequest(TEXT).request.maxNewTokens, 0);
  t.is(parseGenerateRequest({ ...TEXT, stopping: {} }).request.maxNewTokens, 0);
  t.is(parseGenerateRequest({ ...TEXT, stopping: { max_new_tokens: 0 } }).request.maxNewTokens, 0);
});

test('stopping fields are carried over and default to empty', (t) => {
  const parsed = parseGenerateRequest({
    ...TEXT,
    stopping: { max_new_tokens: 12, stop_sequences: ['\n\n'], stop_token_ids: [2, 5], ignore_eos: true },
  });
  t.like(parsed.request, { maxNewTokens: 12, stopSequences: ['\n\n'], stopTokenIds: [2, 5], ignoreEos: true });
  t.like(parseGenerateRequest(TEXT).request, { stopSequences: [], stopTokenIds: [], ignoreEos: false });
});

test('stop token ids outside uint32 are rejected', (t) => {
  t.throws(() => parseGenerateRequest({ ...TEXT, stopping: { stop_token_ids: [2 ** 32] } }), {
    instanceOf: InvalidRequestError,
    message: /stopping\.stop_token_ids/,
  });
});

test('foldSeed maps 0 and empty or unset to 0', (t) => {
  t.is(foldSeed('0'), 0);
  t.is(foldSeed(''), 0);
  t.is(foldSeed(undefined), 0);
});

test('foldSeed maps seeds below 2^32 to themselves', (t) => {
  for (const seed of [1, 42, 1234567, 0x7fff_ffff, 0xffff_ffff]) t.is(foldSeed(String(seed)), seed);
});

test('foldSeed maps any uint64 to an integer in [0, 2^32)', (t) => {
  for (const seed of ['18446744073709551615', '4294967296', '9223372036854775807', '12345678901234567890']) {
    const folded = foldSeed(seed);
    t.true(Number.isInteger(folded), seed);
    t.true(folded >= 0 && folded < 2 ** 32, seed);
  }
  // The high word is folded in, so seeds that differ only above bit 32 still differ.
  t.not(foldSeed('4294967296'), foldSeed('0'));
});

test('foldSeed folds a uint64 to its low 32-bit word XOR its high word', (t) => {
  // Worked out by hand from the hex forms, not with the code under test.
  const cases: [seed: string, folded: number][] = [
    ['4294967296', 1], // 0x00000001_00000000
    ['9223372036854775807', 0x8000_0000], // 0x7fffffff_ffffffff
    ['18446744073709551615', 0], // 0xffffffff_ffffffff
    ['1311768467463790320', 0x8888_8888], // 0x12345678_9abcdef0
    ['12345678901234567890', 0x404b_a35e], // 0xab54a98c_eb1f0ad2
  ];
  for (const [seed, folded] of cases) t.is(foldSeed(seed), folded, seed);
});

test('foldSeed rejects strings that are not unsigned decimal integers', (t) => {
  for (const seed of ['abc', '-1', '1.5', '0x10', ' 7', '1e3']) {
    t.throws(() => foldSeed(seed), { instanceOf: InvalidRequestError, message: /sampling\.seed/ }, seed);
  }
});

test('a request_id longer than 256 characters is rejected', (t) => {
  t.is(REQUEST_ID_CHARS_MAX, 256);
  t.is(parseGenerateRequest({ ...TEXT, request_id: 'x'.repeat(256) }).requestId.length, 256);
  t.throws(() => parseGenerateRequest({ ...TEXT, request_id: 'x'.repeat(257) }), {
    instanceOf: InvalidRequestError,
    message: /request_id/,
  });
});

test('toFinalInfo maps each finish reason', (t) => {
  t.is(toFinalInfo(final({ finishReason: 'length' }), '0').finish_reason, 'FINISH_REASON_LENGTH');
  t.is(toFinalInfo(final({ finishReason: 'eos_token' }), '0').finish_reason, 'FINISH_REASON_EOS_TOKEN');
  t.is(toFinalInfo(final({ finishReason: 'stop_sequence' }), '0').finish_reason, 'FINISH_REASON_STOP_SEQUENCE');
});

test("toFinalInfo only renames the service's times (the service counts them from receipt)", (t) => {
  t.deepEqual(toFinalInfo(final(), '42'), {
    finish_reason: 'FINISH_REASON_LENGTH',
    usage: { input_tokens: 11, output_tokens: 7, cached_input_tokens: 0 },
    speculation: {
      verify_steps: 4,
      draft_tokens: 9,
      accepted_tokens: 3,
      pool_draft_tokens: 0,
      pool_accepted_tokens: 0,
    },
    queue_ms: 5,
    first_token_ms: 20,
    total_ms: 100,
    seed: '42',
  });
});
