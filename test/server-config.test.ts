import test from 'ava';
import { availableParallelism } from 'node:os';
import { batchSlotLadder, defaultEngineReplicas, parseServerConfig } from '../src/config/server-config.js';
import { MAX_NEW_TOKENS_LIMIT } from '../src/contract.js';
import { ConfigError } from '../src/errors.js';

test('empty argv and environment give the documented defaults', (t) => {
  const config = parseServerConfig([], {});
  const expectedActive = Math.max(4, 2 * availableParallelism());
  t.deepEqual(config, {
    host: '0.0.0.0',
    port: 50051,
    modelDir: undefined,
    modelName: undefined,
    maxActiveSequences: expectedActive,
    maxQueuedRequests: 8 * expectedActive,
    maxNewTokensDefault: 256,
    maxNewTokensLimit: 4096,
    executionProvider: 'cpu',
    intraOpThreads: 0,
    engineReplicas: Math.max(1, Math.floor(availableParallelism() / 4)),
    engineIsolation: 'auto',
    forwardTimeoutMs: 60_000,
    replicaRestartsPerMinute: 5,
    batchSlots: 0,
    batchInvariant: 'on',
    draftPool: 'on',
    prefixCacheMb: 128,
    prefillTokensPerStep: 2048,
    batchModelDir: undefined,
    kvCapacity: 8192,
    nativeRun: 'auto',
    shutdownGraceMs: 30_000,
    maxReceiveMessageBytes: 4 * 1024 * 1024,
    maxConcurrentStreams: 256,
    keepaliveTimeMs: 30_000,
    keepaliveTimeoutMs: 10_000,
    maxConnectionAgeMs: 0,
    maxConnectionAgeGraceMs: 600_000,
    logLevel: 'info',
    metricsPort: 9464,
    httpPort: 0,
    metricsHost: '0.0.0.0',
    tlsCertFile: undefined,
    tlsKeyFile: undefined,
    tlsClientCaFile: undefined,
    apiKeyFile: undefined,
  });
});

test('engine replicas default to a quarter of the cores on the CPU (at least 1) and 2 on a GPU', (t) => {
  t.is(defaultEngineReplicas('cpu', 2), 1);
  t.is(defaultEngineReplicas('cpu', 16), 4);
  t.is(defaultEngineReplicas('webgpu', 16), 2);
  t.is(parseServerConfig(['--execution-provider', 'webgpu'], {}).engineReplicas, 2);
  t.is(parseServerConfig(['--engine-replicas', '3'], {}).engineReplicas, 3);
  t.throws(() => parseServerConfig(['--engine-replicas', '0'], {}), {
    message: /--engine-replicas must be an integer in \[1, 64\]/,
  });
});

test('batched forwards: 0 or K ≥ 2 slots, any provider, --batch-model only with --model', (t) => {
  t.is(parseServerConfig(['--batch-slots', '4'], {}).batchSlots, 4);
  t.throws(() => parseServerConfig(['--batch-slots', '1'], {}), {
    message: /--batch-slots must be 0 \(off\) or at least 2/,
  });
  t.is(parseServerConfig(['--batch-slots', '4', '--execution-provider', 'webgpu'], {}).batchSlots, 4);
  t.throws(() => parseServerConfig(['--batch-slots', '16', '--execution-provider', 'webgpu'], {}), {
    message: /--batch-slots must be at most 15 on webgpu/,
  });
  t.throws(() => parseServerConfig(['--batch-model', '/m'], {}), { message: /--batch-model goes with --model/ });
});

test('the default queue length follows an explicit maxActiveSequences', (t) => {
  t.is(parseServerConfig(['--max-active-sequences', '3'], {}).maxQueuedRequests, 24);
  t.is(parseServerConfig([], { ANPD_MAX_ACTIVE_SEQUENCES: '5' }).maxQueuedRequests, 40);
  t.is(parseServerConfig(['--max-active-sequences', '3', '--max-queued-requests', '0'], {}).maxQueuedRequests, 0);
});

