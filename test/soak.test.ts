/**
 * A short soak (tools/soak.ts, the driver `npm run load` runs for minutes): concurrent bidi calls
 * with in-band cancels, client disconnects mid-stream, unary calls past their deadlines, above the
 * server's capacity — every generation the client did not abandon ends with exactly one terminal
 * message, nothing fails that the client did not cause, no slot leaks, and the server still
 * answers the same greedy request with the same text. The same over the OpenAI-compatible HTTP API
 * (tools/http-soak.ts, the official openai client): dropped streams and abandoned calls.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import test from 'ava';
import OpenAI from 'openai';
import { WORKER_HEARTBEAT_MS } from '../src/engine/worker-protocol.js';
import { projectRoot } from '../src/paths.js';
import { replicaKiller, runSoak } from '../tools/soak.js';
import { runHttpSoak } from '../tools/http-soak.js';
import { SILENT_LOGGER } from '../src/log.js';
import { startOpenAiServer } from '../src/transport/openai/openai-server.js';
import { EnginePool } from '../src/engine/engine-pool.js';
import type { ReplicaEvent } from '../src/engine/replica-set.js';
import { defaultModelDir, TEST_FORWARD_COST } from './support/default-model.js';
import { startTestServer, TEST_MODEL_NAME, waitFor } from './support/grpc-server.js';

/** The same greedy request before and after a soak: its text must not change. */
const PROBE = {
  request_id: 'probe',
  messages: { messages: [{ role: 'user' as const, content: 'Name two oceans.' }] },
  stopping: { max_new_tokens: 24 },
};

test.serial(
  'soak: random cancels, disconnects and deadlines above capacity leave a healthy server with every terminal accounted for',
  async (t) => {
    const s = await startTestServer({ maxActive: 2, maxQueued: 2 });
    try {
      const client = s.client();
      const probe = PROBE;
      const before = await client.generate(probe);
      const result = await runSoak({
        address: s.address,
        durationMs: 20_000,
        workers: 5,
        seed: 11,
        maxNewTokensMax: 32,
      });
      t.log(
        JSON.stringify({ calls: result.calls, generations: result.generations, outputTokens: result.outputTokens }),
      );
      t.deepEqual(result.unexpected, []);
      t.true(result.generations.completed > 0);
      t.true(result.calls.bidiDisconnected + result.calls.streamDisconnected > 0, 'some calls were cut by the client');
      t.true(
        await waitFor(() => s.service.poolState.active === 0 && s.service.poolState.queued === 0, 10_000),
        'no slot leaked',
      );
      t.is(await client.health(''), 'SERVING');
      const after = await client.generate({ ...probe, request_id: 'probe-after' });
      t.is(after.text, before.text);
    } finally {
      await s.close();
    }
  },
);

test.serial(
  'soak with replica kills: a model replica process SIGKILLed every 4 s; only its generations end UNAVAILABLE, every terminal is accounted for, the replicas come back, memory stays bounded',
  async (t) => {
    const pool = await EnginePool.create(
      await defaultModelDir(),
      { executionProvider: 'cpu', intraOpThreads: 1, kvCapacity: 1024 },
      {
        replicas: 2,
        isolation: 'process',
        forwardCost: { mode: 'fixed', table: TEST_FORWARD_COST },
        supervision: { restartBackoffMs: 100, restartsPerMinuteMax: 30 },
        // Small: kept prompts are evicted often, so the eviction counters move across the kills.
        prefixCacheBytes: 32 * 2 ** 20,
      },
    );
    const events: ReplicaEvent[] = [];
    pool.onReplicaEvent((e) => events.push(e));
    const s = await startTestServer({ engine: pool, replicas: pool, maxActive: 4, maxQueued: 4 });
    try {
      const client = s.client();
      const probe = PROBE;
      const before = await client.generate(probe);
      const rssStart = process.memoryUsage().rss;
      // The cache counters, as a scrape would read them, must never go down when a replica is replaced.
      const counters: number[][] = [];
      const sampler = setInterval(() => {
        const c = pool.cacheStats();
        counters.push([c.prefixCacheEvictions, c.draftPoolEvictedTokens]);
      }, 100);
      const result = await runSoak({
        address: s.address,
        durationMs: 20_000,
        workers: 6,
        seed: 23,
        maxNewTokensMax: 48,
        replicaKills: { everyMs: 4_000, kill: replicaKiller(process.pid) },
      });
      clearInterval(sampler);
      for (let i = 1; i < counters.length; i++) {
        t.true(counters[i]![0]! >= counters[i - 1]![0]!, `prefix-cache evictions went down at sample ${i}`);
        t.true(counters[i]![1]! >= counters[i - 1]![1]!, `pool evictions went down at sample ${i}`);
      }
      const rssGrowthMiB = (process.memoryUsage().rss - rssStart) / 2 ** 20;
      t.log(
        JSON.stringify({
          calls: result.calls,
          generations: result.generations,
          kills: result.replicaKills.length,
          events: events.map((e) => e.kind),
          rssGrowthMiB: Math.round(rssGrowthMiB),
          prefixCacheEvictions: counters.at(-1)?.[0],
        }),
      );
      t.deepEqual(result.unexpected, []);
      t.true(result.replicaKills.length >= 3, `${result.replicaKills.length} kills`);
      t.true(result.generations.replicaFailed > 0, 'some generations were on a killed replica');
      t.true(result.generations.completed > 0);
      t.true(await waitFor(() => pool.capacity.up === 2, 30_000), 'every replica back');
      t.is(events.filter((e) => e.kind === 'died').length, result.replicaKills.length, 'each kill seen as a death');
      t.true(events.filter((e) => e.kind === 'restarted').length >= result.replicaKills.length);
      t.true(
        await waitFor(() => s.service.poolState.active === 0 && s.service.poolState.queued === 0, 10_000),
        'no slot leaked',
      );
      t.is(await client.health(''), 'SERVING');
      const after = await client.generate({ ...probe, request_id: 'probe-after' });
      t.is(after.text, before.text);
      t.true(rssGrowthMiB < 200, `server RSS grew ${rssGrowthMiB.toFixed(0)} MiB`);
    } finally {
      await s.close();
      await pool.dispose();
    }
  },
);

