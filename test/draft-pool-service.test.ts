/**
 * Shared draft pools and the prefix cache on the real model through gRPC (issue 34): a request
 * that says again what an earlier one of its scope said drafts it from the pool and starts from
 * its cached prompt KV, with the output unchanged (greedy and seeded sampling, against speculation
 * off); scopes are the API key and the salt, so another tenant or another salt gets nothing from
 * either, and a request that opts out neither uses nor feeds them.
 */
import test from 'ava';
import type { GenerateRequestMsg, GenerateResponseMsg } from '../src/transport/grpc/messages.js';
import { startTestServer, type TestServer } from './support/grpc-server.js';

const KEY_A = 'tenant-a-key-0123456789';
const KEY_B = 'tenant-b-key-9876543210';
const PROMPT = 'Write a Python function that returns the n-th Fibonacci number, with a docstring and a loop.';

let server: TestServer | undefined;
const started = () => startTestServer({ apiKeys: [KEY_A, KEY_B] }).then((s) => (server = s));
test.after.always(async () => {
  await server?.close();
});

async function generate(
  key: string,
  cache: GenerateRequestMsg['cache'],
  extra: Partial<GenerateRequestMsg> = {},
): Promise<GenerateResponseMsg> {
  const s = server ?? (await started());
  return s.client({}, { apiKey: key }).generate({
    messages: { messages: [{ role: 'user', content: PROMPT }] },
    stopping: { max_new_tokens: 96 },
    ...(cache !== undefined ? { cache } : {}),
    ...extra,
  });
}

test.serial('a repeat drafts from its scope pool; the output is the one speculation off gives', async (t) => {
  const reference = await generate(KEY_A, { off: true }, { speculation: { mode: 'MODE_OFF' } });
  const first = await generate(KEY_A, { salt: 'greedy' });
  t.is(first.text, reference.text);
  t.is(first.final.speculation.pool_draft_tokens, 0, 'a new scope has nothing to draft from');
  const again = await generate(KEY_A, { salt: 'greedy' });
  t.is(again.text, reference.text);
  const s = again.final.speculation;
  t.log(JSON.stringify({ first: first.final.speculation, again: s, outputTokens: again.final.usage.output_tokens }));
  t.true(s.pool_accepted_tokens > again.final.usage.output_tokens / 2, 'most of the repeat came from the pool');
  t.true(s.pool_accepted_tokens <= s.accepted_tokens && s.pool_draft_tokens <= s.draft_tokens);
  t.true(s.verify_steps < first.final.speculation.verify_steps, 'fewer forwards than the first time');
});

test.serial('seeded sampling drafts from the pool and keeps its output', async (t) => {
  const sampling = { temperature: 0.8, top_p: 0.95, seed: '7' };
  const reference = await generate(KEY_A, { off: true }, { sampling, speculation: { mode: 'MODE_OFF' } });
  await generate(KEY_A, { salt: 'sampled' }, { sampling });
  const again = await generate(KEY_A, { salt: 'sampled' }, { sampling });
  t.is(again.text, reference.text);
  t.true(again.final.speculation.pool_accepted_tokens > 0);
});

test.serial('another tenant, another salt and an opted-out request get nothing from the pool', async (t) => {
  await generate(KEY_A, { salt: 'private' });
  const mine = await generate(KEY_A, { salt: 'private' });
  t.true(mine.final.speculation.pool_draft_tokens > 0, 'the scope has the text');
  t.true(mine.final.usage.cached_input_tokens > 0, "the scope's prompt KV is cached");
  const otherTenant = await generate(KEY_B, { salt: 'private' });
  t.is(otherTenant.final.speculation.pool_draft_tokens, 0, "tenant B drafts nothing from tenant A's text");
  t.is(otherTenant.final.usage.cached_input_tokens, 0, "tenant B's prompt is not served from tenant A's KV");
  t.is(otherTenant.text, mine.text);
  const otherSalt = await generate(KEY_A, { salt: 'elsewhere' });
  t.is(otherSalt.final.speculation.pool_draft_tokens, 0);
  t.is(otherSalt.final.usage.cached_input_tokens, 0);
  const optedOut = await generate(KEY_A, { salt: 'private', off: true });
  t.is(optedOut.final.speculation.pool_draft_tokens, 0, 'off: no drafts from the pool');
  t.is(optedOut.final.usage.cached_input_tokens, 0, 'off: no cached prefix');
  // off also keeps a request out of the pool: a scope fed only by opted-out requests stays empty.
  await generate(KEY_A, { salt: 'never-fed', off: true });
  const unfed = await generate(KEY_A, { salt: 'never-fed' });
  t.is(unfed.final.speculation.pool_draft_tokens, 0);
});