test('environment variables are read', (t) => {
  const config = parseServerConfig([], {
    ANPD_HOST: '127.0.0.1',
    ANPD_PORT: '6000',
    ANPD_MODEL_DIR: '/models/x',
    ANPD_MODEL_NAME: 'x',
    ANPD_MAX_ACTIVE_SEQUENCES: '2',
    ANPD_MAX_QUEUED_REQUESTS: '7',
    ANPD_MAX_NEW_TOKENS_DEFAULT: '100',
    ANPD_MAX_NEW_TOKENS_LIMIT: '200',
    ANPD_EXECUTION_PROVIDER: 'cpu',
    ANPD_THREADS: '3',
    ANPD_ENGINE_REPLICAS: '2',
    ANPD_BATCH_SLOTS: '4',
    ANPD_BATCH_INVARIANT: 'off',
    ANPD_DRAFT_POOL: 'off',
    ANPD_PREFIX_CACHE_MB: '64',
    ANPD_PREFILL_TOKENS_PER_STEP: '2048',
    ANPD_BATCH_MODEL_DIR: '/models/x-slots4',
    ANPD_KV_CAPACITY: '1024',
    ANPD_NATIVE_RUN: 'off',
    ANPD_SHUTDOWN_GRACE_MS: '500',
    ANPD_MAX_RECEIVE_MESSAGE_BYTES: '2048',
    ANPD_MAX_CONCURRENT_STREAMS: '9',
    ANPD_KEEPALIVE_TIME_MS: '2000',
    ANPD_KEEPALIVE_TIMEOUT_MS: '1500',
    ANPD_MAX_CONNECTION_AGE_MS: '60000',
    ANPD_MAX_CONNECTION_AGE_GRACE_MS: '0',
    ANPD_LOG_LEVEL: 'debug',
    ANPD_METRICS_PORT: '0',
    ANPD_HTTP_PORT: '8000',
    ANPD_METRICS_HOST: '127.0.0.1',
    ANPD_TLS_CERT: '/tls/cert.pem',
    ANPD_TLS_KEY: '/tls/key.pem',
    ANPD_TLS_CLIENT_CA: '/tls/clients.pem',
    ANPD_API_KEY_FILE: '/keys/api',
    ANPD_ENGINE_ISOLATION: 'process',
    ANPD_FORWARD_TIMEOUT_MS: '5000',
    ANPD_REPLICA_RESTARTS_PER_MINUTE: '2',
  });
  t.deepEqual(config, {
    host: '127.0.0.1',
    port: 6000,
    modelDir: '/models/x',
    modelName: 'x',
    maxActiveSequences: 2,
    maxQueuedRequests: 7,
    maxNewTokensDefault: 100,
    maxNewTokensLimit: 200,
    executionProvider: 'cpu',
    intraOpThreads: 3,
    engineReplicas: 2,
    engineIsolation: 'process',
    forwardTimeoutMs: 5000,
    replicaRestartsPerMinute: 2,
    batchSlots: 4,
    batchInvariant: 'off',
    draftPool: 'off',
    prefixCacheMb: 64,
    prefillTokensPerStep: 2048,
    batchModelDir: '/models/x-slots4',
    kvCapacity: 1024,
    nativeRun: 'off',
    shutdownGraceMs: 500,
    maxReceiveMessageBytes: 2048,
    maxConcurrentStreams: 9,
    keepaliveTimeMs: 2000,
    keepaliveTimeoutMs: 1500,
    maxConnectionAgeMs: 60_000,
    maxConnectionAgeGraceMs: 0,
    logLevel: 'debug',
    metricsPort: 0,
    httpPort: 8000,
    metricsHost: '127.0.0.1',
    tlsCertFile: '/tls/cert.pem',
    tlsKeyFile: '/tls/key.pem',
    tlsClientCaFile: '/tls/clients.pem',
    apiKeyFile: '/keys/api',
  });
});

test('PORT is a fallback for ANPD_PORT', (t) => {
  t.is(parseServerConfig([], { PORT: '8080' }).port, 8080);
  t.is(parseServerConfig([], { ANPD_PORT: '9090', PORT: '8080' }).port, 9090);
  // An empty ANPD_PORT counts as unset.
  t.is(parseServerConfig([], { ANPD_PORT: '', PORT: '8080' }).port, 8080);
});

test('empty environment variables count as unset', (t) => {
  const config = parseServerConfig([], { ANPD_HOST: '', ANPD_LOG_LEVEL: '', ANPD_MAX_ACTIVE_SEQUENCES: '' });
  t.is(config.host, '0.0.0.0');
  t.is(config.logLevel, 'info');
  t.true(config.maxActiveSequences >= 4);
});

