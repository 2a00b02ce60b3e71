/**
 * gRPC path vs in-process engine, and aggregate throughput under concurrency.
 *
 * 1. Overhead: the same requests through `Engine.generate` in this thread and through
 *    GenerateStream on a loopback server whose model runs on a worker thread (as `anpd serve`
 *    runs it; same model and forward-cost table), interleaved, several repetitions;
 *    overhead = median(gRPC / in-process) − 1. Also against the worker engine called directly
 *    (same thread layout, no gRPC): the transport's own cost. The client shares the process with
 *    the server, so its decoding work counts against the gRPC path.
 * 2. Telemetry: the same requests through a server with tracing and metrics on vs one without.
 * 3. Concurrency: one fixed workload of 16 requests run with 1, 4 and 16 GenerateStream calls in
 *    flight; aggregate output tokens/s, median time to first token and request latency.
 *
 *   npm run bench:grpc [-- --reps 3 --max-new-tokens 96]   → bench/results/grpc.json
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import {
  AggregationTemporality,
  InMemoryMetricExporter,
  MeterProvider,
  PeriodicExportingMetricReader,
} from '@opentelemetry/sdk-metrics';
import { BatchSpanProcessor, InMemorySpanExporter, TracerProvider } from '@opentelemetry/sdk-trace';
import { availableParallelism, cpus } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { createEngine } from '../src/engine/create-engine.js';
import {
  DEFAULT_SPECULATION,
  type GenerationBackend,
  NO_SPECULATION,
  type SpeculationOptions,
} from '../src/contract.js';
import { InferenceService } from '../src/engine/inference-service.js';
import { WorkerEngine } from '../src/engine/worker-engine.js';
import { SILENT_LOGGER } from '../src/log.js';
import { GenerationTelemetry } from '../src/telemetry/generation-telemetry.js';
import { projectRoot } from '../src/paths.js';
import { ensureDefaultModel } from '../src/registry/model-cache.js';
import { TextGenerationClient } from '../src/transport/grpc/client.js';
import type { GenerateChunkMsg, GenerateRequestMsg } from '../src/transport/grpc/messages.js';
import { DEFAULT_GRPC_SERVER_OPTIONS, startGrpcServer } from '../src/transport/grpc/server.js';

interface Prompt {
  readonly id: string;
  readonly prompt: string;
}

function loadPrompts(): Prompt[] {
  const dir = join(projectRoot(), 'bench', 'prompts');
  return ['open-chat', 'summarization', 'code-editing', 'document-qa'].flatMap((category) =>
    (JSON.parse(readFileSync(join(dir, `${category}.json`), 'utf8')) as Prompt[]).slice(0, 2),
  );
}

const median = (values: number[]) => {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
};
const round = (x: number, digits = 2) => Number(x.toFixed(digits));

async function inProcess(
  engine: GenerationBackend,
  prompt: string,
  maxNewTokens: number,
  speculation: SpeculationOptions,
) {
  const t0 = performance.now();
  let tokens = 0;
  let firstMs = 0;
  for await (const event of engine.run(
    engine.prepare({
      prompt: { kind: 'messages', messages: [{ role: 'user', content: prompt }] },
      maxNewTokens,
      speculation,
    }),
  )) {
    if (event.type === 'delta') {
      if (tokens === 0) firstMs = performance.now() - t0;
      tokens += event.tokenIds.length;
    }
  }
  return { ms: performance.now() - t0, tokens, firstMs };
}

function request(
  id: string,
  prompt: string,
  maxNewTokens: number,
  speculation: SpeculationOptions,
): GenerateRequestMsg {
  return {
    request_id: id,
    messages: { messages: [{ role: 'user', content: prompt }] },
    stopping: { max_new_tokens: maxNewTokens },
    speculation: { mode: speculation.mode === 'off' ? 'MODE_OFF' : 'MODE_NGRAM' },
  };
}

async function overGrpc(client: TextGenerationClient, msg: GenerateRequestMsg) {
  const t0 = performance.now();
  let tokens = 0;
  let firstMs = 0;
  for await (const chunk of client.generateStream(msg) as AsyncIterable<GenerateChunkMsg>) {
    if (chunk.token_ids.length > 0 && tokens === 0) firstMs = performance.now() - t0;
    tokens += chunk.token_ids.length;
  }
  return { ms: performance.now() - t0, tokens, firstMs };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      reps: { type: 'string' },
      'max-new-tokens': { type: 'string' },
      out: { type: 'string' },
      'skip-concurrency': { type: 'boolean' },
    },
  });
  const reps = Number(values.reps ?? 3);
  const maxNewTokens = Number(values['max-new-tokens'] ?? 96);
  const prompts = loadPrompts();
  const engine = await createEngine(await ensureDefaultModel(), {
    executionProvider: 'cpu',
    intraOpThreads: 0,
    kvCapacity: 4096,
  });
  // The server runs the model on a worker thread, as `anpd serve` does, with the same forward-cost
  // table as the in-process engine so both pick the same draft lengths.
  const workerEngine = await WorkerEngine.create(
    await ensureDefaultModel(),
    { executionProvider: 'cpu', intraOpThreads: 0, kvCapacity: 4096 },
    {
      forwardCost: { mode: 'fixed', table: await engine.forwardCost() },
    },
  );
  const service = new InferenceService({
    engine: workerEngine,
    modelName: 'bench',
    pool: { maxActive: 16, maxQueued: 64 },
    limits: { maxNewTokensDefault: maxNewTokens, maxNewTokensLimit: 4096 },
  });
  const server = await startGrpcServer(
    service,
    { ...DEFAULT_GRPC_SERVER_OPTIONS, host: '127.0.0.1', port: 0 },
    SILENT_LOGGER,
  );
  const client = new TextGenerationClient(`127.0.0.1:${server.port}`);

  // Warm-up: first runs pay for JIT, allocations and the first ORT runs.
  for (const p of prompts.slice(0, 2)) {
    await inProcess(engine, p.prompt, 16, DEFAULT_SPECULATION);
    await inProcess(workerEngine, p.prompt, 16, DEFAULT_SPECULATION);
    await overGrpc(client, request('warm', p.prompt, 16, DEFAULT_SPECULATION));
  }

  const overhead: Record<string, unknown> = {};
  for (const [label, speculation] of [
    ['speculation off', NO_SPECULATION],
    ['speculation ngram (default)', DEFAULT_SPECULATION],
  ] as const) {
    const ratios: number[] = [];
    const transportRatios: number[] = [];
    const perToken: { direct: number[]; worker: number[]; grpc: number[] } = { direct: [], worker: [], grpc: [] };
    let tokens = 0;
    for (let rep = 0; rep < reps; rep++) {
      for (const [i, p] of prompts.entries()) {
        // Rotate the order of the three paths so drift does not favour one.
        const paths = [
          async () => inProcess(engine, p.prompt, maxNewTokens, speculation),
          async () => inProcess(workerEngine, p.prompt, maxNewTokens, speculation),
          async () => overGrpc(client, request(p.id, p.prompt, maxNewTokens, speculation)),
        ];
        const results: Array<{ ms: number; tokens: number }> = [];
        for (let k = 0; k < 3; k++) {
          const j = (k + rep + i) % 3;
          results[j] = await paths[j]!();
        }
        const [d, w, g] = results as [
          { ms: number; tokens: number },
          { ms: number; tokens: number },
          { ms: number; tokens: number },
        ];
        if (d.tokens !== g.tokens || w.tokens !== g.tokens)
          throw new Error(`${p.id}: token counts differ (${d.tokens}, ${w.tokens}, ${g.tokens})`);
        ratios.push(g.ms / d.ms);
        transportRatios.push(g.ms / w.ms);
        perToken.direct.push(d.ms / d.tokens);
        perToken.worker.push(w.ms / w.tokens);
        perToken.grpc.push(g.ms / g.tokens);
        tokens += g.tokens;
      }
    }
    const overheadPct = (median(ratios) - 1) * 100;
    const transportPct = (median(transportRatios) - 1) * 100;
    overhead[label] = {
      requests: ratios.length,
      tokensPerPath: tokens,
      medianMsPerToken: {
        inProcess: round(median(perToken.direct)),
        workerDirect: round(median(perToken.worker)),
        grpc: round(median(perToken.grpc)),
      },
      grpcVsInProcess: {
        medianRatio: round(median(ratios), 4),
        overheadPct: round(overheadPct, 2),
        ratioRange: [round(Math.min(...ratios), 3), round(Math.max(...ratios), 3)],
      },
      grpcVsWorkerDirect: {
        medianRatio: round(median(transportRatios), 4),
        overheadPct: round(transportPct, 2),
        ratioRange: [round(Math.min(...transportRatios), 3), round(Math.max(...transportRatios), 3)],
      },
    };
    process.stderr.write(
      `overhead (${label}): vs in-process ${overheadPct.toFixed(2)}%, vs worker direct ${transportPct.toFixed(2)}% (medians of ${ratios.length} ratios)\n`,
    );
  }

  // Telemetry on vs off: a second server over the same service whose generations are traced
  // (batch span processor into memory, as an exporter would) and metered.
  const spans = new InMemorySpanExporter();
  const tracerProvider = new TracerProvider({ spanProcessors: [new BatchSpanProcessor({ exporter: spans })] });
  const metricReader = new PeriodicExportingMetricReader({
    exporter: new InMemoryMetricExporter(AggregationTemporality.CUMULATIVE),
    exportIntervalMillis: 1000,
  });
  const meterProvider = new MeterProvider({ readers: [metricReader] });
  const telemetry = new GenerationTelemetry(
    tracerProvider.getTracer('bench'),
    meterProvider.getMeter('bench'),
    SILENT_LOGGER,
    () => service.poolState,
  );
  const tracedServer = await startGrpcServer(
    service,
    { ...DEFAULT_GRPC_SERVER_OPTIONS, host: '127.0.0.1', port: 0 },
    SILENT_LOGGER,
    telemetry,
  );
  const tracedClient = new TextGenerationClient(`127.0.0.1:${tracedServer.port}`);
  const telemetryRatios: number[] = [];
  for (let rep = 0; rep < reps; rep++) {
    for (const [i, p] of prompts.entries()) {
      const off = async () => overGrpc(client, request(p.id, p.prompt, maxNewTokens, DEFAULT_SPECULATION));
      const on = async () => overGrpc(tracedClient, request(p.id, p.prompt, maxNewTokens, DEFAULT_SPECULATION));
      const first = (rep + i) % 2 === 0;
      const a = await (first ? on : off)();
      const b = await (first ? off : on)();
      const [tOn, tOff] = first ? [a, b] : [b, a];
      telemetryRatios.push(tOn.ms / tOff.ms);
      spans.reset();
    }
  }
  const telemetryOverhead = {
    requests: telemetryRatios.length,
    medianRatio: round(median(telemetryRatios), 4),
    overheadPct: round((median(telemetryRatios) - 1) * 100, 2),
    ratioRange: [round(Math.min(...telemetryRatios), 3), round(Math.max(...telemetryRatios), 3)],
  };
  process.stderr.write(
    `telemetry on vs off: ${telemetryOverhead.overheadPct}% (median of ${telemetryRatios.length} ratios)\n`,
  );
  tracedClient.close();
  // Not shutdown(): that drains the service, which the untraced server still uses.
  tracedServer.server.forceShutdown();
  await tracerProvider.shutdown();
  await meterProvider.shutdown();

  // Concurrency: the same 16-request workload each time, with 1, 4 or 16 requests in flight.
  const workload = Array.from({ length: 16 }, (_, i) => prompts[i % prompts.length]!);
  const concurrency: Record<string, unknown>[] = [];
  for (const streams of values['skip-concurrency'] ? [] : [1, 4, 16]) {
    for (const speculation of [NO_SPECULATION, DEFAULT_SPECULATION]) {
      const t0 = performance.now();
      let next = 0;
      const results: Array<{ ms: number; tokens: number; firstMs: number }> = [];
      await Promise.all(
        Array.from({ length: streams }, async () => {
          while (next < workload.length) {
            const i = next++;
            results.push(await overGrpc(client, request(`c${i}`, workload[i]!.prompt, maxNewTokens, speculation)));
          }
        }),
      );
      const wallMs = performance.now() - t0;
      const tokens = results.reduce((a, r) => a + r.tokens, 0);
      const row = {
        streams,
        speculation: speculation.mode,
        requests: results.length,
        tokens,
        wallMs: Math.round(wallMs),
        aggregateTokPerS: round((tokens / wallMs) * 1000, 1),
        medianFirstTokenMs: Math.round(median(results.map((r) => r.firstMs))),
        medianLatencyMs: Math.round(median(results.map((r) => r.ms))),
      };
      concurrency.push(row);
      process.stderr.write(`${JSON.stringify(row)}\n`);
    }
  }

  const result = {
    date: new Date().toISOString(),
    machine: { cpus: availableParallelism(), model: cpus()[0]?.model ?? 'unknown', node: process.version },
    command: `npm run bench:grpc -- --reps ${reps} --max-new-tokens ${maxNewTokens}`,
    prompts: prompts.map((p) => p.id),
    maxNewTokens,
    overhead,
    telemetryOverhead,
    concurrency,
  };
  const out = values.out ?? join(projectRoot(), 'bench', 'results', 'grpc.json');
  mkdirSync(join(out, '..'), { recursive: true });
  writeFileSync(out, `${JSON.stringify(result, null, 2)}\n`);
  process.stdout.write(`${out}\n`);
  client.close();
  await server.shutdown(0);
  await engine.dispose();
  await workerEngine.dispose();
}

await main();
