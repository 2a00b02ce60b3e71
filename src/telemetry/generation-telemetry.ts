/**
 * Spans and metrics of generations, derived from the engine's events and final statistics: one
 * INTERNAL span per generation (child of the RPC span), one event at the first token, metrics at
 * the end. Nothing runs per token beyond a counter check.
 */
import {
  type Attributes,
  type Context,
  type Counter,
  type Histogram,
  type Meter,
  type Span,
  SpanKind,
  SpanStatusCode,
  type Tracer,
  context as otelContext,
  trace,
} from '@opentelemetry/api';
import { CancelledError } from '../errors.js';
import { type CacheStats, DEFAULT_SPECULATION, type GenerateRequest } from '../contract.js';
import { GREEDY } from '../sampling/sampler.js';
import type { ServiceEvent } from '../engine/inference-service.js';
import type { AdmissionQueueState } from '../engine/admission-queue.js';
import type { Logger } from '../log.js';
import {
  ACCEPTED_PER_STEP_BUCKETS,
  ATTR,
  DURATION_BUCKETS_S,
  EVENT_CANCELLED,
  EVENT_FIRST_TOKEN,
  METRIC,
  SPAN_TEXT_COMPLETION,
  TOKEN_BUCKETS,
  TPOT_BUCKETS_S,
  TTFT_BUCKETS_S,
} from './names.js';

export interface GenerationMeta {
  /** RPC method, e.g. 'GenerateStream'. */
  readonly method: string;
  readonly requestId: string;
  readonly model: string;
  readonly request: GenerateRequest;
  readonly stream: boolean;
}

/** How a failed generation is reported: the gRPC status name (error.type) and whether it was shed. */
export interface FailureInfo {
  readonly errorType: string;
  readonly outcome: 'cancelled' | 'error' | 'rejected';
}

interface Instruments {
  readonly duration: Histogram;
  readonly ttft: Histogram;
  readonly tpot: Histogram;
  readonly tokens: Histogram;
  readonly requests: Counter;
  readonly queue: Histogram;
  readonly draftTokens: Counter;
  readonly acceptedTokens: Counter;
  readonly poolDraftTokens: Counter;
  readonly prefixCacheHitTokens: Counter;
  readonly poolAcceptedTokens: Counter;
  readonly verifySteps: Counter;
  readonly acceptedPerStep: Histogram;
}

export class GenerationTelemetry {
  private readonly tracer: Tracer;
  private readonly instruments: Instruments;
  private readonly logger: Logger;
  private readonly providerName: string;
  private readonly meter: Meter;
  private replicaEvents: Counter | undefined;

