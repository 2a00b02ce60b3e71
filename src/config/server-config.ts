/**
 * Server configuration: parsed once from flags and the environment (flags win), validated, frozen.
 * The table of settings lives in docs/configuration.md — keep both in step.
 */
import { availableParallelism } from 'node:os';
import { parseArgs } from 'node:util';
import { MAX_NEW_TOKENS_LIMIT } from '../contract.js';
import { ENGINE_REPLICAS_LIMIT } from '../engine/engine-pool.js';
import { ConfigError } from '../errors.js';
import type { LogLevel } from '../log.js';
import {
  EXECUTION_PROVIDERS,
  type ExecutionProviderName,
  NATIVE_RUN_MODES,
  PAGED_BATCH_SLOTS_MAX,
  PREFILL_TOKENS_PER_STEP_DEFAULT,
  PREFILL_TOKENS_PER_STEP_MAX,
  PREFILL_TOKENS_PER_STEP_MIN,
  WEBGPU_BATCH_WIDTH_MAX,
} from '../runtime/types.js';

/** The runtime's native-run modes, plus 'required': 'auto', and without the addon the server does not start. */
export const SERVE_NATIVE_RUN_MODES = [...NATIVE_RUN_MODES, 'required'] as const;
export type ServeNativeRunMode = (typeof SERVE_NATIVE_RUN_MODES)[number];

