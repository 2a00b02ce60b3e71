/**
 * The OpenAI-compatible HTTP API against gRPC on the same service (issue 32: ≤ 3% over gRPC).
 *
 * One InferenceService over a worker-thread engine (as `anpd serve` runs it), served both by the
 * gRPC server (GenerateStream, our grpc-js client) and by the HTTP server (streamed chat
 * completions, the official `openai` client). The same greedy requests go through both:
 *  1. one stream: each prompt through both paths back to back (order alternating), ms per output
 *     token and time to first token; ratio HTTP / gRPC per pair, medians;
 *  2. 16 streams: one workload of 32 requests with 16 in flight, gRPC and HTTP in turns (A B A B),
 *     aggregate output tok/s; ratio per pair.
 * Token counts must agree between the paths (same greedy text), or the run fails.
 * The clients share the process with the server, so their decoding counts against each path.
 *
 *   npm run bench:http [-- --reps 3 --max-new-tokens 64]   → bench/results/http-vs-grpc.json
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { availableParallelism, cpus } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import OpenAI from 'openai';
import { InferenceService } from '../src/engine/inference-service.js';
import { WorkerEngine } from '../src/engine/worker-engine.js';
import { SILENT_LOGGER } from '../src/log.js';
import { projectRoot } from '../src/paths.js';
import { ensureDefaultModel } from '../src/registry/model-cache.js';
import { TextGenerationClient } from '../src/transport/grpc/client.js';
import type { GenerateChunkMsg } from '../src/transport/grpc/messages.js';
import { DEFAULT_GRPC_SERVER_OPTIONS, startGrpcServer } from '../src/transport/grpc/server.js';
import { startOpenAiServer } from '../src/transport/openai/openai-server.js';
import { median } from '../tools/peer-metrics.js';

const MODEL = 'bench';

interface Prompt {
  readonly id: string;
  readonly prompt: string;
}

interface Run {
  readonly ms: number;
  readonly tokens: number;
  readonly firstMs: number;
}

const round = (x: number, digits = 2) => Number(x.toFixed(digits));

function loadPrompts(): Prompt[] {
  const dir = join(projectRoot(), 'bench', 'prompts');
  return ['open-chat', 'summarization', 'code-editing', 'document-qa'].flatMap((category) =>
    (JSON.parse(readFileSync(join(dir, `${category}.json`), 'utf8')) as Prompt[]).slice(0, 2),
  );
}

async function overGrpc(client: TextGenerationClient, id: string, prompt: string, maxNewTokens: number): Promise<Run> {
  const t0 = performance.now();
  let tokens = 0;
  let firstMs = 0;
  const stream = client.generateStream({
    request_id: id,
    messages: { messages: [{ role: 'user', content: prompt }] },
    stopping: { max_new_tokens: maxNewTokens },
  }) as AsyncIterable<GenerateChunkMsg>;
  for await (const chunk of stream) {
    if (chunk.token_ids.length > 0 && tokens === 0) firstMs = performance.now() - t0;
    tokens += chunk.token_ids.length;
  }
  return { ms: performance.now() - t0, tokens, firstMs };
}

async function overHttp(openai: OpenAI, prompt: string, maxNewTokens: number): Promise<Run> {
  const t0 = performance.now();
  let tokens = 0;
  let firstMs = 0;
  const stream = await openai.chat.completions.create({
    model: MODEL,
    messages: [{ role: 'user', content: prompt }],
    max_tokens: maxNewTokens,
    temperature: 0,
    stream: true,
    stream_options: { include_usage: true },
  });
  for await (const chunk of stream) {
    if (firstMs === 0 && chunk.choices[0]?.delta.content) firstMs = performance.now() - t0;
    if (chunk.usage) tokens = chunk.usage.completion_tokens;
  }
  return { ms: performance.now() - t0, tokens, firstMs };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: { reps: { type: 'string' }, 'max-new-tokens': { type: 'string' }, out: { type: 'string' } },
  });
  const reps = Number(values.reps ?? 3);
  const maxNewTokens = Number(values['max-new-tokens'] ?? 64);
  const prompts = loadPrompts();
  const model = await ensureDefaultModel();
  const engine = await WorkerEngine.create(model, { executionProvider: 'cpu', intraOpThreads: 0, kvCapacity: 4096 });
  // One measured cost table for the whole run: both paths pick the same draft lengths.
  await engine.calibrate();
  const service = new InferenceService({
    engine,
    modelName: MODEL,
    pool: { maxActive: 16, maxQueued: 64 },
    limits: { maxNewTokensDefault: maxNewTokens, maxNewTokensLimit: 4096 },
  });
  const grpc = await startGrpcServer(
    service,
    { ...DEFAULT_GRPC_SERVER_OPTIONS, host: '127.0.0.1', port: 0 },
    SILENT_LOGGER,
  );
  const http = await startOpenAiServer(service, { host: '127.0.0.1', port: 0 }, SILENT_LOGGER);
  const client = new TextGenerationClient(`127.0.0.1:${grpc.port}`);
  const openai = new OpenAI({ baseURL: `http://127.0.0.1:${http.port}/v1`, apiKey: 'bench', maxRetries: 0 });

  for (const p of prompts.slice(0, 2)) {
    await overGrpc(client, 'warm', p.prompt, 16);
    await overHttp(openai, p.prompt, 16);
  }

  // 1. One stream.
  const perToken = { grpc: [] as number[], http: [] as number[] };
  const firstToken = { grpc: [] as number[], http: [] as number[] };
  const ratios: number[] = [];
  for (let rep = 0; rep < reps; rep++) {
    for (const [i, p] of prompts.entries()) {
      const grpcFirst = (rep + i) % 2 === 0;
      const g0 = grpcFirst ? await overGrpc(client, p.id, p.prompt, maxNewTokens) : undefined;
      const h = await overHttp(openai, p.prompt, maxNewTokens);
      const g = g0 ?? (await overGrpc(client, p.id, p.prompt, maxNewTokens));
      if (g.tokens !== h.tokens) throw new Error(`${p.id}: ${g.tokens} tokens over gRPC, ${h.tokens} over HTTP`);
      perToken.grpc.push(g.ms / g.tokens);
      perToken.http.push(h.ms / h.tokens);
      firstToken.grpc.push(g.firstMs);
      firstToken.http.push(h.firstMs);
      ratios.push(h.ms / g.ms);
    }
  }
  const oneStream = {
    requests: ratios.length,
    medianMsPerToken: { grpc: round(median(perToken.grpc)), http: round(median(perToken.http)) },
    medianFirstTokenMs: { grpc: round(median(firstToken.grpc), 1), http: round(median(firstToken.http), 1) },
    httpOverGrpc: {
      medianRatio: round(median(ratios), 4),
      overheadPct: round((median(ratios) - 1) * 100, 2),
      ratioRange: [round(Math.min(...ratios), 3), round(Math.max(...ratios), 3)],
    },
  };
  process.stderr.write(`1 stream: ${JSON.stringify(oneStream)}\n`);

  // 2. Sixteen streams, A B A B.
  const streams = 16;
  const workload = Array.from({ length: 32 }, (_, i) => prompts[i % prompts.length]!);
  const aggregate = async (path: 'grpc' | 'http') => {
    const t0 = performance.now();
    let next = 0;
    let tokens = 0;
    await Promise.all(
      Array.from({ length: streams }, async () => {
        while (next < workload.length) {
          const i = next++;
          const p = workload[i]!;
          const r =
            path === 'grpc'
              ? await overGrpc(client, `c${i}`, p.prompt, maxNewTokens)
              : await overHttp(openai, p.prompt, maxNewTokens);
          tokens += r.tokens;
        }
      }),
    );
    return { tokens, tokPerS: (tokens / (performance.now() - t0)) * 1000 };
  };
  const tokPerS = { grpc: [] as number[], http: [] as number[] };
  const pairRatios: number[] = [];
  for (let rep = 0; rep < reps; rep++) {
    const g = await aggregate('grpc');
    const h = await aggregate('http');
    if (g.tokens !== h.tokens) throw new Error(`16 streams: ${g.tokens} tokens over gRPC, ${h.tokens} over HTTP`);
    tokPerS.grpc.push(round(g.tokPerS, 1));
    tokPerS.http.push(round(h.tokPerS, 1));
    pairRatios.push(g.tokPerS / h.tokPerS);
  }
  const sixteenStreams = {
    streams,
    requestsPerRun: workload.length,
    aggregateTokPerS: tokPerS,
    // gRPC tok/s over HTTP tok/s: HTTP's time over gRPC's, as for one stream.
    httpOverGrpc: {
      medianRatio: round(median(pairRatios), 4),
      overheadPct: round((median(pairRatios) - 1) * 100, 2),
      ratioRange: [round(Math.min(...pairRatios), 3), round(Math.max(...pairRatios), 3)],
    },
  };
  process.stderr.write(`16 streams: ${JSON.stringify(sixteenStreams)}\n`);

  const result = {
    date: new Date().toISOString(),
    machine: { cpus: availableParallelism(), model: cpus()[0]?.model ?? 'unknown', node: process.version },
    command: `npm run bench:http -- --reps ${reps} --max-new-tokens ${maxNewTokens}`,
    prompts: prompts.map((p) => p.id),
    maxNewTokens,
    oneStream,
    sixteenStreams,
  };
  const out = values.out ?? join(projectRoot(), 'bench', 'results', 'http-vs-grpc.json');
  mkdirSync(join(out, '..'), { recursive: true });
  writeFileSync(out, `${JSON.stringify(result, null, 2)}\n`);
  process.stdout.write(`${out}\n`);
  client.close();
  await http.close(0);
  await grpc.shutdown(0);
  await engine.dispose();
}

await main();
