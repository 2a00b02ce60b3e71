/**
 * `anpd client`: streams one generation from a running server (GenerateStream) to stdout.
 */
import { parseArgs } from 'node:util';
import { certificates, parseApiKeys, readSettingFile } from '../config/transport-security.js';
import type { ResponseFormat } from '../contract.js';
import { AnpdError, ConfigError } from '../errors.js';
import { type ClientSecurity, TextGenerationClient } from '../transport/grpc/client.js';
import type { GenerateChunkMsg, GenerateRequestMsg } from '../transport/grpc/messages.js';
import { numberFlag, parseSamplingFlags, SAMPLING_FLAG_OPTIONS } from './sampling-flags.js';

const TLS_HELP = `  --tls                     TLS, trusting the system's roots (implied by the options below)
  --tls-ca FILE             TLS, trusting this PEM CA (default: ANPD_TLS_CA)
  --tls-cert FILE --tls-key FILE   client certificate for mutual TLS (default: ANPD_CLIENT_TLS_CERT,
                            ANPD_CLIENT_TLS_KEY)
  --tls-server-name NAME    name the server's certificate must carry, when not the address's host
                            (default: ANPD_TLS_SERVER_NAME)
`;

export const CLIENT_HELP = `anpd client "PROMPT" — stream a generation from a running server

Options:
  --address HOST:PORT       server (default: ANPD_ADDRESS or localhost:50051)
  --no-chat                 send the prompt as raw text (default: as a user chat message)
  --max-new-tokens N        (default: the server's default)
  --temperature T --top-k K --top-p P --repetition-penalty R --seed S
  --stop TEXT               stop sequence (repeatable)
  --json-schema FILE        constrain the output to this JSON Schema (structured output)
  --json                    constrain the output to JSON
  --regex R                 constrain the output to match this regular expression
  --grammar FILE            constrain the output to this grammar (XGrammar EBNF, GBNF-like)
  --speculation off|ngram   (default ngram; the output is the same either way)
  --deadline-ms N           call deadline
  --info                    print ModelInfo as JSON instead of generating
  --stats                   print the final chunk's info as JSON on stderr
${TLS_HELP}  --api-key-file FILE       send "authorization: Bearer KEY" with the file's first key
                            (default: the key in ANPD_API_KEY, if set)
`;

/** Flags `anpd client` and `anpd health` share for reaching a server with TLS. */
const TLS_OPTIONS = {
  tls: { type: 'boolean' },
  'tls-ca': { type: 'string' },
  'tls-cert': { type: 'string' },
  'tls-key': { type: 'string' },
  'tls-server-name': { type: 'string' },
} as const;

interface SecurityFlags {
  readonly tls?: boolean | undefined;
  readonly 'tls-ca'?: string | undefined;
  readonly 'tls-cert'?: string | undefined;
  readonly 'tls-key'?: string | undefined;
  readonly 'tls-server-name'?: string | undefined;
  readonly 'api-key-file'?: string | undefined;
}

/**
 * The client side of `anpd serve --tls-cert/--tls-client-ca/--api-key-file`, from flags, else the
 * environment (so a container's health check can be pointed at the CA without changing its command).
 */
export function clientSecurity(flags: SecurityFlags, env: NodeJS.ProcessEnv = process.env): ClientSecurity {
  const pick = (flag: keyof SecurityFlags, variable: string): { value: string; source: string } | undefined => {
    const value = flags[flag];
    if (typeof value === 'string') return { value, source: flag };
    const fromEnv = env[variable];
    return fromEnv !== undefined && fromEnv !== '' ? { value: fromEnv, source: `${flag} (${variable})` } : undefined;
  };
  const ca = pick('tls-ca', 'ANPD_TLS_CA');
  const cert = pick('tls-cert', 'ANPD_CLIENT_TLS_CERT');
  const key = pick('tls-key', 'ANPD_CLIENT_TLS_KEY');
  const serverName = pick('tls-server-name', 'ANPD_TLS_SERVER_NAME');
  if ((cert === undefined) !== (key === undefined))
    throw new ConfigError('--tls-cert and --tls-key go together (the client certificate and its key, for mutual TLS)');
  const read = (file: { value: string; source: string }) => readSettingFile(file.source, file.value);
  let tls: ClientSecurity['tls'];
  if (flags.tls === true || ca !== undefined || cert !== undefined || serverName !== undefined) {
    const caPem = ca !== undefined ? read(ca) : undefined;
    if (caPem !== undefined) certificates(ca!.source, ca!.value, caPem);
    tls = {
      ...(caPem !== undefined ? { ca: caPem } : {}),
      ...(cert !== undefined && key !== undefined ? { cert: read(cert), key: read(key) } : {}),
      ...(serverName !== undefined ? { serverName: serverName.value } : {}),
    };
  }
  let apiKey: string | undefined;
  const keyFile = flags['api-key-file'];
  if (keyFile !== undefined)
    apiKey = parseApiKeys(readSettingFile('api-key-file', keyFile).toString('utf8'), keyFile)[0];
  else if (env['ANPD_API_KEY']) apiKey = env['ANPD_API_KEY'].trim();
  return { ...(tls !== undefined ? { tls } : {}), ...(apiKey !== undefined ? { apiKey } : {}) };
}

