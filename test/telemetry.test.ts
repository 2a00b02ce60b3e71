import { request as httpGet } from 'node:http';
import type { AddressInfo } from 'node:net';
import { SpanKind } from '@opentelemetry/api';
import { PrometheusExporter } from '@opentelemetry/exporter-prometheus';
import {
  type GaugeMetricData,
  type HistogramMetricData,
  MeterProvider,
  MetricReader,
  type MetricData,
  type SumMetricData,
} from '@opentelemetry/sdk-metrics';
import { InMemorySpanExporter, type ReadableSpan, SimpleSpanProcessor, TracerProvider } from '@opentelemetry/sdk-trace';
import test from 'ava';
import type { InferenceService } from '../src/engine/inference-service.js';
import { WORKER_HEARTBEAT_MS } from '../src/engine/worker-protocol.js';
import { createLogger } from '../src/log.js';
import { GenerationTelemetry } from '../src/telemetry/generation-telemetry.js';
import type { BidiServerMsg, GenerateRequestMsg, GenerateResponseMsg } from '../src/transport/grpc/messages.js';
import { freePort } from '../tools/loopback.js';
import { startTestServer, waitFor } from './support/grpc-server.js';

class TestMetricReader extends MetricReader {
  protected override async onForceFlush(): Promise<void> {}
  protected override async onShutdown(): Promise<void> {}
}

function setup(readers: MetricReader[] = []) {
  const spans = new InMemorySpanExporter();
  const tracerProvider = new TracerProvider({ spanProcessors: [new SimpleSpanProcessor({ exporter: spans })] });
  const reader = new TestMetricReader();
  const meterProvider = new MeterProvider({ readers: [reader, ...readers] });
  const lines: Array<Record<string, unknown>> = [];
  const logger = createLogger('info', (line) => lines.push(JSON.parse(line) as Record<string, unknown>));
  const telemetry = (service: InferenceService) => {
    const generation = new GenerationTelemetry(
      tracerProvider.getTracer('test'),
      meterProvider.getMeter('test'),
      logger,
      () => service.poolState,
    );
    generation.watchCaches(() => service.cacheStats);
    return generation;
  };
  return { spans, reader, lines, telemetry };
}

const chat = (id: string, content: string, maxNewTokens: number): GenerateRequestMsg => ({
  request_id: id,
  messages: { messages: [{ role: 'user', content }] },
  stopping: { max_new_tokens: maxNewTokens },
  sampling: { temperature: 0, top_p: 1, top_k: 0, seed: '5' },
});

const named = (spans: ReadableSpan[], name: string) => spans.filter((s) => s.name === name);

test.serial(
  'a generation is one text_completion span under its RPC span, with GenAI and speculation attributes and one log line',
  async (t) => {
    const { spans, lines, telemetry } = setup();
    const s = await startTestServer({ telemetry });
    try {
      const response = await s
        .client()
        .generate(chat('req-1', 'Repeat twice: the quick brown fox jumps over the lazy dog.', 40));
      const all = spans.getFinishedSpans();
      const [rpc] = named(all, 'llm.v1.TextGeneration/Generate');
      const [generation] = named(all, 'text_completion smollm2-135m-instruct');
      t.truthy(rpc);
      t.truthy(generation);
      t.is(all.length, 2, 'no span per token');
      t.is(rpc!.kind, SpanKind.SERVER);
      t.is(generation!.kind, SpanKind.INTERNAL);
      t.is(generation!.parentSpanContext?.spanId, rpc!.spanContext().spanId);
      t.is(generation!.spanContext().traceId, rpc!.spanContext().traceId);
      const a = generation!.attributes;
      t.is(a['gen_ai.operation.name'], 'text_completion');
      t.is(a['gen_ai.provider.name'], 'onnxruntime');
      t.is(a['gen_ai.request.model'], 'smollm2-135m-instruct');
      t.is(a['gen_ai.request.max_tokens'], 40);
      t.is(a['gen_ai.request.temperature'], 0);
      t.is(a['gen_ai.request.seed'], 5);
      t.is(a['gen_ai.response.id'], 'req-1');
      t.is(a['gen_ai.usage.input_tokens'], response.final.usage.input_tokens);
      t.is(a['gen_ai.usage.output_tokens'], response.final.usage.output_tokens);
      t.deepEqual(a['gen_ai.response.finish_reasons'], [
        response.final.finish_reason.replace('FINISH_REASON_', '').toLowerCase(),
      ]);
      t.is(a['app.llm.spec.method'], 'ngram');
      t.is(a['app.llm.spec.draft_tokens'], response.final.speculation.draft_tokens);
      t.is(a['app.llm.spec.accepted_tokens'], response.final.speculation.accepted_tokens);
      t.is(a['app.llm.spec.pool_draft_tokens'], response.final.speculation.pool_draft_tokens);
      t.is(a['app.llm.prefix_cache.hit_tokens'], response.final.usage.cached_input_tokens);
      t.is(a['app.llm.spec.pool_accepted_tokens'], response.final.speculation.pool_accepted_tokens);
      t.is(a['app.llm.spec.verify_steps'], response.final.speculation.verify_steps);
      t.true((a['app.llm.spec.tokens_per_step'] as number) > 1, 'drafts were accepted on a repetitive prompt');
      t.deepEqual(
        generation!.events.map((e) => e.name),
        ['gen_ai.first_token'],
      );
      t.is(rpc!.attributes['rpc.grpc.status_code'], 0);
      const requestLines = lines.filter((l) => l['msg'] === 'request');
      t.is(requestLines.length, 1, 'one log line per request');
      t.is(requestLines[0]!['requestId'], 'req-1');
      t.is(requestLines[0]!['traceId'], generation!.spanContext().traceId);
      t.is(requestLines[0]!['spanId'], generation!.spanContext().spanId);
      t.is(requestLines[0]!['outputTokens'], response.final.usage.output_tokens);
    } finally {
      await s.close();
    }
  },
);