test.serial(
  'soak with varied prompts under many cache salts: the prefix cache and draft pools fill, hit and evict under cancels and disconnects, within their bounds, and change no output',
  async (t) => {
    const prefixCacheBytes = 48 * 2 ** 20; // ~1 kept prompt of these documents: every few requests evict
    const pool = await EnginePool.create(
      await defaultModelDir(),
      { executionProvider: 'cpu', intraOpThreads: 0, kvCapacity: 2048 },
      { replicas: 1, forwardCost: { mode: 'fixed', table: TEST_FORWARD_COST }, prefixCacheBytes },
    );
    const s = await startTestServer({ engine: pool, replicas: pool, maxActive: 2, maxQueued: 2 });
    try {
      const client = s.client();
      const probe = { ...PROBE, cache: { salt: 'probe' } };
      const before = await client.generate(probe);
      const documents = ['code-editing', 'summarization'].flatMap((name) =>
        (JSON.parse(readFileSync(join(projectRoot(), `bench/prompts/${name}.json`), 'utf8')) as { prompt: string }[])
          .slice(0, 4)
          .map((p) => p.prompt),
      );
      const result = await runSoak({
        address: s.address,
        durationMs: 25_000,
        workers: 4,
        seed: 29,
        maxNewTokensMax: 32,
        variedDocuments: documents,
      });
      // The caches' figures come with the replica's heartbeats.
      await new Promise((resolve) => setTimeout(resolve, 2 * WORKER_HEARTBEAT_MS));
      const caches = pool.cacheStats();
      t.log(JSON.stringify({ generations: result.generations, caches }));
      t.deepEqual(result.unexpected, []);
      t.true(result.generations.completed > 0);
      t.true(caches.prefixCacheBytes <= prefixCacheBytes, 'the prefix cache within its bound');
      t.is(caches.prefixCacheBytesMax, prefixCacheBytes);
      t.true(caches.prefixCacheEvictions > 0, 'entries were evicted');
      t.true(caches.draftPoolScopes > 1, 'several tenants have pools');
      t.true(
        await waitFor(() => s.service.poolState.active === 0 && s.service.poolState.queued === 0, 10_000),
        'no slot leaked',
      );
      const after = await client.generate({ ...probe, request_id: 'probe-after' });
      t.is(after.text, before.text);
    } finally {
      await s.close();
      await pool.dispose();
    }
  },
);

test.serial(
  'HTTP soak: dropped streams, abandoned calls and bad requests above capacity leave a healthy server with every answer whole',
  async (t) => {
    const s = await startTestServer({ maxActive: 2, maxQueued: 2 });
    const http = await startOpenAiServer(s.service, { host: '127.0.0.1', port: 0 }, SILENT_LOGGER);
    try {
      const baseUrl = `http://127.0.0.1:${http.port}/v1`;
      const openai = new OpenAI({ baseURL: baseUrl, apiKey: 'unused', maxRetries: 0 });
      const probe = {
        model: TEST_MODEL_NAME,
        messages: [{ role: 'user' as const, content: 'Name two oceans.' }],
        max_tokens: 24,
        temperature: 0,
      };
      const before = await openai.chat.completions.create(probe);
      const result = await runHttpSoak({
        baseUrl,
        model: TEST_MODEL_NAME,
        durationMs: 15_000,
        workers: 5,
        seed: 7,
        maxTokensMax: 32,
      });
      t.log(JSON.stringify(result));
      t.deepEqual(result.unexpected, []);
      t.true(result.outcomes.completed > 0);
      t.true(result.outcomes.abandoned > 0, 'some requests were dropped by the client');
      t.true(result.outcomes.refused > 0, 'bad requests were refused');
      t.true(
        await waitFor(() => s.service.poolState.active === 0 && s.service.poolState.queued === 0, 10_000),
        'no slot leaked',
      );
      const after = await openai.chat.completions.create(probe);
      t.is(after.choices[0]!.message.content, before.choices[0]!.message.content);
    } finally {
      await http.close();
      await s.close();
    }
  },
);
