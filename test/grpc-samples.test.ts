/**
 * Several samples of one prompt (issue 21, item 4): GenerateRequest.n ≤ 8, one prefill whose KV
 * cache the other samples copy, sample i seeded with seed + i, chunks tagged with their index,
 * one final chunk with each sample's end; over the real server.
 */
import { status as GrpcStatus } from '@grpc/grpc-js';
import test from 'ava';
import { loadDecoderModel } from '../src/runtime/load-model.js';
import type { GenerateChunkMsg, GenerateRequestMsg } from '../src/transport/grpc/messages.js';
import { defaultModelDir } from './support/default-model.js';
import { collectStream, grpcError, lazyTestServer, startTestServer } from './support/grpc-server.js';

const server = lazyTestServer({ maxActive: 8, maxQueued: 16 });

const OPTS = { deadlineMs: 120_000 };
const PROMPT = 'Write a short poem about a lighthouse and the sea.';

function request(extra: Partial<GenerateRequestMsg>): GenerateRequestMsg {
  return {
    request_id: 'n',
    messages: { messages: [{ role: 'user', content: PROMPT }] },
    stopping: { max_new_tokens: 32 },
    sampling: { temperature: 0.9, top_p: 0.95, seed: '7' },
    ...extra,
  };
}

function bySample(chunks: readonly GenerateChunkMsg[], n: number): { text: string; ids: number[] }[] {
  const out = Array.from({ length: n }, () => ({ text: '', ids: [] as number[] }));
  for (const c of chunks) {
    const o = out[c.index ?? 0]!;
    o.text += c.text;
    o.ids.push(...c.token_ids);
  }
  return out;
}

test.serial(
  'n = 4: sample i equals a lone request seeded seed + i; chunks carry the index; one final sums the outputs and counts the prompt once',
  async (t) => {
    const client = (await server()).client();
    const chunks = await collectStream(client.generateStream(request({ n: 4 })));
    const finals = chunks.filter((c) => c.final !== undefined);
    t.is(finals.length, 1, 'one terminal chunk');
    t.is(chunks.at(-1), finals[0]);
    const final = finals[0]!.final!;
    const samples = bySample(chunks, 4);
    t.deepEqual(new Set(chunks.filter((c) => c.token_ids.length > 0).map((c) => c.index ?? 0)), new Set([0, 1, 2, 3]));
    const lone = [];
    for (let i = 0; i < 4; i++)
      lone.push(
        await client.generate(request({ sampling: { temperature: 0.9, top_p: 0.95, seed: String(7 + i) } }), OPTS),
      );
    for (let i = 0; i < 4; i++) {
      t.deepEqual(samples[i]!.ids, lone[i]!.token_ids, `sample ${i} = seed ${7 + i}`);
      t.is(samples[i]!.text, lone[i]!.text);
      t.is(final.samples![i]!.index, i);
      t.is(final.samples![i]!.output_tokens, lone[i]!.token_ids.length);
      t.is(final.samples![i]!.finish_reason, lone[i]!.final.finish_reason);
    }
    t.true(new Set(samples.map((s) => s.text)).size > 1, 'different seeds give different samples');
    t.is(final.usage.input_tokens, lone[0]!.final.usage.input_tokens, 'the prompt counts once');
    t.is(
      final.usage.output_tokens,
      lone.reduce((a, r) => a + r.token_ids.length, 0),
    );
    t.is(final.finish_reason, final.samples![0]!.finish_reason);

    const unary = await client.generate(request({ n: 4, logprobs: { enabled: true } }), OPTS);
    t.is(unary.samples!.length, 4);
    t.deepEqual(unary.token_ids, samples[0]!.ids, 'the top level is sample 0');
    unary.samples!.forEach((s, i) => {
      t.is(s.index, i);
      t.deepEqual(s.token_ids, samples[i]!.ids);
      t.is(s.logprobs!.length, s.token_ids.length);
    });
  },
);