test.serial(
  'on a bidi call every generation is a child of the call span; cancelled and failed ones say so',
  async (t) => {
    const { spans, telemetry } = setup();
    const s = await startTestServer({ telemetry });
    try {
      const call = s.client().generateBidi({ deadlineMs: 60_000 });
      let cancelled = false;
      const done = new Promise<void>((resolve) => {
        call.on('data', (m: BidiServerMsg) => {
          if (!cancelled && 'chunk' in m && m.chunk.request_id === 'victim') {
            cancelled = true;
            call.write({ cancel: { request_ids: ['victim'] } });
            call.end();
          }
        });
        call.on('error', () => {});
        call.on('status', () => resolve());
      });
      call.write({
        generate: {
          request_id: 'victim',
          text: 'Count: one, two, three,',
          stopping: { max_new_tokens: 2000, ignore_eos: true },
        },
      });
      call.write({ generate: chat('ok', 'Name three colors.', 12) });
      call.write({ generate: { ...chat('lost', 'hi', 4), model: 'no-such-model' } });
      await done;
      t.true(
        await waitFor(() => named(spans.getFinishedSpans(), 'llm.v1.TextGeneration/GenerateBidi').length === 1, 5000),
      );
      const all = spans.getFinishedSpans();
      const [rpc] = named(all, 'llm.v1.TextGeneration/GenerateBidi');
      const generations = named(all, 'text_completion smollm2-135m-instruct');
      t.is(generations.length, 3);
      for (const g of generations) t.is(g.parentSpanContext?.spanId, rpc!.spanContext().spanId);
      const byId = Object.fromEntries(generations.map((g) => [g.attributes['gen_ai.response.id'] as string, g]));
      t.is(byId['victim']!.attributes['error.type'], 'CANCELLED');
      t.true(byId['victim']!.events.some((e) => e.name === 'cancelled'));
      t.is(byId['lost']!.attributes['error.type'], 'NOT_FOUND');
      t.is(byId['ok']!.attributes['error.type'], undefined);
      t.true((byId['ok']!.attributes['gen_ai.usage.output_tokens'] as number) > 0);
      t.is(rpc!.attributes['rpc.grpc.status_code'], 0);
    } finally {
      await s.close();
    }
  },
);

function metric(all: MetricData[], name: string): MetricData {
  const found = all.find((m) => m.descriptor.name === name);
  if (!found) throw new Error(`metric ${name} not found among ${all.map((m) => m.descriptor.name).join(', ')}`);
  return found;
}

