import test from 'ava';
import { runGhz } from './support/ghz.js';
import { startTestServer } from './support/grpc-server.js';

const REQUEST =
  '"messages":{"messages":[{"role":"user","content":"Name three colors."}]},"stopping":{"max_new_tokens":12}';

test.serial('ghz drives unary, server-streaming and multiplexed bidi calls through reflection, all OK', async (t) => {
  const s = await startTestServer({ maxActive: 8, maxQueued: 32 });
  try {
    const unary = await runGhz([
      '--call',
      'llm.v1.TextGeneration.Generate',
      '-c',
      '4',
      '--connections',
      '2',
      '-n',
      '8',
      '-t',
      '120s',
      '-d',
      `{"request_id":"{{.UUID}}",${REQUEST}}`,
      s.address,
    ]);
    t.is(unary.count, 8);
    t.deepEqual(unary.statusCodeDistribution, { OK: 8 });
    const stream = await runGhz([
      '--call',
      'llm.v1.TextGeneration.GenerateStream',
      '-c',
      '2',
      '-n',
      '4',
      '-t',
      '120s',
      '-d',
      `{"request_id":"{{.UUID}}",${REQUEST}}`,
      s.address,
    ]);
    t.deepEqual(stream.statusCodeDistribution, { OK: 4 });
    // Each bidi call sends 3 generations with fresh ids, half-closes, and completes only when the
    // server ends the call after all three finished.
    const bidi = await runGhz([
      '--call',
      'llm.v1.TextGeneration.GenerateBidi',
      '-c',
      '2',
      '-n',
      '4',
      '-t',
      '120s',
      '--stream-dynamic-messages',
      '--stream-call-count',
      '3',
      '-d',
      `{"generate":{"request_id":"{{newUUID}}",${REQUEST}}}`,
      s.address,
    ]);
    t.deepEqual(bidi.statusCodeDistribution, { OK: 4 });
    t.is(s.service.poolState.active, 0);
  } finally {
    await s.close();
  }
});

test.serial('under ghz overload the server sheds load with RESOURCE_EXHAUSTED and serves the rest', async (t) => {
  const s = await startTestServer({ maxActive: 1, maxQueued: 1 });
  try {
    const report = await runGhz([
      '--call',
      'llm.v1.TextGeneration.Generate',
      '-c',
      '6',
      '-n',
      '12',
      '-t',
      '120s',
      '--count-errors',
      '-d',
      `{"request_id":"{{.UUID}}",${REQUEST}}`,
      s.address,
    ]);
    t.is(report.count, 12);
    const codes = report.statusCodeDistribution;
    t.true((codes['ResourceExhausted'] ?? 0) > 0, JSON.stringify(codes));
    t.true((codes['OK'] ?? 0) > 0, JSON.stringify(codes));
    t.is((codes['OK'] ?? 0) + (codes['ResourceExhausted'] ?? 0), 12, JSON.stringify(codes));
    t.true(s.service.poolState.rejected > 0);
  } finally {
    await s.close();
  }
});