export interface ServerConfig {
  /** @default '0.0.0.0' */
  readonly host: string;
  /** @default 50051 */
  readonly port: number;
  /** Model directory (ours or an Optimum export); undefined = the default model, fetched on first use. */
  readonly modelDir: string | undefined;
  /** Name requests use in `model`. @default 'smollm2-135m-instruct' for the default model, else the directory's name */
  readonly modelName: string | undefined;
  /** Sequences decoding at once. @default max(4, 2 × cores) */
  readonly maxActiveSequences: number;
  /** Requests waiting for sequence slots (admission queue); beyond it RESOURCE_EXHAUSTED. @default 8 × maxActiveSequences */
  readonly maxQueuedRequests: number;
  /** @default 256 */
  readonly maxNewTokensDefault: number;
  /** @default 4096 */
  readonly maxNewTokensLimit: number;
  /** Resolved: the setting's default, auto, becomes cuda where it is usable (runtime/gpu-probe.ts), else cpu. @default 'auto' */
  readonly executionProvider: ExecutionProviderName;
  /** ONNX Runtime intra-op threads; 0 = one per core. @default 0 */
  readonly intraOpThreads: number;
  /**
   * Model replicas, each with its own ORT session on its own thread (a process each on a GPU);
   * threads are shared out when 0. @default cpu: max(1, cores / 4); GPU: 2
   */
  readonly engineReplicas: number;
  /** Where each replica runs: a worker thread, or a child process of its own. @default auto (process on a GPU with ≥ 2 replicas, else thread) */
  readonly engineIsolation: 'auto' | 'thread' | 'process';
  /** A replica whose forwards make no progress this long is declared wedged and replaced; 0 = no watchdog. @default 60000 */
  readonly forwardTimeoutMs: number;
  /** Restarts of one replica within any minute; more wait for the window (backoff 0.25 s doubling to 30 s). @default 5 */
  readonly replicaRestartsPerMinute: number;
  /**
   * Most sequences per batched forward: the default model's 2-, 4-, …, K-slot graphs are converted
   * on first use (a batch runs on the smallest that holds it); with --model, give --batch-model.
   * 0 = every sequence runs its own forwards. @default 0
   */
  readonly batchSlots: number;
  /** Shared draft pools: requests of one cache scope (API key + salt) draft from each other's text. @default on */
  readonly draftPool: 'on' | 'off';
  /** Prefix KV cache per replica, MiB (CPU): prompts that start like an earlier one of their scope skip that prefill. 0 = off. @default 128 */
  readonly prefixCacheMb: number;
  /** cuda batching (paged graph): every step the full-width shape, so outputs are bitwise the same at any load. @default true */
  readonly batchInvariant: 'on' | 'off';
  /** With --batch-slots on cuda: token rows of each step's packed prefill forward. */
  readonly prefillTokensPerStep: number;
  /** K-slot batch graphs of --model's weights, comma-separated (anpd convert --slots K). @default none */
  readonly batchModelDir: string | undefined;
  /** KV positions a sequence may grow to (clamped to the model's context). @default 8192 */
  readonly kvCapacity: number;
  /**
   * CPU single-sequence forwards through the native runner (outputs written in place) when it is
   * built; 'off' runs every forward through onnxruntime-node; 'required' is 'auto' that refuses to
   * start without the addon (ANPD_NATIVE=required, as the Dockerfile and CI set). @default 'auto'
   */
  readonly nativeRun: ServeNativeRunMode;
  /** SIGTERM: how long in-flight generations may run before connections are cut. @default 30000 */
  readonly shutdownGraceMs: number;
  /** @default 4194304 */
  readonly maxReceiveMessageBytes: number;
  /** HTTP/2 streams per connection. @default 256 */
  readonly maxConcurrentStreams: number;
  /** @default 30000 */
  readonly keepaliveTimeMs: number;
  /** @default 10000 */
  readonly keepaliveTimeoutMs: number;
  /** GOAWAY a connection after this long so clients reconnect and rebalance; 0 = never. @default 0 */
  readonly maxConnectionAgeMs: number;
  /** After that GOAWAY, how long in-flight calls may go on before the connection is cut. @default 600000 */
  readonly maxConnectionAgeGraceMs: number;
  /** @default 'info' */
  readonly logLevel: LogLevel;
  /** Prometheus scrape endpoint port; 0 turns it off. @default 9464 */
  readonly metricsPort: number;
  /** OpenAI-compatible HTTP API port (/v1/chat/completions, /v1/completions, /v1/models); 0 turns it off. @default 0 */
  readonly httpPort: number;
  /** @default '0.0.0.0' */
  readonly metricsHost: string;
  /** PEM certificate chain: the gRPC port speaks TLS (with tlsKeyFile). @default none (plaintext) */
  readonly tlsCertFile: string | undefined;
  /** PEM private key of tlsCertFile. @default none */
  readonly tlsKeyFile: string | undefined;
  /** PEM CA(s) that must have signed every client's certificate (mutual TLS). @default none */
  readonly tlsClientCaFile: string | undefined;
  /** Bearer tokens, one per line: TextGeneration calls need `authorization: Bearer <key>`. @default none (open) */
  readonly apiKeyFile: string | undefined;
}

interface Setting {
  readonly flag: string;
  readonly env: readonly string[];
}

