/**
 * Sampling and stopping controls over the real server (issue 21, items 2 and 3): min_p, presence
 * and frequency penalties, logit_bias; min_new_tokens, time_limit_ms (FINISH_REASON_TIME_LIMIT),
 * include_stop_sequence, truncate_input_tokens. Each leaves speculation lossless, and each bad
 * value gets INVALID_ARGUMENT naming the field.
 */
import { status as GrpcStatus } from '@grpc/grpc-js';
import test from 'ava';
import type { GenerateChunkMsg, GenerateRequestMsg } from '../src/transport/grpc/messages.js';
import { exactnessPrompts } from './support/prompt-set.js';
import { collectStream, grpcError, joinChunks as joinText, lazyTestServer } from './support/grpc-server.js';

function joinChunks(chunks: readonly GenerateChunkMsg[]) {
  return { ...joinText(chunks), final: chunks[chunks.length - 1]!.final! };
}

const server = lazyTestServer({ maxActive: 8, maxQueued: 16 });

const OPTS = { deadlineMs: 120_000 };

function chat(id: string, prompt: string, extra: Partial<GenerateRequestMsg> = {}): GenerateRequestMsg {
  return {
    request_id: id,
    messages: { messages: [{ role: 'user', content: prompt }] },
    stopping: { max_new_tokens: 40 },
    ...extra,
  };
}

test.serial(
  "penalties, logit bias, min_p and min_new_tokens keep speculation lossless (tokens equal plain decoding's, drafts accepted)",
  async (t) => {
    const client = (await server()).client();
    const variants: [
      string,
      NonNullable<GenerateRequestMsg['sampling']>,
      NonNullable<GenerateRequestMsg['stopping']>,
    ][] = [
      ['presence+frequency', { presence_penalty: 0.4, frequency_penalty: 0.3 }, { max_new_tokens: 56 }],
      [
        'logit_bias',
        {
          logit_bias: [
            { token_id: 198, bias: -3 },
            { token_id: 30, bias: 1.5 },
            { token_id: 2, bias: -100 },
          ],
        },
        { max_new_tokens: 56 },
      ],
      ['min_p sampled', { temperature: 0.8, min_p: 0.1, frequency_penalty: 0.2, seed: '42' }, { max_new_tokens: 56 }],
      ['min_new_tokens', {}, { max_new_tokens: 64, min_new_tokens: 48 }],
    ];
    const prompts = exactnessPrompts()
      .filter((x) => /code-editing|summarization/.test(x.id))
      .slice(0, 3);
    for (const [name, sampling, stopping] of variants) {
      let accepted = 0;
      for (const p of prompts) {
        const base = chat(p.id, p.prompt, { sampling, stopping });
        const on = joinChunks(
          await collectStream(client.generateStream({ ...base, speculation: { mode: 'MODE_NGRAM' } })),
        );
        const off = await client.generate({ ...base, speculation: { mode: 'MODE_OFF' } }, OPTS);
        t.deepEqual(on.tokenIds, off.token_ids, `${name} / ${p.id}: speculation changed the output`);
        t.is(on.text, off.text);
        accepted += on.final.speculation.accepted_tokens;
      }
      t.true(accepted > 0, `${name}: no draft accepted, verification rows not exercised`);
    }
  },
);

