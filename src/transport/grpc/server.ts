/**
 * The gRPC server: TextGeneration handlers over an InferenceService, grpc.health.v1 health,
 * server reflection, keepalive and message limits, and the SIGTERM drain sequence.
 */
import {
  type sendUnaryData,
  Server,
  ServerCredentials,
  type ServerUnaryCall,
  type ServerWritableStream,
  type ServiceError,
  type UntypedServiceImplementation,
} from '@grpc/grpc-js';
import { ROOT_CONTEXT } from '@opentelemetry/api';
import { ReflectionService } from '@grpc/reflection';
import { HealthImplementation } from 'grpc-health-check';
import type { InferenceService } from '../../engine/inference-service.js';
import { InvalidRequestError } from '../../errors.js';
import type { Logger } from '../../log.js';
import type { GenerationTelemetry } from '../../telemetry/generation-telemetry.js';
import { bearerTokenInterceptor } from './auth.js';
import { BidiCall, type BidiStream } from './bidi-call.js';
import { CallWriter, createCallContext, effectiveError } from './call-context.js';
import {
  type GenerateChunkMsg,
  type GenerateRequestMsg,
  type GenerateResponseMsg,
  type ModelInfoResponseMsg,
  type TokenizeRequestMsg,
  type TokenLogprobMsg,
  deltaChunk,
  toGenerateResponse,
  parseChatMessages,
  parseGenerateRequest,
  toFinalInfo,
  toLogprobMsgs,
  toModelInfo,
} from './messages.js';
import { SERVICE_NAME, loadProtos } from './proto.js';
import { type MappedStatus, toGrpcStatus } from './status.js';
import { callerContext, finishRpc, observeGeneration } from './tracing.js';

/** Health service name for liveness probes: SERVING as long as the process answers, drain or not. */
export const LIVENESS_SERVICE = 'liveness';

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
  readonly tls?: { readonly certChain: Buffer; readonly privateKey: Buffer; readonly clientCa?: Buffer };
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
  /** Live bidi calls (tests look at them). */
  readonly bidiCalls: ReadonlySet<BidiCall>;
  /**
   * Health NOT_SERVING, refuse new work (UNAVAILABLE), let in-flight generations finish for up to
   * `graceMs`, then close every connection. Resolves true if everything finished in time.
   */
  shutdown(graceMs: number): Promise<boolean>;
}

/** After the drain, how long closing connections may take before they are cut. */
const SHUTDOWN_FLUSH_MS = 2000;

function toServiceError(error: unknown, logger: Logger, context: Record<string, unknown>): Partial<ServiceError> {
  const mapped = toGrpcStatus(error);
  if (mapped.internal) logger.error('request failed', { ...context, error });
  return { code: mapped.code, details: mapped.details };
}