  constructor(
    tracer: Tracer,
    meter: Meter,
    logger: Logger,
    pool: () => AdmissionQueueState,
    providerName = 'onnxruntime',
  ) {
    this.tracer = tracer;
    this.logger = logger;
    this.providerName = providerName;
    this.meter = meter;
    this.instruments = {
      duration: meter.createHistogram(METRIC.requestDuration, {
        unit: 's',
        description: 'Generation time, request received to last token',
        advice: { explicitBucketBoundaries: DURATION_BUCKETS_S },
      }),
      ttft: meter.createHistogram(METRIC.timeToFirstToken, {
        unit: 's',
        description: 'Request received to first output token',
        advice: { explicitBucketBoundaries: TTFT_BUCKETS_S },
      }),
      tpot: meter.createHistogram(METRIC.timePerOutputToken, {
        unit: 's',
        description: 'Time per output token after the first',
        advice: { explicitBucketBoundaries: TPOT_BUCKETS_S },
      }),
      tokens: meter.createHistogram(METRIC.tokens, {
        unit: '{token}',
        description: 'Tokens per request by type (input, output)',
        advice: { explicitBucketBoundaries: TOKEN_BUCKETS },
      }),
      requests: meter.createCounter(METRIC.requests, {
        unit: '{request}',
        description: 'Finished requests by outcome and finish reason',
      }),
      queue: meter.createHistogram(METRIC.queueDuration, {
        unit: 's',
        description: 'Wait for a sequence slot',
        advice: { explicitBucketBoundaries: TTFT_BUCKETS_S },
      }),
      draftTokens: meter.createCounter(METRIC.specDraftTokens, {
        unit: '{token}',
        description: 'Draft tokens proposed by the n-gram drafter',
      }),
      acceptedTokens: meter.createCounter(METRIC.specAcceptedTokens, {
        unit: '{token}',
        description: 'Draft tokens accepted by verification',
      }),
      prefixCacheHitTokens: meter.createCounter(METRIC.prefixCacheHitTokens, {
        unit: '{token}',
        description: 'Prompt tokens whose KV came from the prefix cache (not prefilled)',
      }),
      poolDraftTokens: meter.createCounter(METRIC.specPoolDraftTokens, {
        unit: '{token}',
        description: 'Draft tokens proposed by the shared draft pools (of all draft tokens)',
      }),
      poolAcceptedTokens: meter.createCounter(METRIC.specPoolAcceptedTokens, {
        unit: '{token}',
        description: 'Shared-pool draft tokens accepted by verification',
      }),
      verifySteps: meter.createCounter(METRIC.specVerifySteps, {
        unit: '{step}',
        description: 'Forward passes after prefill',
      }),
      acceptedPerStep: meter.createHistogram(METRIC.specAcceptedPerStep, {
        unit: '{token}',
        description: 'Per request: accepted draft tokens per verify step',
        advice: { explicitBucketBoundaries: ACCEPTED_PER_STEP_BUCKETS },
      }),
    };
    meter
      .createObservableGauge(METRIC.requestsWaiting, {
        unit: '{request}',
        description: 'Requests waiting for a sequence slot',
      })
      .addCallback((r) => r.observe(pool().queued));
    meter
      .createObservableGauge(METRIC.requestsRunning, { unit: '{request}', description: 'Generations decoding' })
      .addCallback((r) => r.observe(pool().active));
    meter
      .createObservableGauge(METRIC.poolUtilization, { unit: '1', description: 'Busy sequence slots / slots' })
      .addCallback((r) => {
        const state = pool();
        r.observe(state.active / state.maxActive);
      });
  }

  /** Replica health: a gauge of replicas up and a counter of deaths, wedges, restarts and failed starts. */
  watchReplicas(replicas: () => { readonly up: number; readonly total: number }): void {
    this.meter
      .createObservableGauge(METRIC.replicasUp, { unit: '{replica}', description: 'Model replicas that can serve' })
      .addCallback((r) => r.observe(replicas().up));
    this.replicaEvents = this.meter.createCounter(METRIC.replicaEvents, {
      unit: '{event}',
      description: 'Model replica deaths, wedges, restarts and failed restarts',
    });
  }

  /**
   * The cross-request caches (issue 34): what the prefix cache holds against its bound, and what
   * both caches evicted — read from the replicas' last heartbeats at each collection.
   */
  watchCaches(caches: () => CacheStats | undefined): void {
    const gauge = (name: string, unit: string, description: string, pick: (c: CacheStats) => number) =>
      this.meter.createObservableGauge(name, { unit, description }).addCallback((r) => {
        const c = caches();
        if (c !== undefined) r.observe(pick(c));
      });
    const counter = (name: string, unit: string, description: string, pick: (c: CacheStats) => number) =>
      this.meter.createObservableCounter(name, { unit, description }).addCallback((r) => {
        const c = caches();
        if (c !== undefined) r.observe(pick(c));
      });
    gauge(METRIC.prefixCacheUsage, 'By', 'KV bytes the prefix cache holds', (c) => c.prefixCacheBytes);
    gauge(METRIC.prefixCacheLimit, 'By', "The prefix cache's bound (all replicas)", (c) => c.prefixCacheBytesMax);
    gauge(METRIC.prefixCacheEntries, '{sequence}', 'Sequences the prefix cache holds', (c) => c.prefixCacheEntries);
    counter(METRIC.prefixCacheEvictions, '{sequence}', 'Prefix-cache entries evicted', (c) => c.prefixCacheEvictions);
    gauge(METRIC.draftPoolTokens, '{token}', 'Tokens the shared draft pools hold', (c) => c.draftPoolTokens);
    gauge(METRIC.draftPoolScopes, '{scope}', 'Cache scopes with a draft pool', (c) => c.draftPoolScopes);
    counter(
      METRIC.draftPoolEvictedTokens,
      '{token}',
      'Draft-pool tokens evicted (full pools, scopes past the limit)',
      (c) => c.draftPoolEvictedTokens,
    );
  }

  replicaEvent(kind: string): void {
    this.replicaEvents?.add(1, { [ATTR.replicaEvent]: kind });
  }