test.serial(
  'n samples stay lossless with speculation (each equal with it on and off) and work on bidi next to a single request',
  async (t) => {
    const client = (await server()).client();
    const copy = request({
      messages: {
        messages: [
          {
            role: 'user',
            content: 'Repeat this sentence exactly three times: the quick brown fox jumps over the lazy dog.',
          },
        ],
      },
      stopping: { max_new_tokens: 48 },
      n: 3,
    });
    const on = await client.generate({ ...copy, speculation: { mode: 'MODE_NGRAM' } }, OPTS);
    const off = await client.generate({ ...copy, speculation: { mode: 'MODE_OFF' } }, OPTS);
    t.deepEqual(
      on.samples!.map((s) => s.token_ids),
      off.samples!.map((s) => s.token_ids),
    );
    t.true(on.final.speculation.accepted_tokens > 0, 'drafts were accepted');

    const call = client.generateBidi(OPTS);
    const messages: { chunk?: GenerateChunkMsg }[] = [];
    const done = new Promise<void>((resolve) => {
      call.on('data', (m: { chunk?: GenerateChunkMsg }) => messages.push(m));
      call.on('error', () => {});
      call.on('status', () => resolve());
    });
    call.write({ generate: request({ request_id: 'pair', n: 2 }) });
    call.write({ generate: request({ request_id: 'one' }) });
    call.end();
    await done;
    const of = (id: string) => messages.flatMap((m) => (m.chunk?.request_id === id ? [m.chunk] : []));
    t.is(of('pair').filter((c) => c.final).length, 1);
    t.is(of('one').filter((c) => c.final).length, 1);
    t.is(of('pair').at(-1)!.final!.samples!.length, 2);
    t.deepEqual(
      bySample(of('one'), 1)[0]!.ids,
      bySample(of('pair'), 2)[0]!.ids,
      'sample 0 of the pair = the single request (same seed)',
    );
  },
);

test.serial("n out of range or beyond the server's sequence slots gets INVALID_ARGUMENT naming n", async (t) => {
  const client = (await server()).client();
  const nine = await grpcError(client.generate(request({ n: 9 }), OPTS));
  t.is(nine.code, GrpcStatus.INVALID_ARGUMENT);
  t.regex(nine.details, /n must be an integer in \[1, 8\], got 9/);
  const small = await startTestServer({ maxActive: 2, maxQueued: 4 });
  try {
    const err = await grpcError(small.client().generate(request({ n: 3 }), OPTS));
    t.is(err.code, GrpcStatus.INVALID_ARGUMENT);
    t.regex(err.details, /n = 3 samples need as many sequence slots; this server has 2/);
    t.is((await small.client().generate(request({ n: 2 }), OPTS)).samples!.length, 2);
  } finally {
    await small.close();
  }
});

test("a sequence that copies another's prefix gives bitwise the logits of one that ran the prefill itself", async (t) => {
  const model = await loadDecoderModel(await defaultModelDir(), {
    executionProvider: 'cpu',
    intraOpThreads: 1,
    kvCapacity: 512,
  });
  try {
    const prompt = Array.from({ length: 150 }, (_, i) => (i * 104729) % 49152);
    const next = [17, 4242, 9];
    const a = model.createSequence();
    const b = model.createSequence();
    t.truthy(b.copyPrefixFrom, 'the CPU runtime shares prefills');
    await a.forward(prompt, 1);
    b.copyPrefixFrom!(a, prompt.length);
    t.is(b.length, prompt.length);
    // a moves on (its later positions must not leak into b's copy).
    await a.forward([1, 2, 3, 4], 1);
    a.rewind(prompt.length);
    const fromA = Float32Array.from(await a.forward(next, 3));
    const fromB = Float32Array.from(await b.forward(next, 3));
    t.deepEqual(fromB, fromA);
    a.dispose();
    b.dispose();
  } finally {
    await model.dispose();
  }
});
