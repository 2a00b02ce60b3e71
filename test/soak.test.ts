/**
 * A short soak (bench/soak.ts, the driver `npm run load` runs for minutes): concurrent bidi calls
 * with in-band cancels, client disconnects mid-stream, unary calls past their deadlines, above the
 * server's capacity — every generation the client did not abandon ends with exactly one terminal
 * message, nothing fails that the client did not cause, no slot leaks, and the server still
 * answers the same greedy request with the same text.
 */
import test from 'ava';
import { runSoak } from '../bench/soak.js';
import { startTestServer, waitFor } from './support/grpc-server.js';

test.serial('soak: random cancels, disconnects and deadlines above capacity leave a healthy server with every terminal accounted for', async (t) => {
  const s = await startTestServer({ maxActive: 2, maxQueued: 2 });
  try {
    const client = s.client();
    const probe = { request_id: 'probe', messages: { messages: [{ role: 'user' as const, content: 'Name two oceans.' }] }, stopping: { max_new_tokens: 24 } };
    const before = await client.generate(probe);
    const result = await runSoak({ address: s.address, durationMs: 20_000, workers: 5, seed: 11, maxNewTokensMax: 32 });
    t.log(JSON.stringify({ calls: result.calls, generations: result.generations, outputTokens: result.outputTokens }));
    t.deepEqual(result.unexpected, []);
    t.true(result.generations.completed > 0);
    t.true(result.calls.bidiDisconnected + result.calls.streamDisconnected > 0, 'some calls were cut by the client');
    t.true(await waitFor(() => s.service.poolState.active === 0 && s.service.poolState.queued === 0, 10_000), 'no slot leaked');
    t.is(await client.health(''), 'SERVING');
    const after = await client.generate({ ...probe, request_id: 'probe-after' });
    t.is(after.text, before.text);
  } finally {
    await s.close();
  }
});
