/**
 * `anpd serve`: configuration → model → engine → gRPC server; SIGTERM/SIGINT → drain → exit 0.
 */
import { basename, resolve } from 'node:path';
import { parseServerConfig, SERVE_HELP, wantsHelp } from '../config/server-config.js';
import { DEFAULT_GRAPH_OPTIONS } from '../convert/llama-graph.js';
import { InferenceService } from '../engine/inference-service.js';
import { createEnginePool } from '../engine/engine-pool.js';
import { createLogger } from '../log.js';
import { DEFAULT_MODEL, ensureDefaultModel } from '../model/default-model.js';
import { GenerationTelemetry } from '../telemetry/generation-telemetry.js';
import { startTelemetry } from '../telemetry/telemetry.js';
import { startGrpcServer } from '../transport/grpc/server.js';
import { createProgressReporter } from './progress.js';

export async function runServe(argv: readonly string[]): Promise<number> {
  if (wantsHelp(argv)) {
    process.stdout.write(SERVE_HELP);
    return 0;
  }
  const config = parseServerConfig(argv, process.env);
  const logger = createLogger(config.logLevel);
  // Before the server exists, so every span and metric has a provider to go to.
  const telemetry = startTelemetry({ serviceName: 'anpd-serve', metricsPort: config.metricsPort, metricsHost: config.metricsHost }, logger);
  let modelDir = config.modelDir;
  let batchModelDir = config.batchModelDir;
  if (modelDir === undefined) {
    const progress = createProgressReporter();
    modelDir = await ensureDefaultModel(DEFAULT_GRAPH_OPTIONS, progress);
    if (config.batchSlots > 0) batchModelDir = await ensureDefaultModel({ ...DEFAULT_GRAPH_OPTIONS, slots: config.batchSlots }, progress);
    progress.stop();
  }
  const loadStarted = performance.now();
  // The model runs on worker threads (one per replica): this thread stays free for gRPC I/O.
  const engine = await createEnginePool(
    modelDir,
    {
      executionProvider: config.executionProvider,
      intraOpThreads: config.intraOpThreads,
      kvCapacity: config.kvCapacity,
      ...(batchModelDir !== undefined ? { batchModelDir } : {}),
    },
    { replicas: config.engineReplicas },
  );
  logger.info('model loaded', {
    modelDir,
    model: engine.info.name,
    executionProvider: engine.info.executionProvider,
    replicas: engine.replicas.length,
    batchModelDir,
    loadMs: Math.round(performance.now() - loadStarted),
  });
  const service = new InferenceService({
    engine,
    modelName: config.modelName ?? (config.modelDir === undefined ? DEFAULT_MODEL.name.toLowerCase() : basename(resolve(config.modelDir))),
    pool: { maxActive: config.maxActiveSequences, maxQueued: config.maxQueuedRequests },
    limits: { maxNewTokensDefault: config.maxNewTokensDefault, maxNewTokensLimit: config.maxNewTokensLimit },
  });
  const generationTelemetry = new GenerationTelemetry(telemetry.tracer, telemetry.meter, logger, () => service.poolState);
  const server = await startGrpcServer(service, config, logger, generationTelemetry);
  process.stdout.write(
    `anpd: serving ${service.modelName} over gRPC on ${config.host}:${server.port} (llm.v1.TextGeneration, health, reflection)\n` +
      `try:  node dist/src/cli/main.js client --address localhost:${server.port} "What is the capital of France?"\n`,
  );
  const signal = await new Promise<NodeJS.Signals>((resolve) => {
    process.once('SIGTERM', () => resolve('SIGTERM'));
    process.once('SIGINT', () => resolve('SIGINT'));
  });
  logger.info('shutdown requested', { signal, graceMs: config.shutdownGraceMs });
  // A second signal means "now".
  const forceExit = () => process.exit(1);
  process.once('SIGTERM', forceExit);
  process.once('SIGINT', forceExit);
  const finishedInGrace = await server.shutdown(config.shutdownGraceMs);
  await engine.dispose();
  await telemetry.shutdown();
  logger.info('exiting', { finishedInGrace });
  return 0;
}