test('flags are read, in both --flag value and --flag=value forms', (t) => {
  const config = parseServerConfig(
    [
      '--host',
      '::1',
      '--port=7000',
      '--model',
      '/m',
      '--model-name',
      'mine',
      '--threads',
      '2',
      '--log-level=warn',
      '--kv-capacity',
      '16',
    ],
    {},
  );
  t.like(config, {
    host: '::1',
    port: 7000,
    modelDir: '/m',
    modelName: 'mine',
    intraOpThreads: 2,
    logLevel: 'warn',
    kvCapacity: 16,
  });
});

test('flags override environment variables', (t) => {
  const config = parseServerConfig(
    ['--port', '1234', '--max-active-sequences', '6', '--log-level', 'error', '--host', 'localhost'],
    {
      ANPD_PORT: '9999',
      PORT: '8888',
      ANPD_MAX_ACTIVE_SEQUENCES: '2',
      ANPD_LOG_LEVEL: 'debug',
      ANPD_HOST: '10.0.0.1',
    },
  );
  t.like(config, { port: 1234, maxActiveSequences: 6, maxQueuedRequests: 48, logLevel: 'error', host: 'localhost' });
});

test('the native runner is on by default and can be turned off, by flag or environment', (t) => {
  t.is(parseServerConfig([], {}).nativeRun, 'auto');
  t.is(parseServerConfig(['--native-run', 'off'], {}).nativeRun, 'off');
  t.is(parseServerConfig([], { ANPD_NATIVE_RUN: 'off' }).nativeRun, 'off');
  t.throws(() => parseServerConfig(['--native-run', 'on'], {}), {
    instanceOf: ConfigError,
    message: /--native-run must be one of auto, off, required, got "on"/,
  });
});

test('ANPD_NATIVE=required (the Dockerfile and CI) requires the native runner; ANPD_NATIVE_RUN and the flag win over it', (t) => {
  t.is(parseServerConfig([], { ANPD_NATIVE: 'required' }).nativeRun, 'required');
  t.is(parseServerConfig(['--native-run', 'required'], {}).nativeRun, 'required');
  t.is(parseServerConfig([], { ANPD_NATIVE: 'required', ANPD_NATIVE_RUN: 'off' }).nativeRun, 'off');
  t.is(parseServerConfig(['--native-run', 'auto'], { ANPD_NATIVE: 'required' }).nativeRun, 'auto');
});

test('every log level is accepted', (t) => {
  for (const level of ['debug', 'info', 'warn', 'error', 'silent'] as const) {
    t.is(parseServerConfig(['--log-level', level], {}).logLevel, level);
  }
});

test('the result is frozen', (t) => {
  const config = parseServerConfig([], {});
  t.true(Object.isFrozen(config));
  t.throws(
    () => {
      (config as { port: number }).port = 1;
    },
    { instanceOf: TypeError },
  );
});

test('port 0 (any free port) and 65535 are accepted', (t) => {
  t.is(parseServerConfig(['--port', '0'], {}).port, 0);
  t.is(parseServerConfig(['--port', '65535'], {}).port, 65535);
});

test('a non-numeric flag value throws a ConfigError naming the flag and the value', (t) => {
  const error = t.throws(() => parseServerConfig(['--port', 'abc'], {}), {
    instanceOf: ConfigError,
    message: /--port.*"abc"/,
  });
  t.is(error?.code, 'INVALID_REQUEST');
  t.throws(() => parseServerConfig(['--max-active-sequences', '2.5'], {}), {
    instanceOf: ConfigError,
    message: /--max-active-sequences.*"2\.5"/,
  });
  t.throws(() => parseServerConfig(['--threads', '1e3'], {}), { instanceOf: ConfigError, message: /--threads.*"1e3"/ });
  t.throws(() => parseServerConfig(['--port', ''], {}), { instanceOf: ConfigError, message: /--port/ });
});

test('a non-numeric environment value throws a ConfigError naming the variable and the value', (t) => {
  t.throws(() => parseServerConfig([], { ANPD_PORT: 'http' }), {
    instanceOf: ConfigError,
    message: /ANPD_PORT.*"http"/,
  });
  t.throws(() => parseServerConfig([], { PORT: 'x1' }), { instanceOf: ConfigError, message: /\bPORT.*"x1"/ });
  t.throws(() => parseServerConfig([], { ANPD_MAX_ACTIVE_SEQUENCES: 'many' }), {
    instanceOf: ConfigError,
    message: /ANPD_MAX_ACTIVE_SEQUENCES.*"many"/,
  });
});

