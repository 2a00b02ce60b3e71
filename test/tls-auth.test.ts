/**
 * Who may call (issue 21, item 7): TLS and mutual TLS on the gRPC port, bearer API keys on
 * TextGeneration with health and reflection open, and the startup checks of the files behind the
 * flags. Real servers on loopback; the certificates are made here (test/support/test-certs.ts).
 */
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { type ClientDuplexStream, credentials, status as GrpcStatus } from '@grpc/grpc-js';
import test from 'ava';
import { parseServerConfig } from '../src/config/server-config.js';
import { loadTransportSecurity, parseApiKeys } from '../src/config/transport-security.js';
import { clientSecurity } from '../src/cli/client.js';
import { BearerTokenCheck } from '../src/transport/bearer-token.js';
import { type ClientSecurity, TextGenerationClient } from '../src/transport/grpc/client.js';
import { ConfigError } from '../src/errors.js';
import type { BidiClientMsg, BidiServerMsg, GenerateRequestMsg } from '../src/transport/grpc/messages.js';
import { Metadata } from '@grpc/grpc-js';
import { collectStream, grpcError, startTestServer, type TestServer } from './support/grpc-server.js';
import { reflectedServices } from './support/reflection.js';
import { certDir, issue, makeCa, writeFile } from './support/test-certs.js';

const execFileAsync = promisify(execFile);
const CLI = new URL('../src/cli/main.js', import.meta.url).pathname;

// One set of certificates for the file: two CAs (server side, client side), a stranger CA, and leaves.
const dir = certDir();
const serverCa = makeCa('anpd test server CA');
const serverLeaf = issue(serverCa, 'anpd test server', 'server');
const clientCa = makeCa('anpd test client CA');
const clientLeaf = issue(clientCa, 'anpd test client', 'client');
const strangerCa = makeCa('someone else');
const strangerLeaf = issue(strangerCa, 'stranger', 'client');
const files = {
  serverCa: writeFile(dir, 'server-ca.pem', serverCa.certPem),
  serverCert: writeFile(dir, 'server.pem', serverLeaf.certPem),
  serverKey: writeFile(dir, 'server.key', serverLeaf.keyPem),
  clientCa: writeFile(dir, 'client-ca.pem', clientCa.certPem),
  clientCert: writeFile(dir, 'client.pem', clientLeaf.certPem),
  clientKey: writeFile(dir, 'client.key', clientLeaf.keyPem),
  strangerCa: writeFile(dir, 'stranger-ca.pem', strangerCa.certPem),
  apiKeys: writeFile(
    dir,
    'api-keys',
    '# rotated in on day 1\n  key-one-0123456789abcdef  \n\n# the next one\nkey-two-fedcba9876543210\n',
  ),
};
const KEY_ONE = 'key-one-0123456789abcdef';
const KEY_TWO = 'key-two-fedcba9876543210';
const buf = (pem: string) => Buffer.from(pem);
const trustServer: ClientSecurity['tls'] = { ca: buf(serverCa.certPem) };

const request = (id: string): GenerateRequestMsg => ({
  request_id: id,
  text: 'The capital of France is',
  stopping: { max_new_tokens: 3, ignore_eos: true },
});
/** Plaintext to a TLS port, or a refused handshake: fails fast, not after the default 20 s. */
const SHORT = { deadlineMs: 3000 };

const servers: TestServer[] = [];
async function serve(options: Parameters<typeof startTestServer>[0]): Promise<TestServer> {
  const s = await startTestServer({ maxActive: 4, maxQueued: 16, ...options });
  servers.push(s);
  return s;
}
test.after.always(async () => {
  for (const s of servers) await s.close();
});

let tlsWithKeys: Promise<TestServer> | undefined;
/** TLS (server CA) and the two API keys: most cases run against it. */
function secured(): Promise<TestServer> {
  tlsWithKeys ??= serve({
    tls: loadTransportSecurity({
      tlsCertFile: files.serverCert,
      tlsKeyFile: files.serverKey,
      tlsClientCaFile: undefined,
      apiKeyFile: undefined,
    }).tls!,
    apiKeys: [KEY_ONE, KEY_TWO],
  });
  return tlsWithKeys;
}

