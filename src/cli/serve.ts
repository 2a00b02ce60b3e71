/**
 * `anpd serve`: configuration → model → engine → gRPC server; SIGTERM/SIGINT → drain → exit 0.
 *
 * Cold start is on the critical path of every scale-up, so the order is chosen for it: the engine
 * worker starts loading the model first, and this thread imports and starts telemetry and the gRPC
 * server meanwhile. The forward-cost table comes from the cache, or is measured after the server
 * is SERVING (the first adaptive generation waits for it). One `started` log line gives the
 * breakdown (docs/perf-notes.md, "Cold start").
 */
import {
  batchSlotLadder,
  parseServerConfig,
  SERVE_HELP,
  type ServerConfig,
  wantsHelp,
} from '../config/server-config.js';
import { loadTransportSecurity, type TransportSecurity } from '../config/transport-security.js';
import { DEFAULT_GRAPH_OPTIONS, type GraphOptions } from '../convert/decoder-graph.js';
import { EnginePool } from '../engine/engine-pool.js';
import { DEFER_MEASUREMENT, forwardCostPath, readForwardCost, writeForwardCost } from '../engine/forward-cost.js';
import { ConfigError } from '../errors.js';
import { createLogger } from '../log.js';
import { cacheDir } from '../paths.js';
import { ensureModelArgument } from '../registry/model-cache.js';
import { classifyModelArgument, modelArgumentName, modelDisplayName } from '../registry/model-registry.js';
import { probeExecutionProvider } from '../runtime/gpu-probe.js';
import { nativeAddonFileProblem, nativeAddonProblem } from '../runtime/native-run.js';
import type { GrpcServerOptions } from '../transport/grpc/server.js';
import { createProgressReporter } from './progress.js';
import { createStartupTimer } from './startup-timer.js';