test('negative values are rejected', (t) => {
  t.throws(() => parseServerConfig(['--port=-1'], {}), { instanceOf: ConfigError, message: /--port.*"-1"/ });
  t.throws(() => parseServerConfig([], { ANPD_MAX_QUEUED_REQUESTS: '-5' }), {
    instanceOf: ConfigError,
    message: /ANPD_MAX_QUEUED_REQUESTS.*"-5"/,
  });
  t.throws(() => parseServerConfig([], { ANPD_THREADS: '-1' }), {
    instanceOf: ConfigError,
    message: /ANPD_THREADS.*"-1"/,
  });
});

test('out-of-range values are rejected with the allowed range', (t) => {
  t.throws(() => parseServerConfig(['--port', '70000'], {}), {
    instanceOf: ConfigError,
    message: /--port.*\[0, 65535\].*"70000"/,
  });
  t.throws(() => parseServerConfig([], { ANPD_PORT: '65536' }), {
    instanceOf: ConfigError,
    message: /ANPD_PORT.*"65536"/,
  });
  t.throws(() => parseServerConfig(['--max-active-sequences', '0'], {}), {
    instanceOf: ConfigError,
    message: /--max-active-sequences.*"0"/,
  });
  t.throws(() => parseServerConfig(['--max-active-sequences', '1025'], {}), {
    instanceOf: ConfigError,
    message: /--max-active-sequences.*"1025"/,
  });
  t.throws(() => parseServerConfig(['--kv-capacity', '15'], {}), {
    instanceOf: ConfigError,
    message: /--kv-capacity.*"15"/,
  });
  t.throws(() => parseServerConfig(['--keepalive-time-ms', '999'], {}), {
    instanceOf: ConfigError,
    message: /--keepalive-time-ms.*"999"/,
  });
  t.throws(() => parseServerConfig(['--max-new-tokens-limit', String(MAX_NEW_TOKENS_LIMIT + 1)], {}), {
    instanceOf: ConfigError,
    message: /--max-new-tokens-limit/,
  });
  t.throws(() => parseServerConfig(['--port', '99999999999999999999'], {}), {
    instanceOf: ConfigError,
    message: /--port/,
  });
});

test('an unknown execution provider is rejected naming the source and the value; cpu, webgpu and cuda are known', (t) => {
  t.throws(() => parseServerConfig(['--execution-provider', 'tpu'], {}), {
    instanceOf: ConfigError,
    message: /--execution-provider.*cpu, webgpu, cuda.*"tpu"/,
  });
  t.throws(() => parseServerConfig([], { ANPD_EXECUTION_PROVIDER: 'gpu' }), {
    instanceOf: ConfigError,
    message: /ANPD_EXECUTION_PROVIDER.*"gpu"/,
  });
  for (const provider of ['cpu', 'webgpu', 'cuda'] as const)
    t.is(parseServerConfig(['--execution-provider', provider], {}).executionProvider, provider);
});

test('an unknown log level is rejected naming the source and the value', (t) => {
  t.throws(() => parseServerConfig(['--log-level', 'verbose'], {}), {
    instanceOf: ConfigError,
    message: /--log-level.*"verbose"/,
  });
  t.throws(() => parseServerConfig([], { ANPD_LOG_LEVEL: 'INFO' }), {
    instanceOf: ConfigError,
    message: /ANPD_LOG_LEVEL.*"INFO"/,
  });
});

test('unknown flags and positional arguments throw ConfigError', (t) => {
  t.throws(() => parseServerConfig(['--no-such-flag', '1'], {}), { instanceOf: ConfigError, message: /no-such-flag/ });
  t.throws(() => parseServerConfig(['--prot', '80'], {}), { instanceOf: ConfigError, message: /prot/ });
  t.throws(() => parseServerConfig(['serve'], {}), { instanceOf: ConfigError });
  t.throws(() => parseServerConfig(['--port'], {}), { instanceOf: ConfigError, message: /port/ });
});

test('maxNewTokensDefault cannot exceed maxNewTokensLimit', (t) => {
  t.throws(() => parseServerConfig(['--max-new-tokens-limit', '100', '--max-new-tokens-default', '101'], {}), {
    instanceOf: ConfigError,
    message: /--max-new-tokens-default.*\[1, 100\].*"101"/,
  });
  t.throws(() => parseServerConfig([], { ANPD_MAX_NEW_TOKENS_LIMIT: '50', ANPD_MAX_NEW_TOKENS_DEFAULT: '60' }), {
    instanceOf: ConfigError,
    message: /ANPD_MAX_NEW_TOKENS_DEFAULT.*"60"/,
  });
  t.like(parseServerConfig(['--max-new-tokens-limit', '100', '--max-new-tokens-default', '100'], {}), {
    maxNewTokensDefault: 100,
    maxNewTokensLimit: 100,
  });
});

