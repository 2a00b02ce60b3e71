/**
 * The OpenAI-compatible HTTP API (issue 32) against the official `openai` npm client on loopback,
 * over the same InferenceService as the gRPC server: models, chat non-streamed and streamed (the
 * text equals the gRPC result for the same request), n = 2, logprobs, stop, usage, structured
 * output, the legacy completions endpoint; bad inputs get the documented status and error object;
 * a client that disconnects mid-stream frees its slot.
 */
import test from 'ava';
import { propagation, SpanKind } from '@opentelemetry/api';
import { W3CTraceContextPropagator } from '@opentelemetry/core';
import { MeterProvider } from '@opentelemetry/sdk-metrics';
import { InMemorySpanExporter, SimpleSpanProcessor, TracerProvider } from '@opentelemetry/sdk-trace';
import OpenAI from 'openai';
import { createLogger, SILENT_LOGGER } from '../src/log.js';
import { GenerationTelemetry } from '../src/telemetry/generation-telemetry.js';
import {
  OPENAI_BODY_BYTES_MAX,
  OPENAI_BODY_DEPTH_MAX,
  type RunningOpenAiServer,
  startOpenAiServer,
} from '../src/transport/openai/openai-server.js';
import { lazyTestServer, startTestServer, TEST_MODEL_NAME, waitFor } from './support/grpc-server.js';

const server = lazyTestServer({ maxActive: 4, maxQueued: 8 });
let http: RunningOpenAiServer | undefined;

async function client(): Promise<OpenAI> {
  const s = await server();
  http ??= await startOpenAiServer(s.service, { host: '127.0.0.1', port: 0 }, SILENT_LOGGER);
  return new OpenAI({ baseURL: `http://127.0.0.1:${http.port}/v1`, apiKey: 'unused', maxRetries: 0 });
}

test.after.always(async () => {
  await http?.close();
});

const QUESTION = 'Name three primary colors.';