type Bidi = ClientDuplexStream<BidiClientMsg, BidiServerMsg>;
function bidiOnce(call: Bidi, id: string): Promise<{ messages: BidiServerMsg[]; code: number; details: string }> {
  const messages: BidiServerMsg[] = [];
  const done = new Promise<{ messages: BidiServerMsg[]; code: number; details: string }>((resolve) => {
    call.on('data', (m: BidiServerMsg) => messages.push(m));
    call.on('error', () => {}); // the status event carries it
    call.on('status', (s: { code: number; details: string }) =>
      resolve({ messages, code: s.code, details: s.details }),
    );
  });
  call.write({ generate: request(id) });
  call.end();
  return done;
}

// --- TLS ---------------------------------------------------------------------------------------

test.serial('TLS: a client trusting the CA generates (unary) and asks health', async (t) => {
  const s = await secured();
  const client = s.client({}, { tls: trustServer, apiKey: KEY_ONE });
  const response = await client.generate(request('tls-unary'), { deadlineMs: 60_000 });
  t.is(response.token_ids.length, 3);
  t.is(await client.health(''), 'SERVING');
});

test.serial('TLS: a plaintext client, and one that trusts another CA, do not get through', async (t) => {
  const s = await secured();
  const plain = await grpcError(s.client({}, { apiKey: KEY_ONE }).generate(request('plain'), SHORT));
  t.true(
    plain.code === GrpcStatus.UNAVAILABLE || plain.code === GrpcStatus.DEADLINE_EXCEEDED,
    `${plain.code} ${plain.details}`,
  );
  const plainHealth = await grpcError(s.client().health('', SHORT));
  t.not(plainHealth.code, GrpcStatus.OK);
  const wrongCa = await grpcError(
    s.client({}, { tls: { ca: buf(strangerCa.certPem) }, apiKey: KEY_ONE }).generate(request('wrong-ca'), SHORT),
  );
  t.true(
    wrongCa.code === GrpcStatus.UNAVAILABLE || wrongCa.code === GrpcStatus.DEADLINE_EXCEEDED,
    `${wrongCa.code} ${wrongCa.details}`,
  );
});

test.serial('TLS: the name checked against the certificate is the host, or --tls-server-name', async (t) => {
  const s = await secured();
  const byName = new TextGenerationClient(s.address.replace('127.0.0.1', 'localhost'), {}, { tls: trustServer });
  const overridden = new TextGenerationClient(s.address, {}, { tls: { ...trustServer, serverName: 'localhost' } });
  const wrongName = new TextGenerationClient(
    s.address,
    {},
    { tls: { ...trustServer, serverName: 'not-in-the-cert.example' } },
  );
  try {
    t.is(await byName.health(''), 'SERVING');
    t.is(await overridden.health(''), 'SERVING');
    // The override is what gets checked: a name the certificate does not carry fails the handshake.
    t.not((await grpcError(wrongName.health('', SHORT))).code, GrpcStatus.OK);
  } finally {
    byName.close();
    overridden.close();
    wrongName.close();
  }
});

// --- mutual TLS --------------------------------------------------------------------------------

test.serial("mTLS: no client certificate or a stranger's is refused; one the client CA signed works", async (t) => {
  const security = loadTransportSecurity({
    tlsCertFile: files.serverCert,
    tlsKeyFile: files.serverKey,
    tlsClientCaFile: files.clientCa,
    apiKeyFile: undefined,
  });
  t.truthy(security.tls?.clientCa);
  const s = await serve({ tls: security.tls! });
  const none = await grpcError(s.client({}, { tls: trustServer }).generate(request('no-cert'), SHORT));
  t.true(
    none.code === GrpcStatus.UNAVAILABLE || none.code === GrpcStatus.DEADLINE_EXCEEDED,
    `${none.code} ${none.details}`,
  );
  const stranger = await grpcError(
    s
      .client({}, { tls: { ...trustServer, cert: buf(strangerLeaf.certPem), key: buf(strangerLeaf.keyPem) } })
      .generate(request('stranger'), SHORT),
  );
  t.true(
    stranger.code === GrpcStatus.UNAVAILABLE || stranger.code === GrpcStatus.DEADLINE_EXCEEDED,
    `${stranger.code} ${stranger.details}`,
  );
  const client = s.client({}, { tls: { ...trustServer, cert: buf(clientLeaf.certPem), key: buf(clientLeaf.keyPem) } });
  t.is((await client.generate(request('mtls'), { deadlineMs: 60_000 })).token_ids.length, 3);
});

