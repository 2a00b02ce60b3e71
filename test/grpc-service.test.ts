import { type ClientDuplexStream, type ServiceError, status as GrpcStatus } from '@grpc/grpc-js';
import http2 from 'node:http2';
import { isAbsolute, join } from 'node:path';
import test from 'ava';
import protobuf from 'protobufjs';
import { nativeAddon } from '../src/runtime/native-run.js';
import { GENERATION_PROTO, PROTO_DIR } from '../src/transport/grpc/proto.js';
import type {
  BidiClientMsg,
  BidiServerMsg,
  GenerateChunkMsg,
  GenerateRequestMsg,
} from '../src/transport/grpc/messages.js';
import {
  TEST_MODEL_NAME,
  type TestServer,
  collectStream,
  grpcError,
  joinChunks,
  startTestServer,
  waitFor,
} from './support/grpc-server.js';

const QUESTIONS = [
  'What is the capital of France?',
  'Name three primary colors.',
  'Write a haiku about the sea.',
  'What is 12 times 12?',
  'Give one tip for writing clean code.',
  'What does a CPU do?',
  'List the first five prime numbers.',
  'Why is the sky blue?',
];

function chatRequest(
  id: string,
  question: string,
  maxNewTokens = 24,
  extra: Partial<GenerateRequestMsg> = {},
): GenerateRequestMsg {
  return {
    request_id: id,
    messages: { messages: [{ role: 'user', content: question }] },
    stopping: { max_new_tokens: maxNewTokens },
    ...extra,
  };
}

/** A request that runs until cancelled or for `maxNewTokens` tokens. */
function longRequest(id: string, maxNewTokens = 2000): GenerateRequestMsg {
  return {
    request_id: id,
    text: 'Count from one to one thousand: one, two, three,',
    stopping: { max_new_tokens: maxNewTokens, ignore_eos: true },
  };
}

interface BidiResult {
  readonly messages: BidiServerMsg[];
  readonly status: { code: number; details: string };
}

type Bidi = ClientDuplexStream<BidiClientMsg, BidiServerMsg>;

function collectBidi(call: Bidi, onMessage?: (m: BidiServerMsg) => void): Promise<BidiResult> {
  const messages: BidiServerMsg[] = [];
  return new Promise((resolve) => {
    call.on('data', (m: BidiServerMsg) => {
      messages.push(m);
      onMessage?.(m);
    });
    call.on('error', () => {}); // the status event carries it
    call.on('status', (s: { code: number; details: string }) => resolve({ messages, status: s }));
  });
}

function chunksOf(messages: readonly BidiServerMsg[], id: string): GenerateChunkMsg[] {
  return messages.flatMap((m) => ('chunk' in m && m.chunk && m.chunk.request_id === id ? [m.chunk] : []));
}

function errorsOf(messages: readonly BidiServerMsg[], id?: string) {
  return messages.flatMap((m) =>
    'error' in m && m.error && (id === undefined || m.error.request_id === id) ? [m.error] : [],
  );
}

let shared: TestServer | undefined;
async function server(): Promise<TestServer> {
  shared ??= await startTestServer({ maxActive: 16, maxQueued: 64 });
  return shared;
}

test.after.always(async () => {
  await shared?.close();
});