export async function runClient(argv: readonly string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: [...argv],
    allowPositionals: true,
    options: {
      help: { type: 'boolean', short: 'h' },
      address: { type: 'string' },
      'no-chat': { type: 'boolean' },
      ...SAMPLING_FLAG_OPTIONS,
      speculation: { type: 'string' },
      'deadline-ms': { type: 'string' },
      info: { type: 'boolean' },
      stats: { type: 'boolean' },
      ...TLS_OPTIONS,
      'api-key-file': { type: 'string' },
    },
  });
  if (values.help) {
    process.stdout.write(CLIENT_HELP);
    return 0;
  }
  const client = new TextGenerationClient(
    values.address ?? (process.env['ANPD_ADDRESS'] || 'localhost:50051'),
    {},
    clientSecurity(values),
  );
  const deadlineMs = numberFlag(values['deadline-ms'], 'deadline-ms');
  const settings = deadlineMs !== undefined ? { deadlineMs } : {};
  try {
    if (values.info) {
      process.stdout.write(`${JSON.stringify(await client.modelInfo('', settings), null, 2)}\n`);
      return 0;
    }
    const text = positionals.join(' ');
    if (text.trim() === '') throw new AnpdError('INVALID_REQUEST', 'client needs a prompt argument');
    const flags = parseSamplingFlags(values);
    const sampling: NonNullable<GenerateRequestMsg['sampling']> = {};
    if (flags.temperature !== undefined) sampling.temperature = flags.temperature;
    if (flags.topK !== undefined) sampling.top_k = flags.topK;
    if (flags.topP !== undefined) sampling.top_p = flags.topP;
    if (flags.repetitionPenalty !== undefined) sampling.repetition_penalty = flags.repetitionPenalty;
    if (flags.seed !== undefined) sampling.seed = flags.seed;
    const request: GenerateRequestMsg = {
      request_id: `cli-${process.pid}`,
      ...(values['no-chat'] ? { text } : { messages: { messages: [{ role: 'user', content: text }] } }),
      sampling,
      stopping: { max_new_tokens: flags.maxNewTokens ?? 0, stop_sequences: flags.stopSequences },
      speculation: { mode: values.speculation === 'off' ? 'MODE_OFF' : 'MODE_NGRAM' },
      ...(flags.responseFormat !== undefined ? { response_format: responseFormatMsg(flags.responseFormat) } : {}),
    };
    const stream = client.generateStream(request, settings);
    process.once('SIGINT', () => stream.cancel());
    for await (const chunk of stream as AsyncIterable<GenerateChunkMsg>) {
      process.stdout.write(chunk.text);
      if (chunk.final) {
        process.stdout.write('\n');
        if (values.stats) process.stderr.write(`${JSON.stringify(chunk.final)}\n`);
      }
    }
    return 0;
  } catch (error) {
    const e = error as { code?: number; details?: string };
    if (typeof e.code === 'number' && e.details !== undefined) {
      process.stderr.write(`error: gRPC status ${e.code}: ${e.details}\n`);
      return 1;
    }
    throw error;
  } finally {
    client.close();
  }
}

function responseFormatMsg(format: ResponseFormat): NonNullable<GenerateRequestMsg['response_format']> {
  switch (format.type) {
    case 'json_object':
      return { json_object: {} };
    case 'json_schema':
      return { json_schema: { schema: format.schema } };
    case 'regex':
      return { regex: format.pattern };
    case 'grammar':
      return { grammar: format.ebnf };
  }
}

export const HEALTH_HELP = `anpd health — ask a running server's grpc.health.v1 service (for container health checks)

Options:
  --address HOST:PORT       server (default: ANPD_ADDRESS, else 127.0.0.1:ANPD_PORT, else 127.0.0.1:50051)
  --service NAME            service to ask about (default "": the whole server)
  --timeout-ms N            give up after N ms (default 3000)
${TLS_HELP}
Health is never behind the API key. With TLS on the server, a container health check needs the CA:
set ANPD_TLS_CA (and ANPD_TLS_SERVER_NAME when the certificate does not name 127.0.0.1; with mutual
TLS also ANPD_CLIENT_TLS_CERT and ANPD_CLIENT_TLS_KEY) in the container's environment.

Prints the status; exits 0 when SERVING, 1 otherwise (NOT_SERVING, unreachable, timeout).
`;

export async function runHealth(argv: readonly string[]): Promise<number> {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      help: { type: 'boolean', short: 'h' },
      address: { type: 'string' },
      service: { type: 'string' },
      'timeout-ms': { type: 'string' },
      ...TLS_OPTIONS,
    },
  });
  if (values.help) {
    process.stdout.write(HEALTH_HELP);
    return 0;
  }
  // The server's own port setting, so a container health check follows ANPD_PORT.
  const address = values.address ?? (process.env['ANPD_ADDRESS'] || `127.0.0.1:${process.env['ANPD_PORT'] || 50051}`);
  const timeoutMs = numberFlag(values['timeout-ms'], 'timeout-ms') ?? 3000;
  const client = new TextGenerationClient(address, {}, clientSecurity(values));
  try {
    const status = await client.health(values.service ?? '', { deadlineMs: timeoutMs });
    process.stdout.write(`${status}\n`);
    return status === 'SERVING' ? 0 : 1;
  } catch (error) {
    const e = error as { code?: number; details?: string };
    process.stdout.write(`UNREACHABLE ${address}: ${e.details ?? String(error)}\n`);
    return 1;
  } finally {
    client.close();
  }
}