// --- API keys ----------------------------------------------------------------------------------

test.serial(
  'API key: no header or a wrong key is UNAUTHENTICATED on unary, stream and bidi; the token is never echoed',
  async (t) => {
    const s = await secured();
    for (const [label, apiKey] of [
      ['no key', undefined],
      ['wrong key', 'key-one-0123456789abcdeX'],
      ['a prefix of a key', 'key-one'],
    ] as const) {
      const client = s.client({}, { tls: trustServer, ...(apiKey !== undefined ? { apiKey } : {}) });
      const unary = await grpcError(client.generate(request('u'), SHORT));
      t.is(unary.code, GrpcStatus.UNAUTHENTICATED, label);
      t.regex(unary.details, apiKey === undefined ? /bearer token is required/ : /invalid bearer token/, label);
      if (apiKey !== undefined) t.false(unary.details.includes(apiKey), 'never echoes the token');
      const stream = await grpcError(collectStream(client.generateStream(request('s'), SHORT)));
      t.is(stream.code, GrpcStatus.UNAUTHENTICATED, label);
      const bidi = await bidiOnce(client.generateBidi(SHORT), 'b');
      t.is(bidi.code, GrpcStatus.UNAUTHENTICATED, label);
      t.deepEqual(bidi.messages, [], `${label}: the handler never ran`);
      t.is(
        (await grpcError(client.modelInfo('', SHORT))).code,
        GrpcStatus.UNAUTHENTICATED,
        `${label}: every TextGeneration method`,
      );
      t.is(
        (await grpcError(client.tokenize({ prompt: 'text', text: 'hi' }, SHORT))).code,
        GrpcStatus.UNAUTHENTICATED,
        label,
      );
    }
    t.is(s.service.poolState.active + s.service.poolState.queued, 0, 'no rejected call took a slot');
  },
);

test.serial('API key: the right key works on unary, stream and bidi; the second key in the file too', async (t) => {
  const s = await secured();
  for (const apiKey of [KEY_ONE, KEY_TWO]) {
    const client = s.client({}, { tls: trustServer, apiKey });
    t.is((await client.generate(request('u'), { deadlineMs: 60_000 })).token_ids.length, 3);
    const chunks = await collectStream(client.generateStream(request('s'), { deadlineMs: 60_000 }));
    t.truthy(chunks.at(-1)?.final);
    const bidi = await bidiOnce(client.generateBidi({ deadlineMs: 60_000 }), 'b');
    t.is(bidi.code, GrpcStatus.OK, bidi.details);
    t.true(bidi.messages.some((m) => 'chunk' in m && m.chunk.final !== undefined && m.chunk.final !== null));
  }
});

test.serial('API key: health and reflection answer without a key', async (t) => {
  const s = await secured();
  const client = s.client({}, { tls: trustServer });
  t.is(await client.health(''), 'SERVING');
  t.is(await client.health('liveness'), 'SERVING');
  const services = await reflectedServices(s.address, 'v1', credentials.createSsl(trustServer?.ca ?? null));
  t.true(services.includes('llm.v1.TextGeneration'), services.join(', '));
});

test('BearerTokenCheck: scheme, several headers, malformed values', (t) => {
  const check = new BearerTokenCheck([KEY_ONE, KEY_TWO]);
  const md = (...values: string[]) => {
    const m = new Metadata();
    for (const v of values) m.add('authorization', v);
    return m.get('authorization');
  };
  t.is(check.check(md(`Bearer ${KEY_ONE}`), 'metadata'), undefined);
  t.is(check.check(md(`bearer ${KEY_TWO}`), 'metadata'), undefined, 'the scheme is case-insensitive (RFC 7235)');
  t.regex(check.check(md(KEY_ONE), 'metadata')!.message, /must be "Bearer <key>"/);
  t.regex(check.check(md(`Basic ${KEY_ONE}`), 'metadata')!.message, /must be "Bearer <key>"/);
  t.regex(check.check(md(`Bearer ${KEY_ONE}`, `Bearer ${KEY_TWO}`), 'metadata')!.message, /one authorization header/);
  t.regex(check.check(md(), 'metadata')!.message, /bearer token is required/);
  t.is(check.check(md(`Bearer ${KEY_ONE}x`), 'metadata')!.code, 'UNAUTHENTICATED');
});