export async function startGrpcServer(
  service: InferenceService,
  options: GrpcServerOptions,
  logger: Logger,
  telemetry?: GenerationTelemetry,
): Promise<RunningGrpcServer> {
  const protos = loadProtos();
  const server = new Server({
    'grpc.max_receive_message_length': options.maxReceiveMessageBytes,
    'grpc.max_concurrent_streams': options.maxConcurrentStreams,
    'grpc.keepalive_time_ms': options.keepaliveTimeMs,
    'grpc.keepalive_timeout_ms': options.keepaliveTimeoutMs,
    ...(options.maxConnectionAgeMs
      ? { 'grpc.max_connection_age_ms': options.maxConnectionAgeMs, 'grpc.max_connection_age_grace_ms': options.maxConnectionAgeGraceMs ?? 600_000 }
      : {}),
    ...(options.apiKeys !== undefined ? { interceptors: [bearerTokenInterceptor(options.apiKeys)] } : {}),
  });
  // '' and the service go NOT_SERVING when draining (readiness); 'liveness' stays SERVING while the
  // process answers, so a liveness probe never restarts a pod that is finishing its generations.
  const health = new HealthImplementation({ '': 'SERVING', [SERVICE_NAME]: 'SERVING', [LIVENESS_SERVICE]: 'SERVING' });
  // Readiness also tells whether any model replica can serve: NOT_SERVING while none is up (they
  // are being restarted), SERVING again when one is. Liveness stays SERVING: the process is fine.
  let draining = false;
  service.onReplicasChange(({ up }) => {
    if (draining) return;
    const status = up > 0 ? 'SERVING' : 'NOT_SERVING';
    health.setStatus('', status);
    health.setStatus(SERVICE_NAME, status);
  });
  const drainController = new AbortController();
  const bidiCalls = new Set<BidiCall>();

  const handlers: UntypedServiceImplementation = {
    Generate: (call: ServerUnaryCall<GenerateRequestMsg, GenerateResponseMsg>, callback: sendUnaryData<GenerateResponseMsg>) => {
      const context = createCallContext(call);
      const rpc = telemetry?.startRpc('Generate', callerContext(call.metadata));
      void (async () => {
        const requestId = call.request.request_id ?? '';
        let failure: MappedStatus | undefined;
        try {
          const parsed = parseGenerateRequest(call.request);
          // One output per sample (one unless n > 1); the response's top level is sample 0's.
          const outputs = Array.from({ length: parsed.request.n ?? 1 }, (_, index) => ({ index, text: '', token_ids: [] as number[], logprobs: [] as TokenLogprobMsg[] }));
          const texts = (ids: readonly number[]) => service.decodeTokens(parsed.model, ids);
          let promptLogprobs: TokenLogprobMsg[] | undefined;
          const meta = { method: 'Generate', requestId, model: service.modelName, request: parsed.request, stream: false };
          const events = service.generate(parsed.model, parsed.request, context.signal);
          for await (const event of observeGeneration(telemetry, events, meta, rpc?.context ?? ROOT_CONTEXT, context.signal)) {
            if (event.type === 'delta') {
              const out = outputs[event.index ?? 0]!;
              out.text += event.text;
              for (const id of event.tokenIds) out.token_ids.push(id);
              if (event.logprobs !== undefined) out.logprobs.push(...toLogprobMsgs(event.logprobs, texts));
              if (event.promptLogprobs !== undefined) promptLogprobs = toLogprobMsgs(event.promptLogprobs, texts);
            } else {
              callback(null, toGenerateResponse(requestId, outputs, toFinalInfo(event, parsed.seed), parsed.request.logprobs !== undefined, promptLogprobs));
            }
          }
        } catch (error) {
          failure = toGrpcStatus(effectiveError(error, context.signal));
          callback(toServiceError(effectiveError(error, context.signal), logger, { rpc: 'Generate', requestId }));
        } finally {
          context.dispose();
          finishRpc(telemetry, rpc, failure);
        }
      })();
    },

    GenerateStream: (call: ServerWritableStream<GenerateRequestMsg, GenerateChunkMsg>) => {
      const context = createCallContext(call);
      const writer = new CallWriter(call, context.signal);
      const rpc = telemetry?.startRpc('GenerateStream', callerContext(call.metadata));
      void (async () => {
        const requestId = call.request.request_id ?? '';
        let seq = 0;
        let failure: MappedStatus | undefined;
        try {
          const parsed = parseGenerateRequest(call.request);
          const meta = { method: 'GenerateStream', requestId, model: service.modelName, request: parsed.request, stream: true };
          const texts = (ids: readonly number[]) => service.decodeTokens(parsed.model, ids);
          const events = service.generate(parsed.model, parsed.request, context.signal);
          for await (const event of observeGeneration(telemetry, events, meta, rpc?.context ?? ROOT_CONTEXT, context.signal)) {
            const chunk: GenerateChunkMsg =
              event.type === 'delta'
                ? deltaChunk(requestId, seq++, event, texts)
                : { request_id: requestId, seq: seq++, text: '', token_ids: [], final: toFinalInfo(event, parsed.seed) };
            if (!(await writer.write(chunk))) return;
          }
          if (writer.open) call.end();
        } catch (error) {
          failure = toGrpcStatus(effectiveError(error, context.signal));
          if (writer.open) call.emit('error', toServiceError(effectiveError(error, context.signal), logger, { rpc: 'GenerateStream', requestId }));
        } finally {
          context.dispose();
          finishRpc(telemetry, rpc, failure);
        }
      })();
    },

    GenerateBidi: (call: BidiStream) => {
      const bidi = new BidiCall(call, service, logger, drainController.signal, telemetry);
      bidiCalls.add(bidi);
      call.on('close', () => bidiCalls.delete(bidi));
    },

    Tokenize: (call: ServerUnaryCall<TokenizeRequestMsg, unknown>, callback: sendUnaryData<unknown>) => {
      const rpc = telemetry?.startRpc('Tokenize', callerContext(call.metadata));
      let failure: MappedStatus | undefined;
      try {
        const msg = call.request;
        const model = msg.model ?? '';
        let ids: number[];
        if (msg.prompt === 'text') {
          if (!msg.text) throw new InvalidRequestError('text is empty');
          ids = service.tokenize(model, { kind: 'text', text: msg.text });
        } else if (msg.prompt === 'messages') {
          ids = service.tokenize(model, { kind: 'messages', messages: parseChatMessages('messages.messages', msg.messages) });
        } else {
          throw new InvalidRequestError('prompt is missing: set one of text, messages');
        }
        callback(null, { token_count: ids.length, token_ids: ids, tokens: msg.return_tokens ? service.decodeTokens(model, ids) : [] });
      } catch (error) {
        failure = toGrpcStatus(error);
        callback(toServiceError(error, logger, { rpc: 'Tokenize' }));
      } finally {
        finishRpc(telemetry, rpc, failure);
      }
    },

    ModelInfo: (call: ServerUnaryCall<{ model?: string }, ModelInfoResponseMsg>, callback: sendUnaryData<ModelInfoResponseMsg>) => {
      const rpc = telemetry?.startRpc('ModelInfo', callerContext(call.metadata));
      let failure: MappedStatus | undefined;
      try {
        callback(null, toModelInfo(service.modelInfo(call.request.model ?? ''), service.pool));
      } catch (error) {
        failure = toGrpcStatus(error);
        callback(toServiceError(error, logger, { rpc: 'ModelInfo' }));
      } finally {
        finishRpc(telemetry, rpc, failure);
      }
    },
  };

  server.addService(protos.service, handlers);
  health.addToServer(server);
  new ReflectionService(protos.packageDefinition).addToServer(server);

  const credentials = options.tls
    ? ServerCredentials.createSsl(options.tls.clientCa ?? null, [{ cert_chain: options.tls.certChain, private_key: options.tls.privateKey }], options.tls.clientCa !== undefined)
    : ServerCredentials.createInsecure();
  const port = await new Promise<number>((resolve, reject) => {
    server.bindAsync(`${options.host}:${options.port}`, credentials, (error, bound) => {
      if (error) reject(error);
      else resolve(bound);
    });
  });
  const tls = options.tls === undefined ? 'off' : options.tls.clientCa !== undefined ? 'mutual' : 'on';
  logger.info('gRPC server listening', { host: options.host, port, grpcService: SERVICE_NAME, model: service.modelName, tls, apiKeys: options.apiKeys?.length ?? 0 });
  // A key over plaintext is readable on the wire unless a sidecar or tunnel encrypts the hop.
  if (options.apiKeys !== undefined && options.tls === undefined) logger.warn('API keys are checked on a plaintext port: use --tls-cert/--tls-key unless a sidecar encrypts the connection');

  let shuttingDown: Promise<boolean> | undefined;
  const shutdown = (graceMs: number): Promise<boolean> => {
    shuttingDown ??= (async () => {
      draining = true;
      health.setStatus('', 'NOT_SERVING');
      health.setStatus(SERVICE_NAME, 'NOT_SERVING');
      service.startDraining();
      drainController.abort();
      logger.info('draining', { graceMs, ...service.poolState });
      let timer: NodeJS.Timeout | undefined;
      const finished = await Promise.race([
        service.whenIdle().then(() => true),
        new Promise<boolean>((resolve) => {
          timer = setTimeout(() => resolve(false), graceMs);
        }),
      ]);
      clearTimeout(timer);
      // Every call has ended by now (or the grace is spent): GOAWAY lets the last statuses flush;
      // whatever is still open after a short wait is cut.
      await new Promise<void>((resolve) => {
        const cut = setTimeout(() => {
          server.forceShutdown();
          resolve();
        }, finished ? SHUTDOWN_FLUSH_MS : 0);
        server.tryShutdown(() => {
          clearTimeout(cut);
          resolve();
        });
      });
      logger.info('server stopped', { finishedInGrace: finished });
      return finished;
    })();
    return shuttingDown;
  };

  return { port, server, health, bidiCalls, shutdown };
}