test.serial(
  'models, then a greedy chat completion equal to the gRPC result, non-streamed and streamed, with usage',
  async (t) => {
    const openai = await client();
    const models = await openai.models.list();
    t.deepEqual(
      models.data.map((m) => m.id),
      [TEST_MODEL_NAME],
    );
    const chat = await openai.chat.completions.create({
      model: TEST_MODEL_NAME,
      messages: [{ role: 'user', content: QUESTION }],
      temperature: 0,
      max_tokens: 40,
    });
    const grpc = await (await server())
      .client()
      .generate(
        { messages: { messages: [{ role: 'user', content: QUESTION }] }, stopping: { max_new_tokens: 40 } },
        { deadlineMs: 60_000 },
      );
    t.is(chat.choices[0]!.message.content, grpc.text);
    t.is(chat.usage!.completion_tokens, grpc.final!.usage.output_tokens);
    t.true(['stop', 'length'].includes(chat.choices[0]!.finish_reason));

    const stream = await openai.chat.completions.create({
      model: TEST_MODEL_NAME,
      messages: [{ role: 'user', content: QUESTION }],
      temperature: 0,
      max_tokens: 40,
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = '';
    let finish: string | null = null;
    let usage: OpenAI.CompletionUsage | undefined | null;
    for await (const chunk of stream) {
      for (const c of chunk.choices) {
        text += c.delta.content ?? '';
        finish = c.finish_reason ?? finish;
      }
      if (chunk.usage) usage = chunk.usage;
    }
    t.is(text, grpc.text);
    t.is(finish, chat.choices[0]!.finish_reason);
    t.is(usage?.completion_tokens, chat.usage!.completion_tokens);
  },
);

test.serial(
  'n = 2 seeded samples, stop, logprobs with top alternatives, and the legacy completions endpoint',
  async (t) => {
    const openai = await client();
    const two = await openai.chat.completions.create({
      messages: [{ role: 'user', content: 'Write a name for a cat.' }],
      model: TEST_MODEL_NAME,
      n: 2,
      seed: 5,
      temperature: 0.9,
      max_tokens: 12,
    });
    t.is(two.choices.length, 2);
    t.deepEqual(
      two.choices.map((c) => c.index),
      [0, 1],
    );
    const stopped = await openai.chat.completions.create({
      messages: [{ role: 'user', content: 'Count from one to ten in words, separated by commas.' }],
      model: TEST_MODEL_NAME,
      temperature: 0,
      max_tokens: 40,
      stop: [','],
    });
    t.false(stopped.choices[0]!.message.content!.includes(','));
    t.is(stopped.choices[0]!.finish_reason, 'stop');
    const scored = await openai.chat.completions.create({
      messages: [{ role: 'user', content: QUESTION }],
      model: TEST_MODEL_NAME,
      temperature: 0,
      max_tokens: 6,
      logprobs: true,
      top_logprobs: 3,
    });
    const content = scored.choices[0]!.logprobs!.content!;
    t.is(content.length, scored.usage!.completion_tokens);
    for (const l of content) {
      t.is(l.top_logprobs.length, 3);
      t.is(l.top_logprobs[0]!.logprob, l.logprob, 'greedy: the token is the most likely one');
    }
    t.is(content.map((l) => l.token).join(''), scored.choices[0]!.message.content ?? '');
    const legacy = await openai.completions.create({
      model: TEST_MODEL_NAME,
      prompt: 'The capital of France is',
      max_tokens: 5,
      temperature: 0,
    });
    t.is(legacy.choices[0]!.text.length > 0, true);
    t.is(legacy.usage!.completion_tokens, 5);
  },
);

test.serial(
  'legacy completions with echo: the prompt scored (max_tokens 0), and echoed before a completion, streamed or not',
  async (t) => {
    const openai = await client();
    const prompt = 'The capital of France is Paris, and the capital of Italy is';
    const scored = await openai.completions.create({
      model: TEST_MODEL_NAME,
      prompt,
      max_tokens: 0,
      echo: true,
      logprobs: 1,
    });
    const choice = scored.choices[0]!;
    t.is(choice.text, prompt);
    t.is(choice.finish_reason, 'length');
    t.is(scored.usage!.completion_tokens, 0);
    const lp = choice.logprobs!;
    t.is(lp.tokens!.length, scored.usage!.prompt_tokens);
    t.is(lp.tokens!.join(''), prompt);
    // OpenAI's types leave out the null an echoed first token has.
    t.is((lp.token_logprobs as unknown[])[0], null, 'nothing predicts the first token');
    t.true(lp.token_logprobs!.slice(1).every((x) => typeof x === 'number' && x <= 0));
    t.is((lp.top_logprobs as unknown[])[0], null);
    t.true(lp.top_logprobs!.slice(1).every((x) => x !== null && Object.keys(x).length >= 1));

    const plain = await openai.completions.create({ model: TEST_MODEL_NAME, prompt, max_tokens: 4, temperature: 0 });
    const echoed = await openai.completions.create({
      model: TEST_MODEL_NAME,
      prompt,
      max_tokens: 4,
      temperature: 0,
      echo: true,
      logprobs: 1,
    });
    t.is(echoed.choices[0]!.text, prompt + plain.choices[0]!.text);
    const both = echoed.choices[0]!.logprobs!;
    t.is(both.tokens!.length, lp.tokens!.length + echoed.usage!.completion_tokens);
    t.deepEqual(both.token_logprobs!.slice(0, lp.tokens!.length), lp.token_logprobs, 'the same prompt scores');

    const stream = await openai.completions.create({
      model: TEST_MODEL_NAME,
      prompt,
      max_tokens: 4,
      temperature: 0,
      echo: true,
      stream: true,
    });
    const texts: string[] = [];
    for await (const chunk of stream) texts.push(chunk.choices[0]?.text ?? '');
    t.is(texts[0], prompt, 'the prompt comes first');
    t.is(texts.join(''), prompt + plain.choices[0]!.text);
  },
);

test.serial(
  'cache_salt: a repeat drafts from the shared pool (usage.anpd) and starts from its cached prompt (cached_tokens), cache_off keeps a request out',
  async (t) => {
    const openai = await client();
    const body = {
      model: TEST_MODEL_NAME,
      messages: [{ role: 'user' as const, content: 'List five prime numbers and say why each is prime.' }],
      max_tokens: 48,
      temperature: 0,
    };
    type AnpdUsage = { anpd: { pool_draft_tokens: number; pool_accepted_tokens: number } };
    const usage = (r: { usage?: unknown }) => (r.usage as AnpdUsage).anpd;
    // Extra body fields as vLLM takes them.
    const first = await openai.chat.completions.create({ ...body, cache_salt: 'http' } as typeof body);
    const again = await openai.chat.completions.create({ ...body, cache_salt: 'http' } as typeof body);
    const off = await openai.chat.completions.create({ ...body, cache_salt: 'http', cache_off: true } as typeof body);
    t.is(again.choices[0]!.message.content, first.choices[0]!.message.content);
    t.is(off.choices[0]!.message.content, first.choices[0]!.message.content);
    t.is(usage(first).pool_draft_tokens, 0);
    t.true(usage(again).pool_accepted_tokens > 0);
    t.true(again.usage!.prompt_tokens_details!.cached_tokens! > 0, 'the prompt came from the prefix cache');
    t.is(usage(off).pool_draft_tokens, 0);
    t.is(off.usage!.prompt_tokens_details!.cached_tokens, 0);
  },
);

test.serial('response_format json_schema gives JSON that matches the schema', async (t) => {
  const openai = await client();
  const r = await openai.chat.completions.create({
    model: TEST_MODEL_NAME,
    messages: [{ role: 'user', content: 'Extract: Ada is 36 and lives in London.' }],
    temperature: 0,
    max_tokens: 60,
    response_format: {
      type: 'json_schema',
      json_schema: {
        name: 'person',
        schema: {
          type: 'object',
          properties: { name: { type: 'string', maxLength: 30 }, age: { type: 'integer' } },
          required: ['name', 'age'],
        },
      },
    },
  });
  const value = JSON.parse(r.choices[0]!.message.content!) as { name: unknown; age: unknown };
  t.is(typeof value.name, 'string');
  t.true(Number.isInteger(value.age));
});

test.serial('bad inputs get the documented status and an OpenAI error object', async (t) => {
  const openai = await client();
  const cases: [() => Promise<unknown>, number, RegExp][] = [
    [
      () => openai.chat.completions.create({ model: TEST_MODEL_NAME, messages: [], max_tokens: 4 }),
      400,
      /messages must be a non-empty array/,
    ],
    [
      () =>
        openai.chat.completions.create({
          model: TEST_MODEL_NAME,
          messages: [{ role: 'user', content: 'x' }],
          max_tokens: 4,
          temperature: -1,
        }),
      400,
      /temperature/,
    ],
    [
      () =>
        openai.chat.completions.create({ model: 'gpt-9', messages: [{ role: 'user', content: 'x' }], max_tokens: 4 }),
      404,
      /gpt-9/,
    ],
    [
      () =>
        openai.chat.completions.create({
          model: TEST_MODEL_NAME,
          messages: [{ role: 'user', content: 'x' }],
          max_tokens: 4,
          response_format: { type: 'json_schema', json_schema: { name: 'x', schema: { type: 'foo' } } },
        }),
      400,
      /foo/,
    ],
  ];
  for (const [call, status, message] of cases) {
    const error = await t.throwsAsync(call);
    t.true(error instanceof OpenAI.APIError, String(error));
    const api = error as InstanceType<typeof OpenAI.APIError>;
    t.is(api.status, status, api.message);
    t.regex(api.message, message);
    t.is(typeof (api.error as { type?: unknown }).type, 'string');
  }
  const response = await fetch(`http://127.0.0.1:${http!.port}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: '{"messages": [',
  });
  t.is(response.status, 400);
  t.regex(((await response.json()) as { error: { message: string } }).error.message, /not JSON/);
});

test.serial(
  'a bad key gets 401, an oversized body 413, a too-deep body 400, each an OpenAI error object',
  async (t) => {
    const { service } = await server();
    const keyed = await startOpenAiServer(service, { host: '127.0.0.1', port: 0, apiKeys: ['k1'] }, SILENT_LOGGER);
    try {
      const base = `http://127.0.0.1:${keyed.port}/v1`;
      for (const apiKey of ['wrong', '']) {
        const openai = new OpenAI({
          baseURL: base,
          apiKey: apiKey || 'x',
          maxRetries: 0,
          defaultHeaders: apiKey === '' ? { authorization: null } : {},
        });
        const error = await t.throwsAsync(openai.models.list());
        t.is((error as InstanceType<typeof OpenAI.APIError>).status, 401, String(error));
      }
      const good = new OpenAI({ baseURL: base, apiKey: 'k1', maxRetries: 0 });
      t.is((await good.models.list()).data[0]!.id, TEST_MODEL_NAME);
      const post = (body: string) =>
        fetch(`${base}/chat/completions`, {
          method: 'POST',
          headers: { 'content-type': 'application/json', authorization: 'Bearer k1' },
          body,
        });
      const big = await post(
        JSON.stringify({ messages: [{ role: 'user', content: 'x'.repeat(OPENAI_BODY_BYTES_MAX) }] }),
      );
      t.is(big.status, 413);
      t.regex(((await big.json()) as { error: { message: string } }).error.message, /larger than/);
      const deep = await post(
        `{"messages": [{"role": "user", "content": "x"}], "x": ${'['.repeat(OPENAI_BODY_DEPTH_MAX)}${']'.repeat(OPENAI_BODY_DEPTH_MAX)}}`,
      );
      t.is(deep.status, 400);
      t.regex(((await deep.json()) as { error: { message: string } }).error.message, /deeper than 64/);
    } finally {
      await keyed.close();
    }
  },
);

test.serial('a full queue gets 429 with Retry-After; a draining server 503', async (t) => {
  const s = await startTestServer({ maxActive: 1, maxQueued: 1 });
  const small = await startOpenAiServer(s.service, { host: '127.0.0.1', port: 0 }, SILENT_LOGGER);
  const held = new AbortController();
  try {
    const url = `http://127.0.0.1:${small.port}/v1/chat/completions`;
    const post = (stream: boolean, signal?: AbortSignal) =>
      fetch(url, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ messages: [{ role: 'user', content: 'Tell a long story.' }], max_tokens: 1500, stream }),
        ...(signal !== undefined ? { signal } : {}),
      });
    // One holds the slot, one waits in the queue; the third finds no room.
    const first = await post(true, held.signal);
    t.is(first.status, 200);
    const queued = post(true, held.signal).catch(() => undefined);
    t.true(await waitFor(() => s.service.poolState.queued === 1, 5_000));
    const full = await post(false);
    t.is(full.status, 429);
    t.is(full.headers.get('retry-after'), '1');
    t.is(((await full.json()) as { error: { type: string } }).error.type, 'rate_limit_error');
    held.abort();
    await queued;
    t.true(await waitFor(() => s.service.poolState.active === 0 && s.service.poolState.queued === 0, 10_000));
    s.service.startDraining();
    const draining = await post(false);
    t.is(draining.status, 503);
    t.regex(((await draining.json()) as { error: { message: string } }).error.message, /shutting down/);
  } finally {
    held.abort();
    await small.close();
    await s.close();
  }
});

