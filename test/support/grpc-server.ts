import type { ChannelOptions, ServiceError } from '@grpc/grpc-js';
import test from 'ava';
import type { GenerationBackend } from '../../src/contract.js';
import { InferenceService } from '../../src/engine/inference-service.js';
import type { ReplicaSet } from '../../src/engine/replica-set.js';
import { SILENT_LOGGER } from '../../src/log.js';
import type { GenerationTelemetry } from '../../src/telemetry/generation-telemetry.js';
import { type ClientSecurity, TextGenerationClient } from '../../src/transport/grpc/client.js';
import type { GenerateChunkMsg } from '../../src/transport/grpc/messages.js';
import {
  DEFAULT_GRPC_SERVER_OPTIONS,
  type GrpcServerOptions,
  type RunningGrpcServer,
  startGrpcServer,
} from '../../src/transport/grpc/server.js';
import { WorkerEngine } from '../../src/engine/worker-engine.js';
import { defaultEngine, defaultModelDir, TEST_FORWARD_COST } from './default-model.js';

export const TEST_MODEL_NAME = 'smollm2-135m-instruct';

export interface TestServer {
  readonly address: string;
  readonly service: InferenceService;
  readonly running: RunningGrpcServer;
  /** `security`: TLS roots / client certificate and API key, for servers started with `tls` / `apiKeys`. */
  client(channelOptions?: ChannelOptions, security?: ClientSecurity): TextGenerationClient;
  close(): Promise<void>;
}

/** A real gRPC server on 127.0.0.1 (free port) over the default model, as `anpd serve` builds it. */
let sharedWorker: Promise<WorkerEngine> | undefined;
/** One engine worker per test file, as `anpd serve` runs it (fixed forward cost for reproducible drafts). */
export function defaultWorkerEngine(): Promise<WorkerEngine> {
  sharedWorker ??= defaultModelDir().then((dir) =>
    WorkerEngine.create(
      dir,
      { executionProvider: 'cpu', intraOpThreads: 0, kvCapacity: 2048 },
      { forwardCost: { mode: 'fixed', table: TEST_FORWARD_COST } },
    ),
  );
  return sharedWorker;
}

/**
 * A real gRPC server on 127.0.0.1 (free port) over the default model. `backend: 'worker'` (default)
 * runs the model on a worker thread as `anpd serve` does; 'in-process' uses the engine directly.
 */
export async function startTestServer(
  options: {
    maxActive?: number;
    maxQueued?: number;
    maxNewTokensLimit?: number;
    maxReceiveMessageBytes?: number;
    maxConnectionAgeMs?: number;
    maxConnectionAgeGraceMs?: number;
    backend?: 'worker' | 'in-process';
    /** A backend of the test's own (e.g. an EnginePool); not disposed by close(). */
    engine?: GenerationBackend;
    /** The engine's replicas (an EnginePool passed as `engine` too): readiness and ModelInfo follow them. */
    replicas?: ReplicaSet;
    telemetry?: (service: InferenceService) => GenerationTelemetry;
    tls?: GrpcServerOptions['tls'];
    apiKeys?: readonly string[];
  } = {},
): Promise<TestServer> {
  const engine =
    options.engine ?? (options.backend === 'in-process' ? await defaultEngine() : await defaultWorkerEngine());
  const service = new InferenceService({
    engine,
    ...(options.replicas !== undefined ? { replicas: options.replicas } : {}),
    modelName: TEST_MODEL_NAME,
    pool: { maxActive: options.maxActive ?? 16, maxQueued: options.maxQueued ?? 64 },
    limits: { maxNewTokensDefault: 64, maxNewTokensLimit: options.maxNewTokensLimit ?? 2048 },
  });
  const running = await startGrpcServer(
    service,
    {
      ...DEFAULT_GRPC_SERVER_OPTIONS,
      host: '127.0.0.1',
      port: 0,
      ...(options.maxReceiveMessageBytes !== undefined
        ? { maxReceiveMessageBytes: options.maxReceiveMessageBytes }
        : {}),
      ...(options.maxConnectionAgeMs !== undefined
        ? {
            maxConnectionAgeMs: options.maxConnectionAgeMs,
            maxConnectionAgeGraceMs: options.maxConnectionAgeGraceMs ?? 60_000,
          }
        : {}),
      ...(options.tls !== undefined ? { tls: options.tls } : {}),
      ...(options.apiKeys !== undefined ? { apiKeys: options.apiKeys } : {}),
    },
    SILENT_LOGGER,
    options.telemetry?.(service),
  );
  const address = `127.0.0.1:${running.port}`;
  const clients: TextGenerationClient[] = [];
  return {
    address,
    service,
    running,
    client: (channelOptions, security) => {
      const c = new TextGenerationClient(address, channelOptions, security);
      clients.push(c);
      return c;
    },
    close: async () => {
      for (const c of clients) c.close();
      await running.shutdown(0);
    },
  };
}

/** Polls until `predicate` holds or `timeoutMs` passes; returns whether it held. */
export async function waitFor(predicate: () => boolean, timeoutMs: number, stepMs = 10): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (predicate()) return true;
    await new Promise((r) => setTimeout(r, stepMs));
  }
  return predicate();
}

export interface CollectedStream {
  readonly text: string;
  readonly tokenIds: number[];
  readonly chunks: GenerateChunkMsg[];
}

export function joinChunks(chunks: readonly GenerateChunkMsg[]): CollectedStream {
  return {
    text: chunks.map((c) => c.text).join(''),
    tokenIds: chunks.flatMap((c) => [...c.token_ids]),
    chunks: [...chunks],
  };
}

/** Every chunk of a server stream, in order. */
export async function collectStream(stream: AsyncIterable<GenerateChunkMsg>): Promise<GenerateChunkMsg[]> {
  const chunks: GenerateChunkMsg[] = [];
  for await (const c of stream) chunks.push(c);
  return chunks;
}

/** The error a call failed with; fails the test if it succeeded. */
export async function grpcError(promise: Promise<unknown>): Promise<ServiceError> {
  try {
    await promise;
  } catch (error) {
    return error as ServiceError;
  }
  throw new Error('expected the call to fail');
}

/** One server for a whole test file, started by the first test that asks and closed after the last. */
export function lazyTestServer(options: Parameters<typeof startTestServer>[0] = {}): () => Promise<TestServer> {
  let started: Promise<TestServer> | undefined;
  test.after.always(async () => {
    await (await started)?.close();
  });
  return () => (started ??= startTestServer(options));
}