test.serial(
  'eight generations multiplexed on one bidi call interleave, end exactly once each and equal the unary answers',
  async (t) => {
    const s = await server();
    const client = s.client();
    const call = client.generateBidi({ deadlineMs: 120_000 });
    const done = collectBidi(call);
    const requests = QUESTIONS.map((q, i) => chatRequest(`req-${i}`, q));
    for (const r of requests) call.write({ generate: r });
    call.end(); // half-close: the server finishes what is in flight, then ends the call OK
    const { messages, status } = await done;
    t.is(status.code, GrpcStatus.OK);
    t.deepEqual(errorsOf(messages), []);

    const order = messages.map((m) => ('chunk' in m ? m.chunk.request_id : ''));
    let interleaved = false;
    for (const r of requests) {
      const id = r.request_id!;
      const chunks = chunksOf(messages, id);
      t.deepEqual(
        chunks.map((c) => c.seq),
        chunks.map((_, i) => i),
        `${id}: seq counts 0, 1, 2, …`,
      );
      const finals = chunks.filter((c) => c.final !== undefined && c.final !== null);
      t.is(finals.length, 1, `${id}: exactly one terminal message`);
      t.is(chunks[chunks.length - 1]!.final, finals[0]!.final, `${id}: the final chunk comes last`);
      const first = order.indexOf(id);
      const last = order.lastIndexOf(id);
      if (order.slice(first, last).some((other) => other !== id)) interleaved = true;

      const joined = joinChunks(chunks);
      t.is(finals[0]!.final!.usage.output_tokens, joined.tokenIds.length);
      const unary = await client.generate(r, { deadlineMs: 60_000 });
      t.is(joined.text, unary.text, `${id}: same text as the unary call`);
      t.deepEqual(joined.tokenIds, unary.token_ids, `${id}: same tokens as the unary call`);
      t.is(unary.final.finish_reason, finals[0]!.final!.finish_reason);
    }
    t.true(interleaved, 'chunks of different requests interleave on the call');
    t.is(s.service.poolState.active, 0);
  },
);

test.serial(
  'speculation on and off give the same tokens through GenerateStream, with fewer verify steps when on',
  async (t) => {
    const s = await server();
    const client = s.client();
    const base = chatRequest('spec', 'Repeat this sentence twice: the quick brown fox jumps over the lazy dog.', 48);
    const on = await collectStream(client.generateStream({ ...base, speculation: { mode: 'MODE_NGRAM' } }));
    const off = await collectStream(client.generateStream({ ...base, speculation: { mode: 'MODE_OFF' } }));
    t.deepEqual(joinChunks(on).tokenIds, joinChunks(off).tokenIds);
    t.is(joinChunks(on).text, joinChunks(off).text);
    const finalOn = on[on.length - 1]!.final!;
    const finalOff = off[off.length - 1]!.final!;
    t.is(finalOff.speculation.draft_tokens, 0);
    t.true(finalOn.speculation.accepted_tokens > 0, 'drafts were accepted on a repetitive prompt');
    t.true(finalOn.speculation.verify_steps < finalOff.speculation.verify_steps);
    t.true(
      on.some((c) => c.token_ids.length > 1),
      'a chunk carries several accepted tokens',
    );
  },
);

test.serial(
  'a cancel message ends that request with finish reason CANCELLED and leaves the others running',
  async (t) => {
    const s = await server();
    const call = s.client().generateBidi({ deadlineMs: 120_000 });
    let cancelSent = false;
    const done = collectBidi(call, (m) => {
      if (!cancelSent && 'chunk' in m && m.chunk.request_id === 'victim') {
        cancelSent = true;
        call.write({ cancel: { request_ids: ['victim', 'no-such-id'] } });
        call.end();
      }
    });
    call.write({ generate: longRequest('victim') });
    call.write({ generate: chatRequest('survivor', QUESTIONS[0]!, 32) });
    const { messages, status } = await done;
    t.is(status.code, GrpcStatus.OK);
    const victim = chunksOf(messages, 'victim');
    const finals = victim.filter((c) => c.final);
    t.is(finals.length, 1);
    t.is(finals[0]!.final!.finish_reason, 'FINISH_REASON_CANCELLED');
    // Tokens, not chunks: a chunk carries every token a verify step accepted.
    const generated = finals[0]!.final!.usage.output_tokens;
    t.true(generated < 200, `stopped long before 2000 tokens, after ${generated}`);
    t.is(generated, joinChunks(victim).tokenIds.length);
    const survivor = chunksOf(messages, 'survivor');
    t.is(survivor.filter((c) => c.final).length, 1);
    t.not(survivor[survivor.length - 1]!.final!.finish_reason, 'FINISH_REASON_CANCELLED');
    t.deepEqual(errorsOf(messages), []);
  },
);

