/**
 * Log-probabilities over the real server (issue 21, item 1): per generated token its logprob, rank
 * and top alternatives, through Generate, GenerateStream and GenerateBidi; with speculation on they
 * equal plain decoding's bit for bit; bad options get INVALID_ARGUMENT naming the field.
 */
import { status as GrpcStatus } from '@grpc/grpc-js';
import test from 'ava';
import type { GenerateRequestMsg, TokenLogprobMsg } from '../src/transport/grpc/messages.js';
import { exactnessPrompts } from './support/prompt-set.js';
import { collectStream, grpcError, lazyTestServer } from './support/grpc-server.js';

const server = lazyTestServer({ maxActive: 8, maxQueued: 16 });

function request(id: string, prompt: string, extra: Partial<GenerateRequestMsg> = {}): GenerateRequestMsg {
  return {
    request_id: id,
    messages: { messages: [{ role: 'user', content: prompt }] },
    stopping: { max_new_tokens: 40 },
    logprobs: { top_logprobs: 5 },
    ...extra,
  };
}

test.serial(
  'each generated token gets its logprob, rank and top 5; greedy picks rank 1, the top alternative',
  async (t) => {
    const s = await server();
    const r = await s
      .client()
      .generate(request('lp', 'Name three primary colors.', { speculation: { mode: 'MODE_OFF' } }), {
        deadlineMs: 60_000,
      });
    t.true(r.token_ids.length > 0);
    t.is(r.logprobs!.length, r.token_ids.length, 'one entry per token');
    r.logprobs!.forEach((e: TokenLogprobMsg, i) => {
      t.is(e.token_id, r.token_ids[i]!);
      t.is(e.rank, 1, 'greedy decoding takes the most likely token');
      t.is(e.top.length, 5);
      t.is(e.top[0]!.token_id, e.token_id);
      t.is(e.top[0]!.logprob, e.logprob);
      t.true(e.logprob <= 0 && Number.isFinite(e.logprob));
      for (let k = 1; k < 5; k++) t.true(e.top[k]!.logprob <= e.top[k - 1]!.logprob, 'most likely first');
      t.is(typeof e.text, 'string');
    });
    t.is(r.logprobs!.map((e) => e.text).join(''), r.text, "the tokens' texts make up the text");
    // Without the option: no entries.
    const { logprobs: _unused, ...without } = request('nolp', 'Name three primary colors.');
    const plain = await s.client().generate(without, { deadlineMs: 60_000 });
    t.deepEqual(plain.logprobs ?? [], []);
  },
);

test.serial(
  "with speculation on, log-probabilities equal plain decoding's bit for bit (stream and unary)",
  async (t) => {
    const s = await server();
    const client = s.client();
    let accepted = 0;
    for (const p of exactnessPrompts()
      .filter((x) => /code-editing|summarization/.test(x.id))
      .slice(0, 4)) {
      const base = request(p.id, p.prompt, { stopping: { max_new_tokens: 48 } });
      const on = await collectStream(client.generateStream({ ...base, speculation: { mode: 'MODE_NGRAM' } }));
      const off = await collectStream(client.generateStream({ ...base, speculation: { mode: 'MODE_OFF' } }));
      const entries = (chunks: typeof on) => chunks.flatMap((c) => c.logprobs ?? []);
      t.deepEqual(entries(on), entries(off), `${p.id}: logprobs differ with speculation`);
      t.is(entries(on).length, on.flatMap((c) => c.token_ids).length);
      accepted += on[on.length - 1]!.final!.speculation.accepted_tokens;
      const unary = await client.generate({ ...base, speculation: { mode: 'MODE_NGRAM' } }, { deadlineMs: 60_000 });
      t.deepEqual(unary.logprobs, entries(off), `${p.id}: unary`);
    }
    t.true(accepted > 0, 'speculation accepted drafts, so verification rows were scored');
  },
);

