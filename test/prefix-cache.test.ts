/**
 * The prefix KV cache (issue 34) on the real model: a request whose prompt starts like an earlier
 * one of its scope copies that prefix's KV and prefills the rest, and gets exactly what a cold
 * request gets — the same tokens and bitwise the same log-probabilities, greedy and seeded, with
 * the split at many points; other scopes never hit; the cache stays within its bound.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import test from 'ava';
import { DEFAULT_SPECULATION, type GenerateRequest, NO_SPECULATION } from '../src/contract.js';
import { createEngine } from '../src/engine/create-engine.js';
import type { Engine } from '../src/engine/engine.js';
import { PrefixCache } from '../src/engine/prefix-cache.js';
import { projectRoot } from '../src/paths.js';
import type { DeviceDecoderModel } from '../src/runtime/device-decoder.js';
import type { DecoderSequence } from '../src/runtime/types.js';
import type { TokenLogprob } from '../src/sampling/logprobs.js';
import { convertedVariant, defaultModelDir, TEST_FORWARD_COST } from './support/default-model.js';

const DOCUMENT = (
  JSON.parse(readFileSync(join(projectRoot(), 'bench/prompts/document-qa.json'), 'utf8')) as { prompt: string }[]
)[0]!.prompt;
const QUESTIONS = ['What is the main point?', 'List two details.', 'Who is it for?', 'Summarize it in one line.'];

let shared: Promise<Engine> | undefined;
const engine = (prefixCacheBytes?: number) =>
  prefixCacheBytes === undefined ? (shared ??= open()) : open(prefixCacheBytes);
async function open(prefixCacheBytes?: number): Promise<Engine> {
  return createEngine(
    await defaultModelDir(),
    { executionProvider: 'cpu', intraOpThreads: 0, kvCapacity: 2048 },
    {
      forwardCost: { mode: 'fixed', table: TEST_FORWARD_COST },
      ...(prefixCacheBytes !== undefined ? { prefixCacheBytes } : {}),
    },
  );
}

interface Output {
  ids: number[];
  logprobs: TokenLogprob[];
  cached?: number;
}

async function run(
  e: Engine,
  content: string,
  extra: Partial<GenerateRequest> = {},
  system: string = DOCUMENT,
): Promise<Output> {
  const out: Output = { ids: [], logprobs: [] };
  for await (const event of e.generate({
    prompt: {
      kind: 'messages',
      messages: [
        { role: 'system', content: system },
        { role: 'user', content },
      ],
    },
    maxNewTokens: 24,
    logprobs: { top: 3 },
    ...extra,
  })) {
    if (event.type === 'delta') {
      out.ids.push(...event.tokenIds);
      out.logprobs.push(...(event.logprobs ?? []));
    } else out.cached = event.cachedPromptTokens ?? 0;
  }
  return out;
}

test.serial('a cached prefix gives the tokens and bitwise the log-probabilities of a cold prefill', async (t) => {
  const e = await engine();
  const cache = e.prefixCache!;
  t.truthy(cache, 'the CPU engine has a prefix cache');
  for (const speculation of [NO_SPECULATION, DEFAULT_SPECULATION]) {
    for (const sampling of [undefined, { temperature: 0.8, topP: 0.95, topK: 0, repetitionPenalty: 1, seed: 11 }]) {
      const scope = `exact-${speculation.mode}-${sampling === undefined ? 'greedy' : 'sampled'}`;
      for (const question of QUESTIONS) {
        const extra = { speculation, ...(sampling !== undefined ? { sampling } : {}) };
        const cold = await run(e, question, extra);
        const hitsBefore = cache.hits;
        const warm = await run(e, question, { ...extra, cacheScope: scope });
        t.deepEqual(warm.ids, cold.ids, `${scope}: ${question}`);
        t.deepEqual(warm.logprobs, cold.logprobs, `${scope}: ${question} (log-probabilities bitwise)`);
        t.is(cold.cached, 0);
        if (question !== QUESTIONS[0]) {
          t.is(cache.hits, hitsBefore + 1, 'the shared document came from the cache');
          t.true(warm.cached! > 300, `${warm.cached} prompt tokens from the cache`);
        }
      }
    }
  }
  t.true(cache.hitTokens > 1000, `${cache.hitTokens} prompt tokens not prefilled`);
});

test.serial('split at many points: prompts sharing prefixes of every length agree with cold ones', async (t) => {
  const e = await engine();
  const words = DOCUMENT.split(' ');
  const base = `split-${Date.now()}`;
  // The first request caches the whole document; each later prompt keeps k words of it, then differs.
  await run(e, 'Start.', { cacheScope: base });
  for (const k of [7, 19, 33, 58, 90, 131, 170]) {
    const content = `${words.slice(0, k).join(' ')} — now answer: what comes next?`;
    const prompt: GenerateRequest['prompt'] = { kind: 'messages', messages: [{ role: 'user', content }] };
    const cold: Output = { ids: [], logprobs: [] };
    const warm: Output = { ids: [], logprobs: [] };
    for (const [out, scope] of [
      [cold, undefined],
      [warm, base],
    ] as const) {
      for await (const event of e.generate({
        prompt,
        maxNewTokens: 12,
        logprobs: { top: 2 },
        ...(scope !== undefined ? { cacheScope: scope } : {}),
      })) {
        if (event.type === 'delta') {
          out.ids.push(...event.tokenIds);
          out.logprobs.push(...(event.logprobs ?? []));
        }
      }
    }
    t.deepEqual(warm, cold, `prefix of ${k} words`);
  }
});

test.serial('another scope never hits; the cache stays within its bound and evicts', async (t) => {
  const e = await engine();
  const cache = e.prefixCache!;
  await run(e, QUESTIONS[0]!, { cacheScope: 'tenant-a' });
  const hits = cache.hits;
  await run(e, QUESTIONS[1]!, { cacheScope: 'tenant-b' });
  t.is(cache.hits, hits, "tenant b's prompt found nothing of tenant a's");
  await run(e, QUESTIONS[2]!, { cacheScope: 'tenant-a' });
  t.is(cache.hits, hits + 1);

  const small = await open(80 * 2 ** 20);
  try {
    const c = small.prefixCache!;
    for (let i = 0; i < 6; i++) await run(small, QUESTIONS[0]!, { cacheScope: `many-${i}` });
    t.true(c.bytesHeld <= 80 * 2 ** 20, `${c.bytesHeld} bytes held`);
    t.true(c.evictions > 0);
    t.true(c.size >= 1);
  } finally {
    await small.dispose();
  }
});

/** A stand-in sequence: the cache only keeps, copies from (not here) and disposes them. */
function keptSequence(): DecoderSequence & { disposed: boolean } {
  const s = {
    length: 0,
    capacity: 4096,
    disposed: false,
    forward: () => Promise.reject(new Error('unused')),
    rewind: () => {},
    dispose: () => {
      s.disposed = true;
    },
  };
  return s;
}