test.serial('a request cancelled by a cancel message reports the time it waited for a slot', async (t) => {
  const s = await startTestServer({ maxActive: 1 });
  try {
    const call = s.client().generateBidi({ deadlineMs: 120_000 });
    let cancelSent = false;
    const done = collectBidi(call, (m) => {
      if (!cancelSent && 'chunk' in m && m.chunk.request_id === 'waited') {
        cancelSent = true;
        call.write({ cancel: { request_ids: ['waited'] } });
        call.end();
      }
    });
    // One slot: 'waited' queues until 'first' has finished, then is cancelled at its first chunk.
    call.write({ generate: longRequest('first', 16) });
    call.write({ generate: longRequest('waited') });
    const { messages, status } = await done;
    t.is(status.code, GrpcStatus.OK);
    const first = chunksOf(messages, 'first').find((c) => c.final)!.final!;
    const waited = chunksOf(messages, 'waited').find((c) => c.final)!.final!;
    t.is(waited.finish_reason, 'FINISH_REASON_CANCELLED');
    t.log(
      `first: total ${first.total_ms.toFixed(1)} ms; waited: queue ${waited.queue_ms.toFixed(1)} ms, total ${waited.total_ms.toFixed(1)} ms`,
    );
    t.true(waited.queue_ms > first.total_ms / 2, 'the queue time covers the wait for the slot');
    t.true(waited.queue_ms < waited.total_ms, 'and the total includes it');
    t.is(waited.first_token_ms, 0);
  } finally {
    await s.close();
  }
});

test.serial('cancelling the bidi call stops its generations within a step and frees their slots', async (t) => {
  const s = await server();
  const call = s.client().generateBidi();
  const seen = new Set<string>();
  const done = collectBidi(call, (m) => {
    if ('chunk' in m) seen.add(m.chunk.request_id);
  });
  for (const id of ['x1', 'x2', 'x3']) call.write({ generate: longRequest(id) });
  t.true(await waitFor(() => seen.size === 3, 30_000), 'all three are generating');
  t.is(s.service.poolState.active, 3);
  call.cancel();
  const t0 = Date.now();
  t.true(await waitFor(() => s.service.poolState.active === 0, 3000), 'slots are freed');
  t.log(`slots freed ${Date.now() - t0} ms after the client cancelled`);
  const { status } = await done;
  t.is(status.code, GrpcStatus.CANCELLED);
});

test.serial('a client that disconnects mid-stream frees its slot', async (t) => {
  const s = await server();
  const client = s.client();
  const stream = client.generateStream(longRequest('gone'));
  stream.on('error', () => {});
  await new Promise<void>((resolve) => stream.once('data', () => resolve()));
  t.is(s.service.poolState.active, 1);
  client.close(); // tears the connection down
  stream.cancel();
  t.true(await waitFor(() => s.service.poolState.active === 0, 3000));
});

test.serial('a deadline stops decoding with DEADLINE_EXCEEDED and frees the slot', async (t) => {
  const s = await server();
  const client = s.client();
  const started = Date.now();
  const error = await grpcError(collectStream(client.generateStream(longRequest('late'), { deadlineMs: 700 })));
  t.is(error.code, GrpcStatus.DEADLINE_EXCEEDED);
  t.true(Date.now() - started < 5000);
  t.true(await waitFor(() => s.service.poolState.active === 0, 2000), 'decoding stopped');
  const unaryError = await grpcError(client.generate(longRequest('late-unary'), { deadlineMs: 500 }));
  t.is(unaryError.code, GrpcStatus.DEADLINE_EXCEEDED);
  t.true(await waitFor(() => s.service.poolState.active === 0, 2000));
});