/** Flag and environment names of every setting (docs/configuration.md lists them). */
export const SERVER_SETTINGS = {
  host: { flag: 'host', env: ['ANPD_HOST'] },
  port: { flag: 'port', env: ['ANPD_PORT', 'PORT'] },
  modelDir: { flag: 'model', env: ['ANPD_MODEL', 'ANPD_MODEL_DIR'] },
  modelName: { flag: 'model-name', env: ['ANPD_MODEL_NAME'] },
  maxActiveSequences: { flag: 'max-active-sequences', env: ['ANPD_MAX_ACTIVE_SEQUENCES'] },
  maxQueuedRequests: { flag: 'max-queued-requests', env: ['ANPD_MAX_QUEUED_REQUESTS'] },
  maxNewTokensDefault: { flag: 'max-new-tokens-default', env: ['ANPD_MAX_NEW_TOKENS_DEFAULT'] },
  maxNewTokensLimit: { flag: 'max-new-tokens-limit', env: ['ANPD_MAX_NEW_TOKENS_LIMIT'] },
  executionProvider: { flag: 'execution-provider', env: ['ANPD_EXECUTION_PROVIDER'] },
  intraOpThreads: { flag: 'threads', env: ['ANPD_THREADS'] },
  engineReplicas: { flag: 'engine-replicas', env: ['ANPD_ENGINE_REPLICAS'] },
  engineIsolation: { flag: 'engine-isolation', env: ['ANPD_ENGINE_ISOLATION'] },
  forwardTimeoutMs: { flag: 'forward-timeout-ms', env: ['ANPD_FORWARD_TIMEOUT_MS'] },
  replicaRestartsPerMinute: { flag: 'replica-restarts-per-minute', env: ['ANPD_REPLICA_RESTARTS_PER_MINUTE'] },
  batchSlots: { flag: 'batch-slots', env: ['ANPD_BATCH_SLOTS'] },
  batchInvariant: { flag: 'batch-invariant', env: ['ANPD_BATCH_INVARIANT'] },
  draftPool: { flag: 'draft-pool', env: ['ANPD_DRAFT_POOL'] },
  prefixCacheMb: { flag: 'prefix-cache-mb', env: ['ANPD_PREFIX_CACHE_MB'] },
  prefillTokensPerStep: { flag: 'prefill-tokens-per-step', env: ['ANPD_PREFILL_TOKENS_PER_STEP'] },
  batchModelDir: { flag: 'batch-model', env: ['ANPD_BATCH_MODEL_DIR'] },
  kvCapacity: { flag: 'kv-capacity', env: ['ANPD_KV_CAPACITY'] },
  nativeRun: { flag: 'native-run', env: ['ANPD_NATIVE_RUN', 'ANPD_NATIVE'] },
  shutdownGraceMs: { flag: 'shutdown-grace-ms', env: ['ANPD_SHUTDOWN_GRACE_MS'] },
  maxReceiveMessageBytes: { flag: 'max-receive-message-bytes', env: ['ANPD_MAX_RECEIVE_MESSAGE_BYTES'] },
  maxConcurrentStreams: { flag: 'max-concurrent-streams', env: ['ANPD_MAX_CONCURRENT_STREAMS'] },
  keepaliveTimeMs: { flag: 'keepalive-time-ms', env: ['ANPD_KEEPALIVE_TIME_MS'] },
  keepaliveTimeoutMs: { flag: 'keepalive-timeout-ms', env: ['ANPD_KEEPALIVE_TIMEOUT_MS'] },
  maxConnectionAgeMs: { flag: 'max-connection-age-ms', env: ['ANPD_MAX_CONNECTION_AGE_MS'] },
  maxConnectionAgeGraceMs: { flag: 'max-connection-age-grace-ms', env: ['ANPD_MAX_CONNECTION_AGE_GRACE_MS'] },
  logLevel: { flag: 'log-level', env: ['ANPD_LOG_LEVEL'] },
  metricsPort: { flag: 'metrics-port', env: ['ANPD_METRICS_PORT'] },
  httpPort: { flag: 'http-port', env: ['ANPD_HTTP_PORT'] },
  metricsHost: { flag: 'metrics-host', env: ['ANPD_METRICS_HOST'] },
  tlsCertFile: { flag: 'tls-cert', env: ['ANPD_TLS_CERT'] },
  tlsKeyFile: { flag: 'tls-key', env: ['ANPD_TLS_KEY'] },
  tlsClientCaFile: { flag: 'tls-client-ca', env: ['ANPD_TLS_CLIENT_CA'] },
  apiKeyFile: { flag: 'api-key-file', env: ['ANPD_API_KEY_FILE'] },
} as const satisfies Record<keyof ServerConfig, Setting>;