test('with prefill chunks (the device path), a hit ends on a chunk boundary within what its source prefilled', (t) => {
  const cache = new PrefixCache(10_000, { bytesPerSequence: 1_000, chunkTokens: 8 });
  const source = Int32Array.from({ length: 40 }, (_, i) => i);
  // Positions [0, 30) came from the prompt's prefill, [30, 40) from decoding.
  cache.retain('s', source, 30, keptSequence());
  t.is(cache.bytesHeld, 1_000, 'a whole KV set whatever the length');
  const prompt = (shared: number, length: number) => Array.from({ length }, (_, i) => (i < shared ? i : 1_000 + i));
  t.is(cache.lookup('s', prompt(40, 50))?.length, 24, 'the generated part and the partial chunk are not reused');
  t.is(cache.lookup('s', prompt(21, 50))?.length, 16);
  t.is(cache.lookup('s', prompt(15, 50)), undefined, 'shorter than a chunk: a miss');
  t.is(cache.lookup('other', prompt(40, 50)), undefined);
  // Too short a prefill to serve anything: disposed at once.
  const short = keptSequence();
  cache.retain('s', source.slice(0, 20), 7, short);
  t.true(short.disposed);
  t.is(cache.size, 1);
  // Without chunks (host KV) the whole shared prefix, generated part included.
  const host = new PrefixCache(1 << 30, { bytesPerPosition: 100 });
  host.retain('s', source, 30, keptSequence());
  t.is(host.lookup('s', prompt(40, 50))?.length, 40);
  t.is(host.bytesHeld, (40 + 256) * 100);
});

test.serial(
  'on the device path (emulated, 2 batch places): a hit starts on a prefill chunk boundary, gives the cold tokens and bitwise log-probabilities, and the kept sequence gives its batch place back',
  async (t) => {
    const single = await convertedVariant({ dtype: 'float16' });
    const batch2 = await convertedVariant({ dtype: 'float16', slots: 2 });
    const e = await createEngine(
      single,
      {
        executionProvider: 'cpu',
        intraOpThreads: 0,
        kvCapacity: 2048,
        batchModelDir: [batch2],
        experimental: { deviceRun: 'emulate' },
      },
      { forwardCost: { mode: 'fixed', table: TEST_FORWARD_COST }, prefixCacheBytes: 256 * 2 ** 20 },
    );
    try {
      const model = e.model as unknown as DeviceDecoderModel;
      const chunk = e.info.prefixReuseChunkTokens!;
      t.is(chunk, 512);
      t.true(e.info.kvBytesPerSequence! > 0 && e.info.kvBytesPerPosition === undefined);
      // Two documents: a system prompt past one prefill chunk.
      const second = (
        JSON.parse(readFileSync(join(projectRoot(), 'bench/prompts/summarization.json'), 'utf8')) as {
          prompt: string;
        }[]
      )[0]!.prompt;
      const system = `${DOCUMENT}\n\n${second}`;
      for (const speculation of [NO_SPECULATION, DEFAULT_SPECULATION]) {
        const scope = `device-${speculation.mode}`;
        await run(e, QUESTIONS[0]!, { speculation, cacheScope: scope }, system);
        const slots = [model.createSequence(), model.createSequence()] as unknown as ({
          slot: number;
        } & DecoderSequence)[];
        t.deepEqual(
          slots.map((s) => s.slot),
          [0, 1],
          'the kept sequence holds no batch place',
        );
        for (const s of slots) s.dispose();
        for (const question of QUESTIONS.slice(1, 3)) {
          const cold = await run(e, question, { speculation }, system);
          const warm = await run(e, question, { speculation, cacheScope: scope }, system);
          t.deepEqual(warm.ids, cold.ids, `${scope}: ${question}`);
          t.deepEqual(warm.logprobs, cold.logprobs, `${scope}: ${question} (log-probabilities bitwise)`);
          t.true(warm.cached! >= chunk && warm.cached! % chunk === 0, `${warm.cached} cached prompt tokens`);
        }
      }
    } finally {
      await e.dispose();
    }
  },
);

test.after.always(async () => {
  await (await shared)?.dispose();
});