test.serial('malformed requests get INVALID_ARGUMENT naming the field, an unknown model NOT_FOUND', async (t) => {
  const s = await server();
  const client = s.client();
  const ok = chatRequest('bad', 'hello', 8);
  const cases: Array<[string, GenerateRequestMsg, RegExp, number?]> = [
    ['empty text', { request_id: 'bad', text: '' }, /prompt is missing|text is empty/],
    ['no prompt', { request_id: 'bad', stopping: { max_new_tokens: 4 } }, /prompt/],
    ['empty token ids', { request_id: 'bad', token_ids: { ids: [] } }, /token_ids/],
    ['max_new_tokens above the limit', { ...ok, stopping: { max_new_tokens: 5000 } }, /max_new_tokens/],
    [
      'prompt + max_new_tokens beyond the context',
      { request_id: 'bad', token_ids: { ids: new Array(8000).fill(42) }, stopping: { max_new_tokens: 1000 } },
      /context/,
    ],
    ['top_p 0', { ...ok, sampling: { top_p: 0 } }, /top_p/],
    ['top_p above 1', { ...ok, sampling: { top_p: 1.5 } }, /top_p/],
    ['negative temperature', { ...ok, sampling: { temperature: -1 } }, /temperature/],
    [
      'too many stop sequences',
      { ...ok, stopping: { max_new_tokens: 8, stop_sequences: Array.from({ length: 17 }, (_, i) => `s${i}`) } },
      /stop sequences/,
    ],
    [
      'unknown chat role',
      { request_id: 'bad', messages: { messages: [{ role: 'robot', content: 'hi' }] } },
      /messages\.messages\[0\]\.role/,
    ],
    [
      'empty chat content',
      { request_id: 'bad', messages: { messages: [{ role: 'user', content: '' }] } },
      /messages\.messages\[0\]\.content/,
    ],
    ['no chat messages', { request_id: 'bad', messages: { messages: [] } }, /messages/],
    ['token id outside the vocabulary', { request_id: 'bad', token_ids: { ids: [1, 99_999_999] } }, /vocabulary/],
    ['unknown model', { ...ok, model: 'gpt-9' }, /gpt-9.*smollm2-135m-instruct/, GrpcStatus.NOT_FOUND],
  ];
  for (const [name, request, message, code] of cases) {
    const error = await grpcError(client.generate(request));
    t.is(error.code, code ?? GrpcStatus.INVALID_ARGUMENT, name);
    t.regex(error.details, message, name);
    const streamError = await grpcError(collectStream(client.generateStream(request)));
    t.is(streamError.code, code ?? GrpcStatus.INVALID_ARGUMENT, `${name} (stream)`);
  }
  t.is(s.service.poolState.active, 0, 'no slot was taken by a bad request');
  const named = await client.generate({ ...ok, model: TEST_MODEL_NAME });
  t.true(named.final.usage.output_tokens > 0, 'the served model name is accepted');
});

test.serial('in-band errors on a bidi call: bad request, duplicate id, missing id; the call goes on', async (t) => {
  const s = await server();
  const call = s.client().generateBidi({ deadlineMs: 60_000 });
  let sentDuplicate = false;
  const done = collectBidi(call, (m) => {
    if (!sentDuplicate && 'chunk' in m && m.chunk.request_id === 'dup') {
      sentDuplicate = true;
      call.write({ generate: chatRequest('dup', 'again', 8) });
      call.write({ generate: { ...chatRequest('', 'no id', 8) } });
      call.write({ generate: { request_id: 'bad-top-p', text: 'hi', sampling: { top_p: 2 } } });
      call.write({ generate: { ...chatRequest('elsewhere', 'hi', 8), model: 'nope' } });
      call.write({ generate: chatRequest('after', QUESTIONS[3]!, 16) });
      call.end();
    }
  });
  call.write({ generate: chatRequest('dup', 'Write a long story about a dragon.', 64) });
  const { messages, status } = await done;
  t.is(status.code, GrpcStatus.OK);
  const codes = Object.fromEntries(errorsOf(messages).map((e) => [e.request_id, [e.code, e.reason]]));
  t.deepEqual(codes['dup'], [GrpcStatus.ALREADY_EXISTS, 'DUPLICATE_ID']);
  t.deepEqual(codes[''], [GrpcStatus.INVALID_ARGUMENT, 'VALIDATION']);
  t.deepEqual(codes['bad-top-p'], [GrpcStatus.INVALID_ARGUMENT, 'VALIDATION']);
  t.deepEqual(codes['elsewhere'], [GrpcStatus.NOT_FOUND, 'NOT_FOUND']);
  t.is(chunksOf(messages, 'dup').filter((c) => c.final).length, 1, 'the original request still ends normally');
  t.is(chunksOf(messages, 'after').filter((c) => c.final).length, 1, 'requests after the errors are served');
});