export const SERVE_HELP = `anpd serve — start the gRPC server (llm.v1.TextGeneration, health, reflection)

Options (flag, environment variable, default):
  --host HOST                        ANPD_HOST                       0.0.0.0
  --port N                           ANPD_PORT or PORT               50051
  --model DIR|FILE.gguf|NAME         ANPD_MODEL (or ANPD_MODEL_DIR)  smollm2-135m-instruct; a GGUF file is converted into
                                                                     the cache on first use; NAME (gemma3-270m) is fetched
  --model-name NAME                  ANPD_MODEL_NAME                 the known model's NAME, or the directory's or
                                                                     file's name
  --max-active-sequences N           ANPD_MAX_ACTIVE_SEQUENCES       max(4, 2 × cores)
  --max-queued-requests N            ANPD_MAX_QUEUED_REQUESTS        8 × max-active-sequences
  --max-new-tokens-default N         ANPD_MAX_NEW_TOKENS_DEFAULT     256
  --max-new-tokens-limit N           ANPD_MAX_NEW_TOKENS_LIMIT       4096
  --execution-provider auto|cpu|webgpu|cuda  ANPD_EXECUTION_PROVIDER auto (cuda where its provider is installed,
                                                                     the addon built and a GPU present; else cpu)
  --threads N                        ANPD_THREADS                    0 (one per core, shared out among replicas)
  --engine-replicas N                ANPD_ENGINE_REPLICAS            cpu: max(1, cores / 4); GPU: 2 (model copies,
                                                                     each with its own session and thread/process)
  --engine-isolation auto|thread|process  ANPD_ENGINE_ISOLATION      auto (process on a GPU with 2+ replicas, else thread)
  --forward-timeout-ms N             ANPD_FORWARD_TIMEOUT_MS         60000 (a replica whose forwards make no progress this
                                                                     long is wedged: its generations end UNAVAILABLE and it
                                                                     is replaced; 0 = no watchdog)
  --replica-restarts-per-minute N    ANPD_REPLICA_RESTARTS_PER_MINUTE  5 (per replica; a dead replica restarts after
                                                                     0.25 s, doubling to 30 s while starts fail)
  --batch-slots K                    ANPD_BATCH_SLOTS                0 (off; up to K sequences per forward)
  --batch-invariant on|off           ANPD_BATCH_INVARIANT            on (cuda batching: outputs the same at any load)
  --draft-pool on|off                ANPD_DRAFT_POOL                 on (requests of one API key + cache salt draft
                                                                     from each other's text; speed only)
  --prefix-cache-mb N                ANPD_PREFIX_CACHE_MB            128 (per replica, CPU: a prompt starting like an
                                                                     earlier one of its scope copies that KV; 0 = off)
  --prefill-tokens-per-step N        ANPD_PREFILL_TOKENS_PER_STEP    2048 (cuda batching: prompts packed per step)
  --batch-model DIR[,DIR…]           ANPD_BATCH_MODEL_DIR            none (K-slot graphs of --model's weights)
  --kv-capacity N                    ANPD_KV_CAPACITY                8192
  --native-run auto|off|required     ANPD_NATIVE_RUN (or ANPD_NATIVE)  auto (CPU forwards through the native
                                                                     runner when built, else a warning; off:
                                                                     onnxruntime-node; required: no start without it)
  --shutdown-grace-ms N              ANPD_SHUTDOWN_GRACE_MS          30000
  --max-receive-message-bytes N      ANPD_MAX_RECEIVE_MESSAGE_BYTES  4194304
  --max-concurrent-streams N         ANPD_MAX_CONCURRENT_STREAMS     256
  --keepalive-time-ms N              ANPD_KEEPALIVE_TIME_MS          30000
  --keepalive-timeout-ms N           ANPD_KEEPALIVE_TIMEOUT_MS       10000
  --max-connection-age-ms N          ANPD_MAX_CONNECTION_AGE_MS      0 (never; set it to rebalance behind an L4 Service)
  --max-connection-age-grace-ms N    ANPD_MAX_CONNECTION_AGE_GRACE_MS  600000
  --log-level debug|info|warn|error|silent   ANPD_LOG_LEVEL          info
  --metrics-port N                   ANPD_METRICS_PORT               9464 (Prometheus /metrics; 0 = off)
  --http-port N                      ANPD_HTTP_PORT                  0 (OpenAI-compatible HTTP API; 0 = off)
  --metrics-host HOST                ANPD_METRICS_HOST               0.0.0.0
  --tls-cert FILE                    ANPD_TLS_CERT                   none (plaintext; a mesh sidecar's mTLS covers it)
  --tls-key FILE                     ANPD_TLS_KEY                    none (goes with --tls-cert)
  --tls-client-ca FILE               ANPD_TLS_CLIENT_CA              none (set: mutual TLS, clients need a cert it signed)
  --api-key-file FILE                ANPD_API_KEY_FILE               none (set: TextGeneration calls need
                                                                     "authorization: Bearer KEY"; one key a line, # comments;
                                                                     health and reflection stay open)

Tracing and OTLP export follow the standard OTEL_* variables (off unless OTEL_TRACES_EXPORTER /
OTEL_METRICS_EXPORTER are set, e.g. OTEL_TRACES_EXPORTER=otlp OTEL_EXPORTER_OTLP_ENDPOINT=...).

On SIGTERM or SIGINT: health NOT_SERVING, new requests UNAVAILABLE, in-flight generations finish
within the grace period, exit 0. While no model replica is up (all died or wedged, restarting),
readiness health is NOT_SERVING too; the "liveness" service stays SERVING.
`;