export async function runServe(argv: readonly string[]): Promise<number> {
  if (wantsHelp(argv)) {
    process.stdout.write(SERVE_HELP);
    return 0;
  }
  const timer = createStartupTimer();
  const config = parseServerConfig(argv, process.env, probeExecutionProvider);
  // Before the model: a missing certificate or key file stops the start in milliseconds, not after a load.
  const security = loadTransportSecurity(config);
  const logger = createLogger(config.logLevel);
  // Before the model too: a missing addon file stops a required start at once (no load: a file check).
  const addonMissing = config.nativeRun === 'required' ? nativeAddonFileProblem() : undefined;
  if (addonMissing !== undefined) throw new ConfigError(`${NATIVE_REQUIRED}: ${addonMissing}`);
  timer.mark('configParsed');
  let batchModelDir: readonly string[] | undefined = config.batchModelDir?.split(',').filter((d) => d !== '');
  const pagedBatching = config.executionProvider === 'cuda' && config.nativeRun !== 'off' && config.batchSlots > 0;
  // The default model, a registry model (--model gemma3-270m) or --model FILE.gguf: fetched and
  // converted into the cache on first use.
  const modelArgument = classifyModelArgument(config.modelDir);
  let modelDir = modelArgument.kind === 'dir' ? modelArgument.path : '';
  if (modelArgument.kind !== 'dir') {
    const progress = createProgressReporter();
    // CUDA runs the float16 graph (ORT's CUDA attention takes only 16-bit types).
    const graph =
      config.executionProvider === 'cuda'
        ? { ...DEFAULT_GRAPH_OPTIONS, dtype: 'float16' as const }
        : DEFAULT_GRAPH_OPTIONS;
    const ensure = (options: GraphOptions) => ensureModelArgument(modelArgument, options, progress);
    try {
      if (pagedBatching) {
        // cuda's device path batches on one graph for any number of sequences (PagedAttention).
        modelDir = await ensure({ ...graph, attention: 'paged' });
      } else modelDir = await ensure(graph);
      if (config.batchSlots > 0 && !pagedBatching) {
        // A ladder (2, 4, 8, …, K): each batch runs on the smallest graph that holds it.
        const ladder: string[] = [];
        for (const slots of batchSlotLadder(config.batchSlots)) ladder.push(await ensure({ ...graph, slots }));
        batchModelDir = ladder;
      }
    } finally {
      // Also on a failed conversion: the bars' timer would keep the process alive.
      progress.stop();
    }
  }
  timer.mark('modelResolved');
  // 'required' runs as 'auto' (and keys the forward-cost cache as it): the check is ours, below.
  const runtime = {
    executionProvider: config.executionProvider,
    intraOpThreads: config.intraOpThreads,
    kvCapacity: config.kvCapacity,
    nativeRun: config.nativeRun === 'off' ? ('off' as const) : ('auto' as const),
    ...(pagedBatching
      ? {
          batchSlots: config.batchSlots,
          batchInvariant: config.batchInvariant === 'on',
          prefillTokensPerStep: config.prefillTokensPerStep,
        }
      : {}),
  };
  const costCache = forwardCostPath(cacheDir(), modelDir, {
    ...runtime,
    replicas: config.engineReplicas,
    ...(batchModelDir !== undefined ? { batchModelDir } : {}),
  });
  const cachedCost = readForwardCost(costCache.path, costCache.key);
  // The model runs on worker threads (one per replica): this thread stays free for gRPC I/O.
  const enginePromise = EnginePool.create(
    modelDir,
    { ...runtime, ...(batchModelDir !== undefined ? { batchModelDir } : {}) },
    {
      replicas: config.engineReplicas,
      ...(config.engineIsolation !== 'auto' ? { isolation: config.engineIsolation } : {}),
      supervision: { forwardTimeoutMs: config.forwardTimeoutMs, restartsPerMinuteMax: config.replicaRestartsPerMinute },
      // The cached table, else measured after SERVING (below) and written to the cache.
      forwardCost: cachedCost !== undefined ? { mode: 'fixed', table: cachedCost } : DEFER_MEASUREMENT,
      prefixCacheBytes: config.prefixCacheMb * 2 ** 20,
    },
  );
  // (The first worker is spawned and this thread has read the tokenizer.)
  timer.mark('tokenizerLoaded');
  // Handled where it is awaited; this keeps a load failure during the imports from going unhandled.
  enginePromise.catch(() => undefined);
  // Meanwhile: the modules only serving needs. Telemetry starts before the server exists, so every
  // span and metric has a provider to go to.
  const [{ startTelemetry }, { GenerationTelemetry }, { startGrpcServer }, { InferenceService }] = await Promise.all([
    import('../telemetry/telemetry.js'),
    import('../telemetry/generation-telemetry.js'),
    import('../transport/grpc/server.js'),
    import('../engine/inference-service.js'),
  ]);
  timer.mark('importsDone');
  const telemetry = await startTelemetry(
    { serviceName: 'anpd-serve', metricsPort: config.metricsPort, metricsHost: config.metricsHost },
    logger,
  );
  timer.mark('telemetryStarted');
  const engine = await enginePromise;
  timer.markAt('workerEvaluated', engine.startupTimes.evaluatedAt);
  timer.markAt('modelLoaded', engine.startupTimes.modelLoadedAt);
  timer.mark('engineReady');
  const fallback = nativeFallback(config, engine.info);
  if (fallback !== undefined) {
    if (config.nativeRun === 'required') {
      await engine.dispose();
      await telemetry.shutdown();
      throw new ConfigError(`${NATIVE_REQUIRED}: ${fallback}`);
    }
    logger.warn('native addon not loaded: onnxruntime-node runs every forward', {
      cause: fallback,
      cost: NATIVE_FALLBACK_COST,
    });
  }
  // The registry's name reads better than a GGUF's general.name ("Smollm2 135M 8k Lc100K Mix1 Ep2").
  const displayName = modelDisplayName(modelArgument, engine.info.name);
  logger.info('model loaded', {
    modelDir,
    model: displayName,
    executionProvider: engine.info.executionProvider,
    runner: engine.info.runner,
    attention: engine.info.attention,
    dtype: engine.info.dtype,
    replicas: engine.replicas.length,
    replicaPids: engine.replicas.map((r) => r.pid).filter((pid) => pid !== undefined),
    batchModelDir,
    forwardCost: cachedCost !== undefined ? 'cached' : engine.forwardCost !== undefined ? 'measured' : 'deferred',
  });
  const service = new InferenceService({
    engine,
    replicas: engine,
    modelName: config.modelName ?? modelArgumentName(modelArgument),
    displayName,
    pool: { maxActive: config.maxActiveSequences, maxQueued: config.maxQueuedRequests },
    limits: { maxNewTokensDefault: config.maxNewTokensDefault, maxNewTokensLimit: config.maxNewTokensLimit },
    draftPools: config.draftPool === 'on',
  });
  const generationTelemetry = new GenerationTelemetry(
    telemetry.tracer,
    telemetry.meter,
    logger,
    () => service.poolState,
  );
  generationTelemetry.watchReplicas(() => service.replicas);
  generationTelemetry.watchCaches(() => service.cacheStats);
  // One line and one count per replica death, wedge, restart and failed start; the pool does neither itself.
  engine.onReplicaEvent((event) => {
    generationTelemetry.replicaEvent(event.kind);
    const fields = {
      replica: event.replica,
      pid: event.pid,
      reason: event.reason,
      restartInMs: event.restartInMs,
      restartsLastMinute: event.restartsLastMinute,
      replicasUp: event.up,
      replicas: event.total,
    };
    if (event.kind === 'restarted') logger.info('replica restarted', fields);
    else if (event.kind === 'restart-failed') logger.error('replica restart failed', fields);
    else logger.error(event.kind === 'wedged' ? 'replica wedged' : 'replica died', fields);
    if (event.up === 0 && event.kind !== 'restarted')
      logger.error('no model replica is up: readiness is NOT_SERVING until one restarts', { replicas: event.total });
  });
  // Handled from before the port opens: a SIGTERM right after "listening" drains instead of killing.
  const stopSignal = new Promise<NodeJS.Signals>((resolve) => {
    process.once('SIGTERM', () => resolve('SIGTERM'));
    process.once('SIGINT', () => resolve('SIGINT'));
  });
  const server = await startGrpcServer(service, grpcServerOptions(config, security), logger, generationTelemetry);
  const http =
    config.httpPort === 0
      ? undefined
      : await (await import('../transport/openai/openai-server.js')).startOpenAiServer(
          service,
          {
            host: config.host,
            port: config.httpPort,
            ...(security.apiKeys !== undefined ? { apiKeys: security.apiKeys } : {}),
            ...(security.tls !== undefined ? { tls: security.tls } : {}),
          },
          logger,
          generationTelemetry,
        );
  if (http !== undefined) logger.info('openai http api listening', { port: http.port });
  timer.mark('serving');
  logger.info('started', { startupMs: timer.phases() });
  process.stdout.write(
    `anpd: serving ${service.modelName} (${displayName}) over gRPC on ${config.host}:${server.port} (llm.v1.TextGeneration, health, reflection)\n` +
      `try:  node dist/src/cli/main.js client --address localhost:${server.port}${security.tls ? ' --tls-ca CA.pem' : ''}${security.apiKeys ? ' --api-key-file KEYS' : ''} "What is the capital of France?"\n`,
  );
  let stopping = false;
  if (cachedCost === undefined) {
    // After SERVING, not before: a replica takes traffic ~1 s sooner, and only adaptive
    // generations that arrive meanwhile wait for the table (they cannot decide K without it).
    engine.calibrate().then(
      (table) =>
        logger.info('forward cost measured', {
          cached: writeForwardCost(costCache.path, costCache.key, table),
          path: costCache.path,
        }),
      (error: unknown) => {
        if (!stopping) logger.warn('forward cost measurement failed', { error });
      },
    );
  }
  const signal = await stopSignal;
  stopping = true;
  logger.info('shutdown requested', { signal, graceMs: config.shutdownGraceMs });
  // A second signal means "now".
  const forceExit = () => process.exit(1);
  process.once('SIGTERM', forceExit);
  process.once('SIGINT', forceExit);
  const [finishedInGrace] = await Promise.all([
    server.shutdown(config.shutdownGraceMs),
    http?.close(config.shutdownGraceMs),
  ]);
  await engine.dispose();
  await telemetry.shutdown();
  logger.info('exiting', { finishedInGrace });
  return 0;
}

