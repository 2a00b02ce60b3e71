/**
 * Span names, attribute keys and metric names in one place: OpenTelemetry GenAI semantic
 * conventions where they exist, `app.llm.*` for what they lack (speculation, queueing).
 */
export const TRACER_NAME = 'anpd-serve';
export const METER_NAME = 'anpd-serve';

export const SPAN_TEXT_COMPLETION = 'text_completion';
export const EVENT_FIRST_TOKEN = 'gen_ai.first_token';
export const EVENT_CANCELLED = 'cancelled';

export const ATTR = {
  operationName: 'gen_ai.operation.name',
  providerName: 'gen_ai.provider.name',
  requestModel: 'gen_ai.request.model',
  requestMaxTokens: 'gen_ai.request.max_tokens',
  requestTemperature: 'gen_ai.request.temperature',
  requestTopP: 'gen_ai.request.top_p',
  requestTopK: 'gen_ai.request.top_k',
  requestSeed: 'gen_ai.request.seed',
  requestStopSequences: 'gen_ai.request.stop_sequences',
  requestStream: 'gen_ai.request.stream',
  responseId: 'gen_ai.response.id',
  responseModel: 'gen_ai.response.model',
  responseFinishReasons: 'gen_ai.response.finish_reasons',
  usageInputTokens: 'gen_ai.usage.input_tokens',
  usageOutputTokens: 'gen_ai.usage.output_tokens',
  tokenType: 'gen_ai.token.type',
  errorType: 'error.type',
  rpcSystem: 'rpc.system',
  rpcService: 'rpc.service',
  rpcMethod: 'rpc.method',
  rpcGrpcStatusCode: 'rpc.grpc.status_code',
  httpRequestMethod: 'http.request.method',
  httpRoute: 'http.route',
  httpResponseStatusCode: 'http.response.status_code',
  requestId: 'app.llm.request_id',
  queueMs: 'app.llm.queue_time_ms',
  ttftMs: 'app.llm.ttft_ms',
  specMethod: 'app.llm.spec.method',
  specDraftLength: 'app.llm.spec.draft_length',
  specMaxDraftTokens: 'app.llm.spec.max_draft_tokens',
  specDraftTokens: 'app.llm.spec.draft_tokens',
  specAcceptedTokens: 'app.llm.spec.accepted_tokens',
  specVerifySteps: 'app.llm.spec.verify_steps',
  prefixCacheHitTokens: 'app.llm.prefix_cache.hit_tokens',
  specPoolDraftTokens: 'app.llm.spec.pool_draft_tokens',
  specPoolAcceptedTokens: 'app.llm.spec.pool_accepted_tokens',
  specTau: 'app.llm.spec.tokens_per_step',
  finishReason: 'app.llm.finish_reason',
  outcome: 'app.llm.outcome',
  replicaEvent: 'app.llm.replica.event',
} as const;

export const METRIC = {
  requestDuration: 'gen_ai.server.request.duration',
  timeToFirstToken: 'gen_ai.server.time_to_first_token',
  timePerOutputToken: 'gen_ai.server.time_per_output_token',
  tokens: 'app.llm.tokens',
  requests: 'app.llm.requests',
  queueDuration: 'app.llm.queue.duration',
  requestsWaiting: 'app.llm.requests.waiting',
  requestsRunning: 'app.llm.requests.running',
  poolUtilization: 'app.llm.pool.utilization',
  specDraftTokens: 'app.llm.spec.draft_tokens',
  specAcceptedTokens: 'app.llm.spec.accepted_tokens',
  prefixCacheHitTokens: 'app.llm.prefix_cache.hit_tokens',
  prefixCacheUsage: 'app.llm.prefix_cache.usage',
  prefixCacheLimit: 'app.llm.prefix_cache.limit',
  prefixCacheEntries: 'app.llm.prefix_cache.entries',
  prefixCacheEvictions: 'app.llm.prefix_cache.evictions',
  draftPoolTokens: 'app.llm.draft_pool.tokens',
  draftPoolScopes: 'app.llm.draft_pool.scopes',
  draftPoolEvictedTokens: 'app.llm.draft_pool.evicted_tokens',
  specPoolDraftTokens: 'app.llm.spec.pool_draft_tokens',
  specPoolAcceptedTokens: 'app.llm.spec.pool_accepted_tokens',
  specVerifySteps: 'app.llm.spec.verify_steps',
  specAcceptedPerStep: 'app.llm.spec.accepted_per_step',
  replicasUp: 'app.llm.replicas.up',
  replicaEvents: 'app.llm.replica.events',
} as const;

/** Seconds; the GenAI semconv advisory boundaries. */
export const DURATION_BUCKETS_S = [
  0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];
export const TTFT_BUCKETS_S = [
  0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
export const TPOT_BUCKETS_S = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5];
export const TOKEN_BUCKETS = [1, 4, 16, 64, 256, 1024, 4096, 16384];
export const ACCEPTED_PER_STEP_BUCKETS = [0, 1, 2, 3, 4, 5, 6, 8, 12, 16];