const LOG_LEVELS: readonly LogLevel[] = ['debug', 'info', 'warn', 'error', 'silent'];

/** Largest accepted values: each guards memory or a timer. */
const LIMITS = {
  sequences: 1024,
  queue: 100_000,
  kv: 131_072,
  threads: 1024,
  graceMs: 24 * 3600_000,
  messageBytes: 1 << 30,
  streams: 100_000,
  timerMs: 2 ** 31 - 1,
} as const;

/**
 * Measured on a 16-core H200 host (docs/benchmarks.md, "Replicas"): on the CPU, 4 replicas of 4
 * threads gave 2.5× the aggregate tok/s of one 16-thread session at 4+ streams; on the GPU, 2
 * replicas +34% at 4 streams with no single-stream loss (4 gave more at 16 streams but lost 18% alone).
 */
export function defaultEngineReplicas(provider: ExecutionProviderName, cores = availableParallelism()): number {
  return provider === 'cpu' ? Math.max(1, Math.floor(cores / 4)) : 2;
}

/** What `--execution-provider auto` becomes on this machine (the server passes src/runtime/gpu-probe.ts's). */
export type ProviderProbe = () => { readonly provider: ExecutionProviderName; readonly reason: string };

/** Without a probe, auto is cpu (config parsing itself looks at no hardware). */
const CPU_ONLY: ProviderProbe = () => ({ provider: 'cpu', reason: 'no probe' });

/**
 * `probe`: what `--execution-provider auto` (the default) becomes — the server's looks for cuda
 * (its provider installed, the addon built, a GPU present), else cpu.
 */
