/**
 * Batched forwards (--batch-slots): concurrent generations share K-slot forwards, and every
 * output equals the same request run alone on the single-sequence graph — greedy with and without
 * speculation, seeded sampling — because attention stays per sequence and every other op works
 * row by row. The real model, the real K-slot graph.
 */
import test, { type ExecutionContext } from 'ava';
import { DEFAULT_GRAPH_OPTIONS } from '../src/convert/decoder-graph.js';
import { createEngine } from '../src/engine/create-engine.js';
import { DEFAULT_SPECULATION, type GenerateRequest, NO_SPECULATION } from '../src/contract.js';
import type { Engine } from '../src/engine/engine.js';
import { ensureDefaultModel } from '../src/registry/model-cache.js';
import { cpuEngine, defaultModelDir, TEST_FORWARD_COST } from './support/default-model.js';
import { describeDivergence } from './support/divergence.js';

async function tokens(engine: Engine, request: GenerateRequest): Promise<number[]> {
  const out: number[] = [];
  for await (const e of engine.generate(request)) if (e.type === 'delta') out.push(...e.tokenIds);
  return out;
}

const REQUESTS: GenerateRequest[] = [
  {
    prompt: { kind: 'text', text: 'Rename the variable x to total: function f(x) { return x * 2 + x; }', chat: true },
    maxNewTokens: 40,
  },
  {
    prompt: { kind: 'text', text: 'Repeat twice: the quick brown fox jumps over the lazy dog.', chat: true },
    maxNewTokens: 48,
  },
  { prompt: { kind: 'text', text: 'Name three colors.', chat: true }, maxNewTokens: 24, speculation: NO_SPECULATION },
  {
    prompt: { kind: 'text', text: 'What is the capital of France?', chat: true },
    maxNewTokens: 32,
    speculation: { ...DEFAULT_SPECULATION, draftLength: 'fixed' },
  },
  {
    prompt: { kind: 'text', text: 'Once upon a time' },
    maxNewTokens: 32,
    sampling: { temperature: 0.8, topK: 40, topP: 0.95, repetitionPenalty: 1.1, seed: 3 },
  },
  // Longer than a batch takes: its prefill runs alone while the others decode.
  {
    prompt: {
      kind: 'text',
      text: `Summarize in one sentence: ${'The committee met on Tuesday to discuss the budget. '.repeat(12)}`,
      chat: true,
    },
    maxNewTokens: 24,
  },
];

/**
 * Each batched output equals the same request run alone; a difference names its position and the
 * top-2 logit gap. Alone means with the attention kernel the batched engine runs (the native
 * runner's own wherever the addon is built).
 */
async function assertEachAsAlone(t: ExecutionContext, batched: Engine, outputs: readonly number[][]): Promise<void> {
  const single = await cpuEngine(batched.info.attention);
  t.is(single.info.attention, batched.info.attention);
  for (const [i, request] of REQUESTS.entries()) {
    const alone = await tokens(single, request);
    // Sampling is exact too (same seed, same logits); the gap is only meaningful for greedy rows.
    if (JSON.stringify(outputs[i]) !== JSON.stringify(alone))
      t.fail(`request ${i}: ${await describeDivergence(single, request, alone, outputs[i]!)}`);
    else t.pass();
  }
}

const engines: Engine[] = [];
test.after.always(async () => {
  for (const e of engines) await e.dispose();
});

// 512: prompts prefill alone; 32: prefill chunks join the batches too.
for (const prefillChunk of [512, 32]) {
  test.serial(
    `concurrent generations share K-slot forwards and each output equals its unbatched run (prefill chunks of ${prefillChunk})`,
    async (t) => {
      const batchDir = await ensureDefaultModel({ ...DEFAULT_GRAPH_OPTIONS, slots: 4 });
      const batched = await createEngine(
        await defaultModelDir(),
        {
          executionProvider: 'cpu',
          intraOpThreads: 0,
          kvCapacity: 2048,
          batchModelDir: batchDir,
          experimental: { batchPrefillChunkTokens: prefillChunk },
        },
        { forwardCost: { mode: 'fixed', table: TEST_FORWARD_COST } },
      );
      engines.push(batched);
      const outputs = await Promise.all(REQUESTS.map((r) => tokens(batched, r)));
      const counts = batched.model.batchExecutor!.counts;
      t.log(
        `forwards: ${counts.batched} batched (carrying ${counts.batchedSequences} sequence-forwards), ${counts.alone} alone`,
      );
      t.true(counts.batched > 10, 'concurrent generations should have shared forwards');
      t.true(counts.batchedSequences / counts.batched > 2, 'batches should carry more than two sequences on average');
      await assertEachAsAlone(t, batched, outputs);
    },
  );
}

test.serial(
  'with a ladder of graphs (2 and 4 slots), each batch runs on the smallest that holds it, outputs unchanged',
  async (t) => {
    const ladder = [
      await ensureDefaultModel({ ...DEFAULT_GRAPH_OPTIONS, slots: 2 }),
      await ensureDefaultModel({ ...DEFAULT_GRAPH_OPTIONS, slots: 4 }),
    ];
    const batched = await createEngine(
      await defaultModelDir(),
      { executionProvider: 'cpu', intraOpThreads: 0, kvCapacity: 2048, batchModelDir: ladder },
      { forwardCost: { mode: 'fixed', table: TEST_FORWARD_COST } },
    );
    engines.push(batched);
    t.is(batched.info.batchSlots, 4);
    // Six generations: batches of 4 + 2 while all run, of 3 or 2 as the short ones finish.
    const outputs = await Promise.all(REQUESTS.map((r) => tokens(batched, r)));
    const { byWidth } = batched.model.batchExecutor!.counts;
    t.log(`batched forwards by graph: ${JSON.stringify(byWidth)}`);
    t.true((byWidth[2] ?? 0) > 0 && (byWidth[4] ?? 0) > 0, `both graphs should have run: ${JSON.stringify(byWidth)}`);
    await assertEachAsAlone(t, batched, outputs);
  },
);

test.serial('a batch model of other weights or a single-sequence graph is refused with the file named', async (t) => {
  const { loadDecoderModel } = await import('../src/runtime/load-model.js');
  const dir = await defaultModelDir();
  await t.throwsAsync(
    loadDecoderModel(dir, { executionProvider: 'cpu', intraOpThreads: 1, kvCapacity: 256, batchModelDir: dir }),
    { message: /anpd-model\.json.*not a batch graph/ },
  );
});