test.serial('a full queue answers RESOURCE_EXHAUSTED at once, unary and in-band', async (t) => {
  const s = await startTestServer({ maxActive: 1, maxQueued: 1 });
  try {
    const client = s.client();
    const running = client.generateStream(longRequest('running'));
    const queued = client.generateStream(longRequest('queued'));
    for (const st of [running, queued]) st.on('error', () => {});
    running.on('data', () => {});
    queued.on('data', () => {});
    t.true(await waitFor(() => s.service.poolState.active === 1 && s.service.poolState.queued === 1, 10_000));
    const t0 = Date.now();
    const error = await grpcError(client.generate(chatRequest('third', 'hi', 4)));
    t.is(error.code, GrpcStatus.RESOURCE_EXHAUSTED);
    t.regex(error.details, /capacity/);
    t.true(Date.now() - t0 < 1000, 'refused at once, not after waiting');
    const call = client.generateBidi();
    const done = collectBidi(call);
    call.write({ generate: chatRequest('fourth', 'hi', 4) });
    call.end();
    const { messages } = await done;
    t.deepEqual(
      errorsOf(messages).map((e) => [e.request_id, e.code, e.reason]),
      [['fourth', GrpcStatus.RESOURCE_EXHAUSTED, 'OVERLOADED']],
    );
    t.is(s.service.poolState.rejected, 2);
    running.cancel();
    queued.cancel();
    t.true(await waitFor(() => s.service.poolState.active === 0 && s.service.poolState.queued === 0, 3000));
  } finally {
    await s.close();
  }
});

test.serial('garbage bytes and oversized messages get an error status and the server keeps serving', async (t) => {
  const s = await startTestServer({ maxReceiveMessageBytes: 4096 });
  try {
    const client = s.client();
    const raw = client.raw as unknown as {
      makeUnaryRequest(
        path: string,
        serialize: (b: Buffer) => Buffer,
        deserialize: (b: Buffer) => Buffer,
        arg: Buffer,
        cb: (e: ServiceError | null) => void,
      ): void;
    };
    const garbage = await new Promise<ServiceError | null>((resolve) =>
      raw.makeUnaryRequest(
        '/llm.v1.TextGeneration/Generate',
        (b) => b,
        (b) => b,
        Buffer.from([0xff, 0xff, 0xff, 0xff, 0x0f, 0x12]),
        resolve,
      ),
    );
    t.truthy(garbage, 'undecodable bytes are refused');
    t.not(garbage!.code, GrpcStatus.OK);
    const big = await grpcError(client.generate({ request_id: 'big', text: 'x'.repeat(10_000) }));
    t.is(big.code, GrpcStatus.RESOURCE_EXHAUSTED);
    const after = await client.generate(chatRequest('after', QUESTIONS[0]!, 8));
    t.true(after.final.usage.output_tokens > 0, 'the server still serves');
  } finally {
    await s.close();
  }
});