export function parseServerConfig(
  argv: readonly string[],
  env: NodeJS.ProcessEnv = process.env,
  probe: ProviderProbe = CPU_ONLY,
): ServerConfig {
  const options = Object.fromEntries(Object.values(SERVER_SETTINGS).map((s) => [s.flag, { type: 'string' as const }]));
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({
      args: [...argv],
      options: { ...options, help: { type: 'boolean', short: 'h' } },
      allowPositionals: false,
      strict: true,
    }));
  } catch (cause) {
    throw new ConfigError((cause as Error).message);
  }
  const raw = (key: keyof ServerConfig): { value: string; source: string } | undefined => {
    const setting: Setting = SERVER_SETTINGS[key];
    const flagValue = values[setting.flag];
    if (typeof flagValue === 'string') return { value: flagValue, source: `--${setting.flag}` };
    for (const name of setting.env) {
      const v = env[name];
      if (v !== undefined && v !== '') return { value: v, source: name };
    }
    return undefined;
  };
  const int = (key: keyof ServerConfig, fallback: number, min: number, max: number): number => {
    const r = raw(key);
    if (r === undefined) return fallback;
    const n = Number(r.value);
    if (!/^\s*\d+\s*$/.test(r.value) || !Number.isSafeInteger(n) || n < min || n > max) {
      throw new ConfigError(`${r.source} must be an integer in [${min}, ${max}], got "${r.value}"`);
    }
    return n;
  };
  const choice = <T extends string>(key: keyof ServerConfig, allowed: readonly T[], fallback: T): T => {
    const r = raw(key);
    if (r === undefined) return fallback;
    if (!(allowed as readonly string[]).includes(r.value))
      throw new ConfigError(`${r.source} must be one of ${allowed.join(', ')}, got "${r.value}"`);
    return r.value as T;
  };

  const providerChoice = choice('executionProvider', [...EXECUTION_PROVIDERS, 'auto'] as const, 'auto');
  const executionProvider = providerChoice === 'auto' ? probe().provider : providerChoice;
  const nativeRunChoice = choice('nativeRun', SERVE_NATIVE_RUN_MODES, 'auto');
  // cuda's device path batches on the paged graph (any number of sequences per forward); elsewhere
  // batch graphs of K slots are converted, K ≤ 64.
  const pagedBatching = executionProvider === 'cuda' && nativeRunChoice !== 'off';
  const batchSlots = int('batchSlots', 0, 0, pagedBatching ? PAGED_BATCH_SLOTS_MAX : 64);
  if (batchSlots === 1) throw new ConfigError(`${raw('batchSlots')!.source} must be 0 (off) or at least 2`);
  if (batchSlots > WEBGPU_BATCH_WIDTH_MAX && executionProvider === 'webgpu') {
    throw new ConfigError(
      `${raw('batchSlots')!.source} must be at most ${WEBGPU_BATCH_WIDTH_MAX} on webgpu (16 storage buffers per shader), got ${batchSlots}`,
    );
  }
  if (raw('batchModelDir') !== undefined && raw('modelDir') === undefined) {
    throw new ConfigError(
      '--batch-model goes with --model (for the default model, --batch-slots K converts its batch graph)',
    );
  }
  // Files are only paired here; loadTransportSecurity reads them (the keys stay out of this object).
  const tlsCert = raw('tlsCertFile');
  const tlsKey = raw('tlsKeyFile');
  const tlsClientCa = raw('tlsClientCaFile');
  if (tlsCert !== undefined && tlsKey === undefined)
    throw new ConfigError(`${tlsCert.source} needs --tls-key (ANPD_TLS_KEY): the certificate's private key`);
  if (tlsKey !== undefined && tlsCert === undefined)
    throw new ConfigError(`${tlsKey.source} needs --tls-cert (ANPD_TLS_CERT): the certificate it belongs to`);
  if (tlsClientCa !== undefined && tlsCert === undefined) {
    throw new ConfigError(
      `${tlsClientCa.source} (mutual TLS) needs --tls-cert and --tls-key: the server must speak TLS to check client certificates`,
    );
  }
  const engineReplicas = int(
    'engineReplicas',
    pagedBatching && batchSlots > 0 ? 1 : defaultEngineReplicas(executionProvider),
    1,
    ENGINE_REPLICAS_LIMIT,
  );
  // Batching on cuda: each replica holds batchSlots sequences (their KV places on the device).
  const placesMax = pagedBatching && batchSlots > 0 ? engineReplicas * batchSlots : LIMITS.sequences;
  const maxActiveSequences = int(
    'maxActiveSequences',
    pagedBatching && batchSlots > 0 ? placesMax : Math.max(4, 2 * availableParallelism()),
    1,
    Math.min(LIMITS.sequences, placesMax),
  );
  const maxNewTokensLimit = int('maxNewTokensLimit', 4096, 1, MAX_NEW_TOKENS_LIMIT);
  const maxNewTokensDefault = int('maxNewTokensDefault', Math.min(256, maxNewTokensLimit), 1, maxNewTokensLimit);
  const config: ServerConfig = {
    host: raw('host')?.value ?? '0.0.0.0',
    port: int('port', 50051, 0, 65535),
    modelDir: raw('modelDir')?.value,
    modelName: raw('modelName')?.value,
    maxActiveSequences,
    maxQueuedRequests: int('maxQueuedRequests', 8 * maxActiveSequences, 0, LIMITS.queue),
    maxNewTokensDefault,
    maxNewTokensLimit,
    executionProvider,
    intraOpThreads: int('intraOpThreads', 0, 0, LIMITS.threads),
    engineReplicas,
    engineIsolation: choice('engineIsolation', ['auto', 'thread', 'process'] as const, 'auto'),
    forwardTimeoutMs: int('forwardTimeoutMs', 60_000, 0, LIMITS.timerMs),
    replicaRestartsPerMinute: int('replicaRestartsPerMinute', 5, 1, 600),
    batchSlots,
    batchInvariant: choice('batchInvariant', ['on', 'off'] as const, 'on'),
    draftPool: choice('draftPool', ['on', 'off'] as const, 'on'),
    prefixCacheMb: int('prefixCacheMb', 128, 0, 65_536),
    prefillTokensPerStep: int(
      'prefillTokensPerStep',
      PREFILL_TOKENS_PER_STEP_DEFAULT,
      PREFILL_TOKENS_PER_STEP_MIN,
      PREFILL_TOKENS_PER_STEP_MAX,
    ),
    batchModelDir: raw('batchModelDir')?.value,
    kvCapacity: int('kvCapacity', 8192, 16, LIMITS.kv),
    nativeRun: nativeRunChoice,
    shutdownGraceMs: int('shutdownGraceMs', 30_000, 0, LIMITS.graceMs),
    maxReceiveMessageBytes: int('maxReceiveMessageBytes', 4 * 1024 * 1024, 1024, LIMITS.messageBytes),
    maxConcurrentStreams: int('maxConcurrentStreams', 256, 1, LIMITS.streams),
    keepaliveTimeMs: int('keepaliveTimeMs', 30_000, 1000, LIMITS.timerMs),
    keepaliveTimeoutMs: int('keepaliveTimeoutMs', 10_000, 1000, LIMITS.timerMs),
    maxConnectionAgeMs: int('maxConnectionAgeMs', 0, 0, LIMITS.timerMs),
    maxConnectionAgeGraceMs: int('maxConnectionAgeGraceMs', 600_000, 0, LIMITS.timerMs),
    logLevel: choice('logLevel', LOG_LEVELS, 'info'),
    metricsPort: int('metricsPort', 9464, 0, 65535),
    httpPort: int('httpPort', 0, 0, 65535),
    metricsHost: raw('metricsHost')?.value ?? '0.0.0.0',
    tlsCertFile: tlsCert?.value,
    tlsKeyFile: tlsKey?.value,
    tlsClientCaFile: tlsClientCa?.value,
    apiKeyFile: raw('apiKeyFile')?.value,
  };
  return Object.freeze(config);
}

export function wantsHelp(argv: readonly string[]): boolean {
  return argv.includes('--help') || argv.includes('-h');
}

/** Slot counts of the batch graphs `--batch-slots K` loads: powers of two from 2 below K, then K. */
export function batchSlotLadder(slots: number): number[] {
  const ladder: number[] = [];
  for (let k = 2; k < slots; k *= 2) ladder.push(k);
  if (slots >= 2) ladder.push(slots);
  return ladder;
}