test.serial('logprobs with sampling are those of the raw distribution, and bidi chunks carry them', async (t) => {
  const s = await server();
  const call = s.client().generateBidi({ deadlineMs: 60_000 });
  const chunks: { token_ids: readonly number[]; logprobs?: TokenLogprobMsg[] }[] = [];
  const done = new Promise<void>((resolve) => {
    call.on('data', (m: { chunk?: (typeof chunks)[number] }) => m.chunk && chunks.push(m.chunk));
    call.on('error', () => {});
    call.on('status', () => resolve());
  });
  call.write({
    generate: request('b', 'Write a haiku about the sea.', {
      sampling: { temperature: 1.2, seed: '7' },
      logprobs: { enabled: true },
    }),
  });
  call.end();
  await done;
  const entries = chunks.flatMap((c) => c.logprobs ?? []);
  t.is(entries.length, chunks.flatMap((c) => c.token_ids).length);
  t.true(entries.length > 0);
  for (const e of entries) t.deepEqual(e.top, [], 'enabled without top_logprobs: no alternatives');
  t.true(
    entries.some((e) => e.rank > 1),
    'sampling at temperature 1.2 picks a less likely token somewhere',
  );
});

test.serial(
  "logprobs are of the raw distribution with a repetition penalty too: the first position's equal the unpenalized request's",
  async (t) => {
    const s = await server();
    const client = s.client();
    // The prompt's tokens are in the penalty set from the first position on, and " the" is among them.
    const base = request('pen', 'Say the word the three times: the the the', {
      stopping: { max_new_tokens: 4 },
      speculation: { mode: 'MODE_OFF' },
    });
    const plain = await client.generate(base, { deadlineMs: 60_000 });
    const penalized = await client.generate({ ...base, sampling: { repetition_penalty: 3 } }, { deadlineMs: 60_000 });
    t.deepEqual(
      penalized.logprobs![0]!.top,
      plain.logprobs![0]!.top,
      'the alternatives of the first position do not depend on the penalty',
    );
    const chosen = penalized.logprobs![0]!;
    const asAlternative = plain.logprobs![0]!.top.find((x) => x.token_id === chosen.token_id);
    if (asAlternative !== undefined) t.is(chosen.logprob, asAlternative.logprob);
  },
);

test.serial('top_logprobs above 20 is INVALID_ARGUMENT naming the field', async (t) => {
  const s = await server();
  const error = await grpcError(
    s.client().generate(request('bad', 'Hi', { logprobs: { top_logprobs: 21 } }), { deadlineMs: 10_000 }),
  );
  t.is(error.code, GrpcStatus.INVALID_ARGUMENT);
  t.regex(error.details, /logprobs\.top_logprobs must be an integer in \[0, 20\], got 21/);
});

test.serial(
  "prompt log-probabilities: every prompt token but the first, on the first chunk; they equal, bit for bit, the generated tokens' logprobs when those tokens are fed back as prompt",
  async (t) => {
    const client = (await server()).client();
    const tok = await client.tokenize({ text: 'Lighthouses guide ships along rocky coasts at night. '.repeat(8) });
    const prompt = tok.token_ids;
    t.true(prompt.length > 64, 'longer than one scoring chunk');
    const generated = await client.generate(
      { token_ids: { ids: prompt }, stopping: { max_new_tokens: 8, ignore_eos: true }, logprobs: { top_logprobs: 3 } },
      { deadlineMs: 60_000 },
    );
    const echoed = [...prompt, ...generated.token_ids];
    const chunks = await collectStream(
      client.generateStream({
        token_ids: { ids: echoed },
        stopping: { max_new_tokens: 2 },
        logprobs: { top_logprobs: 3, prompt: true },
      }),
    );
    const scored = chunks[0]!.prompt_logprobs!;
    t.deepEqual(chunks[0]!.token_ids, [], 'a chunk of its own, before any token');
    t.is(chunks.filter((c) => (c.prompt_logprobs ?? []).length > 0).length, 1, 'only on the first chunk');
    t.is(scored.length, echoed.length - 1);
    scored.forEach((e, i) => t.is(e.token_id, echoed[i + 1]!));
    t.deepEqual(
      scored.slice(prompt.length - 1),
      generated.logprobs,
      'scoring a token as prompt = its logprob when generated',
    );
    t.true(scored.every((e) => e.logprob <= 0 && e.rank >= 1 && e.top.length === 3));
    const unary = await client.generate(
      { token_ids: { ids: echoed }, stopping: { max_new_tokens: 2 }, logprobs: { top_logprobs: 3, prompt: true } },
      { deadlineMs: 60_000 },
    );
    t.deepEqual(unary.prompt_logprobs, scored);
    t.is(unary.logprobs!.length, unary.token_ids.length, 'prompt implies enabled');
  },
);