test.serial(
  'logit_bias: +100 forces a token at every step, -100 bans the greedy choice; penalties change greedy output',
  async (t) => {
    const client = (await server()).client();
    const prompt = 'Name three primary colors.';
    const plain = await client.generate(chat('p', prompt, { stopping: { max_new_tokens: 12 } }), OPTS);
    const forced = await client.generate(
      chat('f', prompt, {
        stopping: { max_new_tokens: 12 },
        sampling: { logit_bias: [{ token_id: 1234, bias: 100 }] },
      }),
      OPTS,
    );
    t.deepEqual(forced.token_ids, new Array(12).fill(1234));
    const first = plain.token_ids[0]!;
    const banned = await client.generate(
      chat('b', prompt, {
        stopping: { max_new_tokens: 12 },
        sampling: { logit_bias: [{ token_id: first, bias: -100 }] },
      }),
      OPTS,
    );
    t.false(banned.token_ids.includes(first), 'a banned token never appears');
    const long: GenerateRequestMsg = { text: 'blue, blue, blue, blue, blue, blue,', stopping: { max_new_tokens: 20 } };
    const unpenalized = await client.generate(long, OPTS);
    const penalized = await client.generate({ ...long, sampling: { frequency_penalty: 2 } }, OPTS);
    t.notDeepEqual(penalized.token_ids, unpenalized.token_ids, 'a frequency penalty of 2 changes a repetitive answer');
    const count = (ids: readonly number[]) =>
      Math.max(...[...new Set(ids)].map((id) => ids.filter((x) => x === id).length));
    t.true(count(penalized.token_ids) <= count(unpenalized.token_ids), 'and repeats no token more often');
  },
);

test.serial(
  'min_new_tokens: EOS is suppressed until that many tokens, then allowed; stop sequences only count after them',
  async (t) => {
    const client = (await server()).client();
    const prompt = 'Reply with just the word yes.';
    const short = await client.generate(chat('s', prompt, { stopping: { max_new_tokens: 64 } }), OPTS);
    t.is(short.final.finish_reason, 'FINISH_REASON_EOS_TOKEN');
    t.true(short.token_ids.length < 20, `the model ends early on its own (${short.token_ids.length} tokens)`);
    const min = await client.generate(
      chat('m', prompt, { stopping: { max_new_tokens: 200, min_new_tokens: 20 } }),
      OPTS,
    );
    t.true(min.token_ids.length >= 20, `at least min_new_tokens (${min.token_ids.length})`);
    t.is(
      min.token_ids.slice(0, short.token_ids.length).join(),
      short.token_ids.join(),
      'same tokens up to where EOS came',
    );
    // A stop sequence in the first tokens' text does not stop the output before min_new_tokens.
    const stop = short.text.trim().slice(0, 2);
    const stopped = await client.generate(
      chat('st', prompt, { stopping: { max_new_tokens: 64, stop_sequences: [stop] } }),
      OPTS,
    );
    t.is(stopped.final.finish_reason, 'FINISH_REASON_STOP_SEQUENCE');
    const late = await client.generate(
      chat('sl', prompt, { stopping: { max_new_tokens: 64, min_new_tokens: 10, stop_sequences: [stop] } }),
      OPTS,
    );
    t.true(late.token_ids.length >= 10);
    t.true(late.text.includes(stop), 'the stop text within the first min_new_tokens is emitted');
  },
);

test.serial('time_limit_ms ends a long generation with FINISH_REASON_TIME_LIMIT and the tokens so far', async (t) => {
  const client = (await server()).client();
  const req = chat('t', 'Count from one to one thousand in words.', {
    stopping: { max_new_tokens: 1500, ignore_eos: true, time_limit_ms: 400 },
  });
  const chunks = await collectStream(client.generateStream(req));
  const r = joinChunks(chunks);
  t.is(r.final.finish_reason, 'FINISH_REASON_TIME_LIMIT');
  t.true(r.tokenIds.length > 0 && r.tokenIds.length < 1500, `${r.tokenIds.length} tokens`);
  t.is(r.final.usage.output_tokens, r.tokenIds.length);
  t.true(r.final.total_ms >= 400, `total ${r.final.total_ms} ms`);
  t.true(r.final.total_ms < 400 + 2000, `stopped within a step or so (total ${r.final.total_ms} ms)`);
});