test.serial(
  'a slow reader gets backpressure: decoding pauses while the stream is not writable, then completes',
  async (t) => {
    const s = await server();
    // A raw HTTP/2 client that stops reading, with a 1 KiB stream window: grpc-js clients keep
    // acknowledging data while paused, so they cannot show this.
    // Imports (google/api/annotations.proto) resolve against the proto root, as proto-loader's includeDirs do.
    const root = new protobuf.Root();
    root.resolvePath = (_origin, target) => (isAbsolute(target) ? target : join(PROTO_DIR, target));
    root.loadSync(GENERATION_PROTO);
    const ClientMessage = root.lookupType('llm.v1.BidiClientMessage');
    const ServerMessage = root.lookupType('llm.v1.BidiServerMessage');
    const frame = (message: object) => {
      const body = ClientMessage.encode(ClientMessage.fromObject(message)).finish();
      const out = Buffer.alloc(5 + body.length);
      out.writeUInt32BE(body.length, 1);
      out.set(body, 5);
      return out;
    };
    // Events the transport took from the service: it takes the next only once the last is written.
    let produced = 0;
    const generate = s.service.generate;
    s.service.generate = async function* (...args: Parameters<typeof generate>) {
      for await (const event of generate.apply(s.service, args)) {
        produced++;
        yield event;
      }
    };
    const session = http2.connect(`http://${s.address}`, { settings: { initialWindowSize: 1024 } });
    try {
      const stream = session.request({
        ':method': 'POST',
        ':path': '/llm.v1.TextGeneration/GenerateBidi',
        'content-type': 'application/grpc',
        te: 'trailers',
      });
      stream.pause();
      const maxNewTokens = 400;
      const ids = ['slow-1', 'slow-2', 'slow-3'];
      for (const id of ids)
        stream.write(
          frame({
            generate: {
              requestId: id,
              text: 'Count from one to one thousand: one, two, three,',
              stopping: { maxNewTokens, ignoreEos: true },
            },
          }),
        );
      stream.end();
      let last = -1;
      const stalled = await waitFor(
        () => {
          const same = produced > 0 && produced === last;
          last = produced;
          return same;
        },
        30_000,
        1000,
      );
      t.true(stalled, 'the generations block on flow control and stay blocked');
      const producedWhenBlocked = produced;
      await new Promise((r) => setTimeout(r, 1000));
      t.is(produced, producedWhenBlocked, 'nothing more is produced while the reader does not read');
      t.true(producedWhenBlocked < maxNewTokens, 'decoding stopped well before the end');
      t.is(s.service.poolState.active, 3, 'the generations wait, holding their slots');
      const chunks: Buffer[] = [];
      stream.on('data', (d: Buffer) => chunks.push(d));
      const trailers = new Promise<http2.IncomingHttpHeaders>((resolve) => stream.on('trailers', resolve));
      stream.resume();
      await new Promise((r) => stream.on('end', r));
      t.is((await trailers)['grpc-status'], '0');
      const data = Buffer.concat(chunks);
      const outputTokens = new Map<string, number>();
      for (let at = 0; at < data.length; ) {
        const length = data.readUInt32BE(at + 1);
        const message = ServerMessage.toObject(ServerMessage.decode(data.subarray(at + 5, at + 5 + length))) as {
          chunk?: { requestId: string; final?: { usage: { outputTokens: number } } };
        };
        if (message.chunk?.final) outputTokens.set(message.chunk.requestId, message.chunk.final.usage.outputTokens);
        at += 5 + length;
      }
      t.deepEqual(Object.fromEntries(outputTokens), Object.fromEntries(ids.map((id) => [id, maxNewTokens])));
    } finally {
      session.close();
      s.service.generate = generate;
    }
  },
);

test.serial('Tokenize and ModelInfo describe the served model', async (t) => {
  const s = await server();
  const client = s.client();
  const info = await client.modelInfo();
  t.is(info.model, TEST_MODEL_NAME);
  t.is(info.vocab_size, 49152);
  t.true(info.max_context_tokens >= 2048);
  t.true(info.has_chat_template);
  t.true(info.speculation_available);
  t.is(info.max_draft_tokens, 16);
  t.is(info.max_new_tokens_limit, 2048);
  t.is(info.max_active_sequences, 16);
  // What runs: the native runner with its own attention kernel where it is built (always under CI).
  const native = nativeAddon() !== null;
  t.is(info.execution_provider, 'cpu');
  t.is(info.runner, native ? 'native' : 'onnxruntime-node');
  t.is(info.attention, native ? 'native' : 'onnxruntime');
  t.is(info.dtype, 'float32');
  const tok = await client.tokenize({ text: 'Hello world', return_tokens: true });
  t.is(tok.token_count, tok.token_ids.length);
  t.true(tok.token_count >= 2);
  t.true(tok.tokens.join('').includes('Hello world'));
  const chat = await client.tokenize({ messages: { messages: [{ role: 'user', content: 'Hi' }] } });
  t.true(chat.token_count > tok.token_count, 'the chat template adds its tokens');
  const missing = await grpcError(client.modelInfo('nope'));
  t.is(missing.code, GrpcStatus.NOT_FOUND);
  const empty = await grpcError(client.tokenize({}));
  t.is(empty.code, GrpcStatus.INVALID_ARGUMENT);
});