test.serial('a client that disconnects mid-stream frees its slot', async (t) => {
  const openai = await client();
  const { service } = await server();
  const stream = await openai.chat.completions.create({
    model: TEST_MODEL_NAME,
    messages: [{ role: 'user', content: 'Tell a long story about a lighthouse keeper.' }],
    temperature: 0,
    max_tokens: 2000,
    stream: true,
  });
  let chunks = 0;
  // Leaving the loop aborts the response (the client closes the connection) after 3 chunks of up to 2000 tokens.
  for await (const _ of stream) if (++chunks === 3) break;
  t.is(chunks, 3);
  t.true(await waitFor(() => service.poolState.active === 0, 10_000), 'the slot came back');
});

test.serial(
  'with telemetry on, an HTTP request records a SERVER span with its status and, under it, the generation span and log line a gRPC one does, in the caller trace',
  async (t) => {
    // As startTelemetry sets it (W3C traceparent).
    propagation.setGlobalPropagator(new W3CTraceContextPropagator());
    const spans = new InMemorySpanExporter();
    const tracerProvider = new TracerProvider({ spanProcessors: [new SimpleSpanProcessor({ exporter: spans })] });
    const meterProvider = new MeterProvider({ readers: [] });
    const lines: Record<string, unknown>[] = [];
    const logger = createLogger('info', (line) => lines.push(JSON.parse(line) as Record<string, unknown>));
    const { service } = await server();
    const telemetry = new GenerationTelemetry(
      tracerProvider.getTracer('test'),
      meterProvider.getMeter('test'),
      logger,
      () => service.poolState,
    );
    const traced = await startOpenAiServer(service, { host: '127.0.0.1', port: 0 }, SILENT_LOGGER, telemetry);
    try {
      const traceId = '4bf92f3577b34da6a3ce929d0e0e4736';
      const response = await fetch(`http://127.0.0.1:${traced.port}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', traceparent: `00-${traceId}-00f067aa0ba902b7-01` },
        body: JSON.stringify({ messages: [{ role: 'user', content: QUESTION }], max_tokens: 8, temperature: 0 }),
      });
      t.is(response.status, 200);
      await response.json();
      const done = spans.getFinishedSpans();
      t.is(done.length, 2);
      const server = done.find((s) => s.name === 'POST /v1/chat/completions')!;
      const generation = done.find((s) => s !== server)!;
      t.is(server.kind, SpanKind.SERVER);
      t.is(server.attributes['http.response.status_code'], 200);
      t.is(server.attributes['error.type'], undefined);
      t.is(
        generation.parentSpanContext?.spanId,
        server.spanContext().spanId,
        "the generation is the request span's child",
      );
      for (const span of done) t.is(span.spanContext().traceId, traceId);
      t.is(generation.attributes['gen_ai.usage.output_tokens'], 8);
      t.true(lines.some((l) => l['method'] === 'ChatCompletions'));
      // A refused request is recorded with its status.
      const refused = await fetch(`http://127.0.0.1:${traced.port}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ messages: [], max_tokens: 8 }),
      });
      t.is(refused.status, 400);
      await refused.json();
      const bad = spans.getFinishedSpans().find((s) => s.name === 'POST /v1/chat/completions' && s !== server)!;
      t.is(bad.attributes['http.response.status_code'], 400);
      t.is(bad.attributes['error.type'], '400');
    } finally {
      await traced.close();
    }
  },
);
