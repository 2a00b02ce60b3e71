/**
 * The OpenAI-compatible HTTP API (issue 32) against the official Python `openai` client (installed
 * with pip into the cache by tools/python-openai.ts), on loopback: models, a greedy chat equal to
 * the gRPC result, the same streamed with usage, n = 2 seeded samples equal to the npm client's,
 * and a bad request's 400.
 */
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import test from 'ava';
import OpenAI from 'openai';
import { projectRoot } from '../src/paths.js';
import { SILENT_LOGGER } from '../src/log.js';
import { startOpenAiServer } from '../src/transport/openai/openai-server.js';
import { ensurePythonOpenai } from '../tools/python-openai.js';
import { startTestServer, TEST_MODEL_NAME } from './support/grpc-server.js';

const QUESTION = 'Name three primary colors.';

interface PythonResult {
  version: string;
  models: string[];
  chat: { text: string; finish_reason: string; completion_tokens: number };
  stream: { text: string; finish_reason: string; completion_tokens: number };
  samples: string[];
  bad: { status: number; message: string } | 'accepted';
}

test.serial('the Python openai client: models, chat equal to gRPC, streamed, seeded samples, a 400', async (t) => {
  const { python, env } = ensurePythonOpenai();
  const s = await startTestServer({ maxActive: 4, maxQueued: 8 });
  const http = await startOpenAiServer(s.service, { host: '127.0.0.1', port: 0 }, SILENT_LOGGER);
  try {
    const baseUrl = `http://127.0.0.1:${http.port}/v1`;
    const { stdout } = await promisify(execFile)(
      python,
      [join(projectRoot(), 'test/fixtures/openai_client.py'), baseUrl, TEST_MODEL_NAME, QUESTION],
      { env, encoding: 'utf8', timeout: 120_000 },
    );
    const py = JSON.parse(stdout) as PythonResult;
    t.log(`python openai ${py.version}`);
    t.deepEqual(py.models, [TEST_MODEL_NAME]);

    const grpc = await s.client().generate({
      request_id: 'python-reference',
      messages: { messages: [{ role: 'user', content: QUESTION }] },
      stopping: { max_new_tokens: 24 },
    });
    t.is(py.chat.text, grpc.text);
    t.is(py.chat.completion_tokens, grpc.final.usage.output_tokens);
    t.is(py.stream.text, grpc.text);
    t.is(py.stream.finish_reason, py.chat.finish_reason);
    t.is(py.stream.completion_tokens, py.chat.completion_tokens);

    const node = new OpenAI({ baseURL: baseUrl, apiKey: 'unused', maxRetries: 0 });
    const samples = await node.chat.completions.create({
      model: TEST_MODEL_NAME,
      messages: [{ role: 'user', content: QUESTION }],
      max_tokens: 12,
      n: 2,
      seed: 5,
      temperature: 0.9,
    });
    t.deepEqual(
      py.samples,
      [...samples.choices].sort((a, b) => a.index - b.index).map((c) => c.message.content),
    );

    t.not(py.bad, 'accepted');
    if (py.bad !== 'accepted') {
      t.is(py.bad.status, 400);
      t.regex(py.bad.message, /top_p/);
    }
  } finally {
    await http.close();
    await s.close();
  }
});