// --- configuration -----------------------------------------------------------------------------

test('config: the TLS flags must come in working combinations', (t) => {
  t.throws(() => parseServerConfig(['--tls-cert', files.serverCert], {}), {
    instanceOf: ConfigError,
    message: /--tls-cert needs --tls-key/,
  });
  t.throws(() => parseServerConfig(['--tls-key', files.serverKey], {}), { message: /--tls-key needs --tls-cert/ });
  t.throws(() => parseServerConfig(['--tls-client-ca', files.clientCa], {}), {
    message: /--tls-client-ca \(mutual TLS\) needs --tls-cert and --tls-key/,
  });
  t.throws(() => parseServerConfig([], { ANPD_TLS_CERT: files.serverCert }), {
    message: /ANPD_TLS_CERT needs --tls-key/,
  });
  const config = parseServerConfig([], {
    ANPD_TLS_CERT: files.serverCert,
    ANPD_TLS_KEY: files.serverKey,
    ANPD_TLS_CLIENT_CA: files.clientCa,
    ANPD_API_KEY_FILE: files.apiKeys,
  });
  t.like(config, {
    tlsCertFile: files.serverCert,
    tlsKeyFile: files.serverKey,
    tlsClientCaFile: files.clientCa,
    apiKeyFile: files.apiKeys,
  });
  const security = loadTransportSecurity(config);
  t.deepEqual(security.apiKeys, [KEY_ONE, KEY_TWO]);
  t.true(security.tls!.certChain.equals(buf(serverLeaf.certPem)));
});

test('config: missing, empty or mismatched files stop the start naming the flag and the path', (t) => {
  const none = { tlsCertFile: undefined, tlsKeyFile: undefined, tlsClientCaFile: undefined, apiKeyFile: undefined };
  const missing = join(dir, 'no-such.pem');
  t.throws(() => loadTransportSecurity({ ...none, tlsCertFile: missing, tlsKeyFile: files.serverKey }), {
    instanceOf: ConfigError,
    message: `--tls-cert ${missing}: cannot read (no such file)`,
  });
  t.throws(() => loadTransportSecurity({ ...none, tlsCertFile: files.serverCert, tlsKeyFile: missing }), {
    message: `--tls-key ${missing}: cannot read (no such file)`,
  });
  t.throws(
    () =>
      loadTransportSecurity({
        ...none,
        tlsCertFile: files.serverCert,
        tlsKeyFile: files.serverKey,
        tlsClientCaFile: missing,
      }),
    { message: `--tls-client-ca ${missing}: cannot read (no such file)` },
  );
  t.throws(() => loadTransportSecurity({ ...none, apiKeyFile: missing }), {
    message: `--api-key-file ${missing}: cannot read (no such file)`,
  });
  t.throws(() => loadTransportSecurity({ ...none, apiKeyFile: dir }), {
    message: /--api-key-file .*: cannot read \(is a directory\)/,
  });
  t.throws(() => loadTransportSecurity({ ...none, tlsCertFile: files.serverKey, tlsKeyFile: files.serverKey }), {
    message: /--tls-cert .*server\.key: no PEM certificate in it/,
  });
  t.throws(() => loadTransportSecurity({ ...none, tlsCertFile: files.serverCert, tlsKeyFile: files.serverCert }), {
    message: /--tls-key .*server\.pem: not a usable PEM private key/,
  });
  t.throws(() => loadTransportSecurity({ ...none, tlsCertFile: files.serverCert, tlsKeyFile: files.clientKey }), {
    message: /--tls-key .*client\.key is not the private key of --tls-cert .*server\.pem/,
  });
  const empty = writeFile(dir, 'empty-keys', '# nothing yet\n\n   \n');
  t.throws(() => loadTransportSecurity({ ...none, apiKeyFile: empty }), {
    message: `--api-key-file ${empty}: no key in it (one key a line; blank lines and # comments are skipped)`,
  });
  t.throws(() => parseApiKeys('good\nhas space\n', 'k'), {
    message: '--api-key-file k: line 2 is not a usable key (printable ASCII without spaces)',
  });
  t.deepEqual(parseApiKeys('\r\n a \r\n#b\nc\t\n', 'k'), ['a', 'c']);
  t.deepEqual(loadTransportSecurity(none), {}, 'nothing set: plaintext and open');
});