/** Field by field, so a renamed setting on either side is a compile error, not a dropped option. */
function grpcServerOptions(config: ServerConfig, security: TransportSecurity): GrpcServerOptions {
  return {
    host: config.host,
    port: config.port,
    maxReceiveMessageBytes: config.maxReceiveMessageBytes,
    maxConcurrentStreams: config.maxConcurrentStreams,
    keepaliveTimeMs: config.keepaliveTimeMs,
    keepaliveTimeoutMs: config.keepaliveTimeoutMs,
    maxConnectionAgeMs: config.maxConnectionAgeMs,
    maxConnectionAgeGraceMs: config.maxConnectionAgeGraceMs,
    ...(security.tls !== undefined ? { tls: security.tls } : {}),
    ...(security.apiKeys !== undefined ? { apiKeys: security.apiKeys } : {}),
  };
}

const NATIVE_REQUIRED = '--native-run required (ANPD_NATIVE=required) and the native addon is not usable';

/** What running without the addon costs (README.md, "Development"; docs/benchmarks.md). */
const NATIVE_FALLBACK_COST =
  "2.9-8x slower decode on the CPU (64 to 2,048 prompt tokens), no CUDA device path, and ORT's attention kernel, whose greedy outputs differ from the native kernel's in near-ties";

/**
 * Why the forwards run on onnxruntime-node where the addon would run them (our converted graph on
 * cpu or cuda, --native-run not off), or undefined. Only then is the addon loaded on this thread, for its error.
 */
function nativeFallback(
  config: ServerConfig,
  info: { readonly kind: string; readonly runner: string },
): string | undefined {
  if (config.nativeRun === 'off' || info.runner === 'native' || info.kind !== 'anpd-gqa') return undefined;
  if (config.executionProvider !== 'cpu' && config.executionProvider !== 'cuda') return undefined;
  return nativeAddonProblem() ?? 'the engine did not load it (its replicas run onnxruntime-node)';
}