test('a limit below 256 lowers the default new-token count to the limit', (t) => {
  t.like(parseServerConfig(['--max-new-tokens-limit', '64'], {}), { maxNewTokensDefault: 64, maxNewTokensLimit: 64 });
  t.like(parseServerConfig(['--max-new-tokens-limit', String(MAX_NEW_TOKENS_LIMIT)], {}), {
    maxNewTokensDefault: 256,
    maxNewTokensLimit: MAX_NEW_TOKENS_LIMIT,
  });
});

test('--batch-slots K loads a ladder of graphs: powers of two below K, then K', (t) => {
  t.deepEqual(batchSlotLadder(16), [2, 4, 8, 16]);
  t.deepEqual(batchSlotLadder(15), [2, 4, 8, 15]);
  t.deepEqual(batchSlotLadder(6), [2, 4, 6]);
  t.deepEqual(batchSlotLadder(2), [2]);
  t.deepEqual(batchSlotLadder(0), []);
});

test('--execution-provider auto (the default) takes what the probe finds; without a probe it is cpu', (t) => {
  t.is(parseServerConfig([], {}).executionProvider, 'cpu');
  const gpu = () => ({ provider: 'cuda' as const, reason: '1 CUDA device(s)' });
  const none = () => ({ provider: 'cpu' as const, reason: 'no CUDA provider installed' });
  t.is(parseServerConfig([], {}, gpu).executionProvider, 'cuda');
  t.is(parseServerConfig([], {}, gpu).engineReplicas, 2);
  t.is(parseServerConfig(['--execution-provider', 'auto'], {}, none).executionProvider, 'cpu');
  t.is(parseServerConfig([], { ANPD_EXECUTION_PROVIDER: 'auto' }, gpu).executionProvider, 'cuda');
  // An explicit choice is never overridden by the probe.
  t.is(parseServerConfig(['--execution-provider', 'cpu'], {}, gpu).executionProvider, 'cpu');
});

test('--batch-slots K on cuda (device path): one replica of K places, up to 256; max-active-sequences within replicas × K', (t) => {
  const cuda = parseServerConfig(['--execution-provider', 'cuda', '--batch-slots', '64'], {});
  t.is(cuda.batchSlots, 64);
  t.is(cuda.engineReplicas, 1, 'one replica batches every stream');
  t.is(cuda.maxActiveSequences, 64, 'the default fills the places');
  t.is(parseServerConfig(['--execution-provider', 'cuda', '--batch-slots', '256'], {}).batchSlots, 256);
  t.throws(() => parseServerConfig(['--execution-provider', 'cuda', '--batch-slots', '257'], {}), {
    instanceOf: ConfigError,
    message: /--batch-slots must be an integer in \[0, 256\]/,
  });
  t.throws(
    () => parseServerConfig(['--execution-provider', 'cuda', '--batch-slots', '8', '--max-active-sequences', '9'], {}),
    { instanceOf: ConfigError, message: /--max-active-sequences must be an integer in \[1, 8\]/ },
  );
  t.is(
    parseServerConfig(
      ['--execution-provider', 'cuda', '--batch-slots', '8', '--engine-replicas', '2', '--max-active-sequences', '16'],
      {},
    ).maxActiveSequences,
    16,
  );
  // onnxruntime-node on cuda batches with slot graphs, at most 64 slots.
  t.throws(
    () => parseServerConfig(['--execution-provider', 'cuda', '--batch-slots', '65', '--native-run', 'off'], {}),
    {
      message: /\[0, 64\]/,
    },
  );
  t.is(parseServerConfig(['--execution-provider', 'cpu', '--batch-slots', '4'], {}).engineReplicas >= 1, true);
});

test('replica supervision settings are validated, naming the flag', (t) => {
  t.throws(() => parseServerConfig(['--engine-isolation', 'fiber'], {}), {
    message: /--engine-isolation must be one of auto, thread, process, got "fiber"/,
  });
  t.throws(() => parseServerConfig(['--replica-restarts-per-minute', '0'], {}), {
    message: /--replica-restarts-per-minute must be an integer in \[1, 600\]/,
  });
  t.is(parseServerConfig(['--forward-timeout-ms', '0'], {}).forwardTimeoutMs, 0, '0 turns the watchdog off');
});