  /** A SERVER span for one RPC; generations started under it become its children. */
  startRpc(method: string, parent: Context = otelContext.active()): { span: Span; context: Context } {
    const span = this.tracer.startSpan(
      `llm.v1.TextGeneration/${method}`,
      {
        kind: SpanKind.SERVER,
        attributes: { [ATTR.rpcSystem]: 'grpc', [ATTR.rpcService]: 'llm.v1.TextGeneration', [ATTR.rpcMethod]: method },
      },
      parent,
    );
    return { span, context: trace.setSpan(parent, span) };
  }

  endRpc(span: Span, grpcStatusCode: number, errorType?: string): void {
    span.setAttribute(ATTR.rpcGrpcStatusCode, grpcStatusCode);
    if (errorType !== undefined) {
      span.setAttribute(ATTR.errorType, errorType);
      span.setStatus({ code: SpanStatusCode.ERROR });
    }
    span.end();
  }

  /** A SERVER span for one HTTP request (the OpenAI-compatible API); its generations become its children. */
  startHttp(method: string, route: string, parent: Context): { span: Span; context: Context } {
    const span = this.tracer.startSpan(
      `${method} ${route}`,
      { kind: SpanKind.SERVER, attributes: { [ATTR.httpRequestMethod]: method, [ATTR.httpRoute]: route } },
      parent,
    );
    return { span, context: trace.setSpan(parent, span) };
  }

  /** Ends an HTTP span: as OpenTelemetry's HTTP conventions have it, a server span is an error only at 5xx. */
  endHttp(span: Span, status: number, errorType?: string): void {
    span.setAttribute(ATTR.httpResponseStatusCode, status);
    if (errorType !== undefined) span.setAttribute(ATTR.errorType, errorType);
    if (status >= 500) span.setStatus({ code: SpanStatusCode.ERROR });
    span.end();
  }

  /**
   * Passes `events` through, recording the generation's span and metrics. `classify` maps an
   * error to its gRPC status name and outcome (the transport owns that table).
   */
  async *observe(
    events: AsyncIterable<ServiceEvent>,
    meta: GenerationMeta,
    parent: Context,
    classify: (error: unknown) => FailureInfo,
  ): AsyncGenerator<ServiceEvent> {
    const started = performance.now();
    const request = meta.request;
    const sampling = request.sampling ?? GREEDY;
    const speculation = request.speculation ?? DEFAULT_SPECULATION;
    const span = this.tracer.startSpan(
      `${SPAN_TEXT_COMPLETION} ${meta.model}`,
      {
        kind: SpanKind.INTERNAL,
        attributes: {
          [ATTR.operationName]: SPAN_TEXT_COMPLETION,
          [ATTR.providerName]: this.providerName,
          [ATTR.requestModel]: meta.model,
          [ATTR.requestMaxTokens]: request.maxNewTokens,
          [ATTR.requestTemperature]: sampling.temperature,
          [ATTR.requestTopP]: sampling.topP,
          [ATTR.requestTopK]: sampling.topK,
          [ATTR.requestSeed]: sampling.seed,
          [ATTR.requestStopSequences]: [...(request.stopSequences ?? [])],
          [ATTR.requestStream]: meta.stream,
          [ATTR.responseId]: meta.requestId,
          [ATTR.requestId]: meta.requestId,
          [ATTR.rpcMethod]: meta.method,
          [ATTR.specMethod]: speculation.mode === 'off' ? 'none' : 'ngram',
          [ATTR.specDraftLength]: speculation.draftLength,
          [ATTR.specMaxDraftTokens]: speculation.mode === 'off' ? 0 : speculation.draftTokensMax,
        },
      },
      parent,
    );
    const base: Attributes = { [ATTR.requestModel]: meta.model };
    let firstTokenAt = 0;
    let outputTokens = 0;
    try {
      for await (const event of events) {
        if (event.type === 'delta') {
          if (firstTokenAt === 0 && event.tokenIds.length > 0) {
            firstTokenAt = performance.now();
            span.addEvent(EVENT_FIRST_TOKEN);
          }
          outputTokens += event.tokenIds.length;
        } else {
          this.finished(span, meta, event, started, firstTokenAt, base);
        }
        yield event;
      }
    } catch (error) {
      const failure = classify(error);
      span.setAttribute(ATTR.errorType, failure.errorType);
      span.setAttribute(ATTR.usageOutputTokens, outputTokens);
      if (error instanceof CancelledError) {
        span.addEvent(EVENT_CANCELLED);
        span.setAttribute(ATTR.usageInputTokens, error.progress.promptTokens);
      }
      if (failure.outcome === 'error') {
        span.recordException(error instanceof Error ? error : new Error(String(error)));
        span.setStatus({ code: SpanStatusCode.ERROR, message: failure.errorType });
      }
      this.instruments.requests.add(1, {
        ...base,
        [ATTR.outcome]: failure.outcome,
        [ATTR.errorType]: failure.errorType,
      });
      this.logger.info('request', {
        requestId: meta.requestId,
        method: meta.method,
        outcome: failure.outcome,
        errorType: failure.errorType,
        outputTokens,
        totalMs: Math.round(performance.now() - started),
        ...traceIds(span),
      });
      throw error;
    } finally {
      span.end();
    }
  }

