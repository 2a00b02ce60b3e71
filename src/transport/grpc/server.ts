/**
 * The gRPC server: the TextGeneration handlers over an InferenceService, grpc.health.v1 health,
 * server reflection, keepalive and message limits, TLS, and the SIGTERM drain, put together from
 * their own pieces (text-generation-handlers, server-lifecycle, server-credentials).
 */
import { Server, type ServerOptions } from '@grpc/grpc-js';
import { ReflectionService } from '@grpc/reflection';
import type { HealthImplementation } from 'grpc-health-check';
import type { InferenceService } from '../../engine/inference-service.js';
import type { Logger } from '../../log.js';
import type { GenerationTelemetry } from '../../telemetry/generation-telemetry.js';
import { bearerTokenInterceptor } from './auth.js';
import { SERVICE_NAME, loadProtos } from './proto.js';
import { type ServerTls, serverCredentials, tlsMode } from './server-credentials.js';
import { ServerLifecycle } from './server-lifecycle.js';
import { textGenerationHandlers } from './text-generation-handlers.js';

export interface GrpcServerOptions {
  readonly host: string;
  /** 0 = any free port. */
  readonly port: number;
  readonly maxReceiveMessageBytes: number;
  readonly maxConcurrentStreams: number;
  /** Server pings an idle connection this often to find vanished clients. */
  readonly keepaliveTimeMs: number;
  readonly keepaliveTimeoutMs: number;
  /** GOAWAY each connection after this long (clients reconnect, an L4 Service rebalances); 0 = never. */
  readonly maxConnectionAgeMs?: number;
  /** How long calls in flight at that GOAWAY may go on; long enough for a whole generation. */
  readonly maxConnectionAgeGraceMs?: number;
  /** PEM certificate chain and key: the port speaks TLS; `clientCa` set: clients must present a cert it signed. Absent: plaintext (behind a mesh sidecar). */
  readonly tls?: ServerTls;
  /** Set: every service but health and reflection needs `authorization: Bearer <one of these>`. */
  readonly apiKeys?: readonly string[];
}

export const DEFAULT_GRPC_SERVER_OPTIONS: GrpcServerOptions = {
  host: '0.0.0.0',
  port: 50051,
  maxReceiveMessageBytes: 4 * 1024 * 1024,
  maxConcurrentStreams: 256,
  keepaliveTimeMs: 30_000,
  keepaliveTimeoutMs: 10_000,
};

export interface RunningGrpcServer {
  readonly port: number;
  readonly server: Server;
  readonly health: HealthImplementation;
  /**
   * Health NOT_SERVING, refuse new work (UNAVAILABLE), let in-flight generations finish for up to
   * `graceMs`, then close every connection. Resolves true if everything finished in time.
   */
  shutdown(graceMs: number): Promise<boolean>;
}

export async function startGrpcServer(
  service: InferenceService,
  options: GrpcServerOptions,
  logger: Logger,
  telemetry?: GenerationTelemetry,
): Promise<RunningGrpcServer> {
  const protos = loadProtos();
  const server = new Server(serverOptions(options));
  const lifecycle = new ServerLifecycle(service, logger);
  server.addService(
    protos.service,
    textGenerationHandlers({
      service,
      logger,
      ...(telemetry !== undefined ? { telemetry } : {}),
      drainSignal: lifecycle.drainSignal,
    }),
  );
  lifecycle.health.addToServer(server);
  new ReflectionService(protos.packageDefinition).addToServer(server);

  const port = await bind(server, options);
  logger.info('gRPC server listening', {
    host: options.host,
    port,
    grpcService: SERVICE_NAME,
    model: service.modelName,
    tls: tlsMode(options.tls),
    apiKeys: options.apiKeys?.length ?? 0,
  });
  // A key over plaintext is readable on the wire unless a sidecar or tunnel encrypts the hop.
  if (options.apiKeys !== undefined && options.tls === undefined)
    logger.warn(
      'API keys are checked on a plaintext port: use --tls-cert/--tls-key unless a sidecar encrypts the connection',
    );
  return { port, server, health: lifecycle.health, shutdown: (graceMs) => lifecycle.shutdown(server, graceMs) };
}

/** Message limits, keepalive, connection age and the API-key interceptor. */
function serverOptions(options: GrpcServerOptions): ServerOptions {
  return {
    'grpc.max_receive_message_length': options.maxReceiveMessageBytes,
    'grpc.max_concurrent_streams': options.maxConcurrentStreams,
    'grpc.keepalive_time_ms': options.keepaliveTimeMs,
    'grpc.keepalive_timeout_ms': options.keepaliveTimeoutMs,
    ...(options.maxConnectionAgeMs
      ? {
          'grpc.max_connection_age_ms': options.maxConnectionAgeMs,
          'grpc.max_connection_age_grace_ms': options.maxConnectionAgeGraceMs ?? 600_000,
        }
      : {}),
    ...(options.apiKeys !== undefined ? { interceptors: [bearerTokenInterceptor(options.apiKeys)] } : {}),
  };
}

function bind(server: Server, options: GrpcServerOptions): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    server.bindAsync(`${options.host}:${options.port}`, serverCredentials(options.tls), (error, bound) => {
      if (error) reject(error);
      else resolve(bound);
    });
  });
}