test('anpd serve with a missing certificate exits non-zero at once, naming the flag and path', async (t) => {
  const missing = join(dir, 'absent.pem');
  const error = await execFileAsync(
    process.execPath,
    [CLI, 'serve', '--tls-cert', missing, '--tls-key', files.serverKey, '--metrics-port', '0'],
    { timeout: 60_000 },
  ).then(
    () => undefined,
    (e: { code?: number; stderr?: string }) => e,
  );
  t.truthy(error, 'exits non-zero');
  t.is(error!.code, 1);
  t.regex(
    error!.stderr ?? '',
    new RegExp(`--tls-cert ${missing.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: cannot read \\(no such file\\)`),
  );
  t.notRegex(error!.stderr ?? '', /    at /, 'no stack trace');
});

// --- the CLI as a client -----------------------------------------------------------------------

test('clientSecurity: flags, else the environment', (t) => {
  t.deepEqual(clientSecurity({}, {}), {});
  t.deepEqual(clientSecurity({ tls: true }, {}), { tls: {} }, '--tls: the system roots');
  const fromEnv = clientSecurity(
    {},
    { ANPD_TLS_CA: files.serverCa, ANPD_TLS_SERVER_NAME: 'localhost', ANPD_API_KEY: ` ${KEY_TWO}\n` },
  );
  t.true(fromEnv.tls!.ca!.equals(buf(serverCa.certPem)));
  t.is(fromEnv.tls!.serverName, 'localhost');
  t.is(fromEnv.apiKey, KEY_TWO);
  t.is(
    clientSecurity({ 'api-key-file': files.apiKeys }, { ANPD_API_KEY: 'ignored' }).apiKey,
    KEY_ONE,
    'the file wins; its first key',
  );
  t.throws(() => clientSecurity({ 'tls-cert': files.clientCert }, {}), {
    message: /--tls-cert and --tls-key go together/,
  });
  t.throws(() => clientSecurity({}, { ANPD_TLS_CA: join(dir, 'gone.pem') }), {
    message: /--tls-ca \(ANPD_TLS_CA\) .*gone\.pem: cannot read \(no such file\)/,
  });
});

test.serial('anpd health and anpd client reach a TLS server with the CA and a key', async (t) => {
  const s = await secured();
  const env = { ...process.env, ANPD_API_KEY: '', ANPD_TLS_CA: '', ANPD_ADDRESS: '' };
  const healthy = await execFileAsync(
    process.execPath,
    [CLI, 'health', '--address', s.address, '--tls-ca', files.serverCa],
    { env, timeout: 60_000 },
  );
  t.is(healthy.stdout.trim(), 'SERVING');
  // The container health check's way: the CA from the environment, the command unchanged.
  const viaEnv = await execFileAsync(process.execPath, [CLI, 'health', '--address', s.address], {
    env: { ...env, ANPD_TLS_CA: files.serverCa },
    timeout: 60_000,
  });
  t.is(viaEnv.stdout.trim(), 'SERVING');
  const noCa = await execFileAsync(process.execPath, [CLI, 'health', '--address', s.address, '--timeout-ms', '2000'], {
    env,
    timeout: 60_000,
  }).then(
    () => undefined,
    (e: { code?: number; stdout?: string }) => e,
  );
  t.is(noCa?.code, 1, 'plaintext to a TLS port: unhealthy');
  const generated = await execFileAsync(
    process.execPath,
    [
      CLI,
      'client',
      '--address',
      s.address,
      '--tls-ca',
      files.serverCa,
      '--api-key-file',
      files.apiKeys,
      '--no-chat',
      '--max-new-tokens',
      '3',
      'The capital of France is',
    ],
    { env, timeout: 60_000 },
  );
  t.true(generated.stdout.trim().length > 0, generated.stdout);
  const refused = await execFileAsync(
    process.execPath,
    [CLI, 'client', '--address', s.address, '--tls-ca', files.serverCa, '--max-new-tokens', '3', 'hi'],
    { env, timeout: 60_000 },
  ).then(
    () => undefined,
    (e: { code?: number; stderr?: string }) => e,
  );
  t.is(refused?.code, 1);
  t.regex(refused?.stderr ?? '', /gRPC status 16: a bearer token is required/);
});