  private finished(
    span: Span,
    meta: GenerationMeta,
    final: Extract<ServiceEvent, { type: 'final' }>,
    started: number,
    firstTokenAt: number,
    base: Attributes,
  ): void {
    const s = final.stats;
    const totalS = (performance.now() - started) / 1000;
    const ttftS = firstTokenAt > 0 ? (firstTokenAt - started) / 1000 : 0;
    const tokensPerStep = s.rounds > 0 ? final.completionTokens / s.rounds : 0;
    span.setAttributes({
      [ATTR.responseModel]: meta.model,
      [ATTR.responseFinishReasons]: [final.finishReason],
      [ATTR.usageInputTokens]: final.promptTokens,
      [ATTR.usageOutputTokens]: final.completionTokens,
      [ATTR.queueMs]: Math.round(final.queueMs * 100) / 100,
      [ATTR.ttftMs]: Math.round(ttftS * 1e5) / 100,
      [ATTR.specDraftTokens]: s.draftTokensProposed,
      [ATTR.specAcceptedTokens]: s.draftTokensAccepted,
      [ATTR.prefixCacheHitTokens]: final.cachedPromptTokens ?? 0,
      [ATTR.specPoolDraftTokens]: s.poolDraftTokens,
      [ATTR.specPoolAcceptedTokens]: s.poolAcceptedTokens,
      [ATTR.specVerifySteps]: s.rounds,
      [ATTR.specTau]: Math.round(tokensPerStep * 1000) / 1000,
    });
    const attrs = { ...base, [ATTR.finishReason]: final.finishReason };
    const m = this.instruments;
    m.duration.record(totalS, attrs);
    if (firstTokenAt > 0) m.ttft.record(ttftS, base);
    if (final.completionTokens > 1) m.tpot.record((totalS - ttftS) / (final.completionTokens - 1), base);
    m.tokens.record(final.promptTokens, { ...base, [ATTR.tokenType]: 'input' });
    m.tokens.record(final.completionTokens, { ...base, [ATTR.tokenType]: 'output' });
    m.queue.record(final.queueMs / 1000, base);
    m.requests.add(1, { ...attrs, [ATTR.outcome]: 'ok' });
    m.draftTokens.add(s.draftTokensProposed, base);
    m.acceptedTokens.add(s.draftTokensAccepted, base);
    m.prefixCacheHitTokens.add(final.cachedPromptTokens ?? 0, base);
    m.poolDraftTokens.add(s.poolDraftTokens, base);
    m.poolAcceptedTokens.add(s.poolAcceptedTokens, base);
    m.verifySteps.add(s.rounds, base);
    if (s.rounds > 0) m.acceptedPerStep.record(s.draftTokensAccepted / s.rounds, base);
    this.logger.info('request', {
      requestId: meta.requestId,
      method: meta.method,
      outcome: 'ok',
      finishReason: final.finishReason,
      inputTokens: final.promptTokens,
      outputTokens: final.completionTokens,
      queueMs: Math.round(final.queueMs),
      ttftMs: Math.round(ttftS * 1000),
      totalMs: Math.round(totalS * 1000),
      verifySteps: s.rounds,
      draftTokens: s.draftTokensProposed,
      acceptedTokens: s.draftTokensAccepted,
      ...traceIds(span),
    });
  }
}

function traceIds(span: Span): { traceId: string; spanId: string } {
  const c = span.spanContext();
  return { traceId: c.traceId, spanId: c.spanId };
}