test.serial('metrics after a known workload add up to the responses', async (t) => {
  const { reader, telemetry } = setup();
  const s = await startTestServer({ telemetry });
  try {
    const client = s.client();
    const responses: GenerateResponseMsg[] = [];
    for (const [i, q] of ['What is 2 + 2?', 'Name a fruit.', 'Repeat: red, green, blue, red, green, blue.'].entries()) {
      responses.push(await client.generate(chat(`m${i}`, q, 16)));
    }
    await client.generate({ ...chat('bad', 'hi', 4), model: 'nope' }).catch(() => undefined);
    // The cache gauges read the replica's heartbeats (every WORKER_HEARTBEAT_MS): let one come.
    await new Promise((resolve) => setTimeout(resolve, 2 * WORKER_HEARTBEAT_MS));
    const { resourceMetrics } = await reader.collect();
    const all = resourceMetrics.scopeMetrics.flatMap((sm) => sm.metrics);
    const sum = (f: (r: (typeof responses)[number]) => number) => responses.reduce((acc, r) => acc + f(r), 0);

    const requests = metric(all, 'app.llm.requests') as SumMetricData;
    const ok = requests.dataPoints
      .filter((p) => p.attributes['app.llm.outcome'] === 'ok')
      .reduce((acc, p) => acc + p.value, 0);
    const rejected = requests.dataPoints.filter((p) => p.attributes['app.llm.outcome'] === 'rejected');
    t.is(ok, 3);
    t.is(rejected.length, 1);
    t.is(rejected[0]!.attributes['error.type'], 'NOT_FOUND');

    const tokens = metric(all, 'app.llm.tokens') as HistogramMetricData;
    const tokenSum = (type: string) =>
      tokens.dataPoints
        .filter((p) => p.attributes['gen_ai.token.type'] === type)
        .reduce((acc, p) => acc + (p.value.sum ?? 0), 0);
    t.is(
      tokenSum('output'),
      sum((r) => r.final.usage.output_tokens),
    );
    t.is(
      tokenSum('input'),
      sum((r) => r.final.usage.input_tokens),
    );

    const counter = (name: string) =>
      (metric(all, name) as SumMetricData).dataPoints.reduce((acc, p) => acc + p.value, 0);
    t.is(
      counter('app.llm.spec.draft_tokens'),
      sum((r) => r.final.speculation.draft_tokens),
    );
    t.is(
      counter('app.llm.spec.accepted_tokens'),
      sum((r) => r.final.speculation.accepted_tokens),
    );
    t.is(
      counter('app.llm.spec.pool_accepted_tokens'),
      sum((r) => r.final.speculation.pool_accepted_tokens),
    );
    t.is(
      counter('app.llm.spec.verify_steps'),
      sum((r) => r.final.speculation.verify_steps),
    );

    // The caches: every request over the transport has a scope, so its prompt's KV and its text were kept.
    const gauge = (name: string) =>
      (metric(all, name) as GaugeMetricData).dataPoints.reduce((acc, p) => acc + p.value, 0);
    t.true(gauge('app.llm.prefix_cache.limit') > 0);
    t.true(gauge('app.llm.prefix_cache.entries') >= 1, 'the prompts were kept');
    t.true(gauge('app.llm.prefix_cache.usage') > 0);
    t.true(gauge('app.llm.prefix_cache.usage') <= gauge('app.llm.prefix_cache.limit'));
    t.true(gauge('app.llm.draft_pool.scopes') >= 1);
    t.true(gauge('app.llm.draft_pool.tokens') > 0);
    t.is(counter('app.llm.prefix_cache.evictions'), 0);

    const duration = metric(all, 'gen_ai.server.request.duration') as HistogramMetricData;
    t.is(duration.descriptor.unit, 's');
    t.is(
      duration.dataPoints.reduce((acc, p) => acc + p.value.count, 0),
      3,
    );
    const ttft = metric(all, 'gen_ai.server.time_to_first_token') as HistogramMetricData;
    t.is(
      ttft.dataPoints.reduce((acc, p) => acc + p.value.count, 0),
      3,
    );
    t.truthy(metric(all, 'gen_ai.server.time_per_output_token'));
    t.truthy(metric(all, 'app.llm.spec.accepted_per_step'));
    for (const gauge of ['app.llm.requests.running', 'app.llm.requests.waiting', 'app.llm.pool.utilization']) {
      const points = metric(all, gauge).dataPoints as Array<{ value: number }>;
      t.is(points[0]?.value, 0, `${gauge} is 0 when idle`);
    }
    for (const m of all) {
      for (const p of m.dataPoints)
        t.false('app.llm.request_id' in p.attributes, `${m.descriptor.name} has no per-request attribute`);
    }
  } finally {
    await s.close();
  }
});

test.serial('the Prometheus endpoint answers in the text exposition format', async (t) => {
  // The exporter reads port 0 as "unset" and takes its default 9464, which another server may hold.
  const prometheus = new PrometheusExporter({ port: await freePort(), host: '127.0.0.1', preventServerStart: true });
  await prometheus.startServer();
  const port = (prometheus as unknown as { _server: { address(): AddressInfo } })._server.address().port;
  const { telemetry } = setup([prometheus]);
  const s = await startTestServer({ telemetry });
  try {
    await s.client().generate(chat('p1', 'Hi', 6));
    const { status, type, body } = await new Promise<{ status: number; type: string; body: string }>(
      (resolve, reject) => {
        httpGet({ host: '127.0.0.1', port, path: '/metrics' }, (res) => {
          let text = '';
          res.on('data', (d: Buffer) => (text += d.toString()));
          res.on('end', () =>
            resolve({ status: res.statusCode ?? 0, type: String(res.headers['content-type']), body: text }),
          );
        })
          .on('error', reject)
          .end();
      },
    );
    t.is(status, 200);
    t.regex(type, /^text\/plain/);
    t.regex(body, /# TYPE gen_ai_server_request_duration(_seconds)? histogram/);
    t.regex(body, /app_llm_requests(_total)?\{[^}]*app_llm_outcome="ok"[^}]*\} 1/);
    t.regex(body, /app_llm_spec_draft_tokens/);
  } finally {
    await s.close();
    await prometheus.shutdown();
  }
});