test.serial('include_stop_sequence emits the stop text that ended the output; by default it is withheld', async (t) => {
  const client = (await server()).client();
  const prompt = 'Name three primary colors.';
  const full = await client.generate(chat('full', prompt, { stopping: { max_new_tokens: 40 } }), OPTS);
  const stop = full.text.slice(8, 12);
  t.is(stop.length, 4);
  const at = full.text.indexOf(stop);
  const without = await client.generate(
    chat('w', prompt, { stopping: { max_new_tokens: 40, stop_sequences: [stop] } }),
    OPTS,
  );
  t.is(without.text, full.text.slice(0, at));
  const streamed = joinChunks(
    await collectStream(
      client.generateStream(
        chat('i', prompt, {
          stopping: { max_new_tokens: 40, stop_sequences: ['zzzz', stop], include_stop_sequence: true },
        }),
      ),
    ),
  );
  t.is(streamed.final.finish_reason, 'FINISH_REASON_STOP_SEQUENCE');
  t.is(streamed.text, full.text.slice(0, at + stop.length));
});

test.serial(
  'truncate_input_tokens keeps the last N prompt tokens: same output as sending only those, usage counts them',
  async (t) => {
    const client = (await server()).client();
    const tok = await client.tokenize({
      text: 'The quick brown fox jumps over the lazy dog. '.repeat(6) + 'The quick brown',
    });
    const ids = tok.token_ids;
    t.true(ids.length > 40);
    const truncated = await client.generate(
      { token_ids: { ids }, stopping: { max_new_tokens: 12, truncate_input_tokens: 20 } },
      OPTS,
    );
    const tail = await client.generate({ token_ids: { ids: ids.slice(-20) }, stopping: { max_new_tokens: 12 } }, OPTS);
    t.is(truncated.final.usage.input_tokens, 20);
    t.deepEqual(truncated.token_ids, tail.token_ids);
    const shorter = await client.generate(
      { token_ids: { ids }, stopping: { max_new_tokens: 4, truncate_input_tokens: 4096 } },
      OPTS,
    );
    t.is(shorter.final.usage.input_tokens, ids.length, 'a prompt shorter than N is kept whole');
  },
);

test.serial('bad sampling and stopping values get INVALID_ARGUMENT naming the field', async (t) => {
  const client = (await server()).client();
  const cases: [Partial<GenerateRequestMsg>, RegExp][] = [
    [{ sampling: { min_p: 1.5 } }, /min_p must be in \[0, 1\], got 1\.5/],
    [{ sampling: { presence_penalty: 3 } }, /presence_penalty must be in \[-2, 2\], got 3/],
    [{ sampling: { frequency_penalty: -2.5 } }, /frequency_penalty must be in \[-2, 2\], got -2\.5/],
    [
      { sampling: { logit_bias: [{ token_id: 999_999, bias: 1 }] } },
      /logit_bias token id 999999 is outside the vocabulary/,
    ],
    [
      {
        sampling: {
          logit_bias: [
            { token_id: 5, bias: 1 },
            { token_id: 5, bias: 2 },
          ],
        },
      },
      /logit_bias names token id 5 twice/,
    ],
    [
      { sampling: { logit_bias: [{ token_id: 5, bias: 101 }] } },
      /logit_bias for token 5 must be in \[-100, 100\], got 101/,
    ],
    [
      { sampling: { logit_bias: Array.from({ length: 301 }, (_, i) => ({ token_id: i, bias: 1 })) } },
      /logit_bias holds 301 entries; at most 300/,
    ],
    [
      { stopping: { max_new_tokens: 10, min_new_tokens: 11 } },
      /min_new_tokens must be an integer in \[0, max_new_tokens = 10\], got 11/,
    ],
    [
      { stopping: { max_new_tokens: 10, time_limit_ms: 90_000_000 } },
      /time_limit_ms must be an integer in \[0, 86400000\], got 90000000/,
    ],
  ];
  for (const [extra, message] of cases) {
    const err = await grpcError(client.generate(chat('bad', 'Hi', extra), OPTS));
    t.is(err.code, GrpcStatus.INVALID_ARGUMENT, String(message));
    t.regex(err.details, message);
  }
});
