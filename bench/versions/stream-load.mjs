// node bench/versions/stream-load.mjs PORT STREAMS off|ngram TOKENS: one warm-up pair, then STREAMS concurrent
// GenerateStream calls (chat prompts, ignore_eos); prints the aggregate generated tokens per second.
import grpc from '@grpc/grpc-js';
import loader from '@grpc/proto-loader';
const [port, streams, spec, tokens] = process.argv.slice(2);
const def = loader.loadSync(new URL('../../proto/llm/v1/generation.proto', import.meta.url).pathname, {
  keepCase: true,
  includeDirs: [new URL('../../proto', import.meta.url).pathname],
  longs: Number,
  enums: String,
  defaults: true,
});
const pkg = grpc.loadPackageDefinition(def);
const client = new pkg.llm.v1.TextGeneration(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
const prompts = [
  'Write a short poem about the sea.',
  'Explain how a bicycle works.',
  'List five fruits and their colours.',
  'Describe the water cycle in simple words.',
  'What is the capital of France? Answer in a paragraph.',
  'Write a recipe for pancakes.',
  'Explain photosynthesis.',
  'Tell a story about a dragon.',
];
const one = (i) =>
  new Promise((resolve, reject) => {
    const call = client.GenerateStream({
      request_id: String(i),
      messages: { messages: [{ role: 'user', content: prompts[i % prompts.length] }] },
      stopping: { max_new_tokens: Number(tokens), ignore_eos: true },
      speculation: { mode: spec === 'off' ? 'MODE_OFF' : 'MODE_NGRAM' },
    });
    let n = 0;
    call.on('data', (c) => {
      n += (c.token_ids ?? []).length;
    });
    call.on('end', () => resolve(n));
    call.on('error', reject);
  });
await Promise.all(Array.from({ length: 2 }, (_, i) => one(i))); // warm
const t0 = performance.now();
const counts = await Promise.all(Array.from({ length: Number(streams) }, (_, i) => one(i)));
const s = (performance.now() - t0) / 1000;
const total = counts.reduce((a, b) => a + b, 0);
console.log(
  JSON.stringify({ streams: Number(streams), spec, tokens: total, s: +s.toFixed(3), tokPerS: +(total / s).toFixed(1) }),
);
client.close();
