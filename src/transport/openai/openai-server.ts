/**
 * The OpenAI-compatible HTTP API (`anpd serve --http-port N`) beside gRPC, over the same
 * InferenceService: GET /v1/models, POST /v1/chat/completions, POST /v1/completions, non-streamed
 * or as server-sent events (`data: {chunk}` … `data: [DONE]`). Admission, queue limits, draining
 * and the bearer keys are the service's and the gRPC port's; a client that disconnects cancels its
 * generation. node:http is enough: three routes, JSON bodies, one SSE writer.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createTlsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { type Context, propagation, ROOT_CONTEXT, type TextMapGetter } from '@opentelemetry/api';
import type { FinishReason, GenerationDelta } from '../../contract.js';
import type { InferenceService, ServiceFinal } from '../../engine/inference-service.js';
import { AnpdError, type ErrorCode, InvalidRequestError } from '../../errors.js';
import type { Logger } from '../../log.js';
import type { TokenLogprob } from '../../sampling/logprobs.js';
import type { GenerationTelemetry } from '../../telemetry/generation-telemetry.js';
import { BearerTokenCheck } from '../bearer-token.js';
import { cacheScopeOf } from '../cache-scope.js';
import {
  chatLogprobs,
  finishReasonOf,
  type ParsedOpenAiRequest,
  parseChatCompletion,
  parseCompletion,
  type UnscoredToken,
} from './openai-messages.js';

/** The routes served (the span names of their requests). */
const ROUTES = new Set(['/v1/models', '/v1/chat/completions', '/v1/completions']);

/** Largest request body (bytes): a long prompt is well within; 413 past it. */
export const OPENAI_BODY_BYTES_MAX = 4 * 1024 * 1024;
/** Deepest nesting of objects and arrays a body may have (a JSON schema in response_format is the deep part); 400 past it. */
export const OPENAI_BODY_DEPTH_MAX = 64;

/** Whether JSON text nests objects and arrays deeper than `depthMax` (counted before parsing: no deep structure is built). */
export function jsonDeeperThan(text: string, depthMax: number): boolean {
  let depth = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (c === 0x5c)
        i++; // backslash: skip the escaped character
      else if (c === 0x22) inString = false;
    } else if (c === 0x22) inString = true;
    else if (c === 0x7b || c === 0x5b) {
      if (++depth > depthMax) return true;
    } else if (c === 0x7d || c === 0x5d) depth--;
  }
  return false;
}

export interface OpenAiServerOptions {
  readonly host: string;
  /** 0: any free port. */
  readonly port: number;
  /** Bearer keys (the gRPC port's --api-key-file); absent: open. */
  readonly apiKeys?: readonly string[];
  /** The gRPC port's certificate (--tls-cert / --tls-key / --tls-client-ca): HTTPS then; absent: plaintext. */
  readonly tls?: { readonly certChain: Buffer; readonly privateKey: Buffer; readonly clientCa?: Buffer };
}

export interface RunningOpenAiServer {
  readonly port: number;
  /** Stops accepting, lets in-flight generations finish for `graceMs`, then closes every connection. */
  close(graceMs?: number): Promise<void>;
}

interface HttpMapping {
  readonly status: number;
  readonly type: string;
  readonly expose: boolean;
}

/** The one table from our errors to HTTP statuses and OpenAI error types. */
const HTTP_BY_ERROR_CODE: Readonly<Record<ErrorCode, HttpMapping>> = {
  INVALID_REQUEST: { status: 400, type: 'invalid_request_error', expose: true },
  CONTEXT_OVERFLOW: { status: 400, type: 'invalid_request_error', expose: true },
  MODEL_NOT_FOUND: { status: 404, type: 'not_found_error', expose: true },
  DUPLICATE_REQUEST: { status: 409, type: 'invalid_request_error', expose: true },
  OVERLOADED: { status: 429, type: 'rate_limit_error', expose: true },
  UNAVAILABLE: { status: 503, type: 'service_unavailable', expose: true },
  EXECUTION_PROVIDER: { status: 503, type: 'service_unavailable', expose: true },
  CANCELLED: { status: 499, type: 'cancelled', expose: true },
  DEADLINE_EXCEEDED: { status: 504, type: 'timeout', expose: true },
  UNAUTHENTICATED: { status: 401, type: 'authentication_error', expose: true },
  REPLICA_FAILED: { status: 503, type: 'service_unavailable', expose: true },
  MODEL_INVALID: { status: 500, type: 'server_error', expose: false },
  INTERNAL: { status: 500, type: 'server_error', expose: false },
};

class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly type: string,
    message: string,
  ) {
    super(message);
  }
}

function errorBody(error: unknown): { status: number; body: object; internal: boolean } {
  if (error instanceof HttpError)
    return {
      status: error.status,
      body: { error: { message: error.message, type: error.type, param: null, code: null } },
      internal: false,
    };
  const m = error instanceof AnpdError ? HTTP_BY_ERROR_CODE[error.code] : HTTP_BY_ERROR_CODE.INTERNAL;
  const message =
    m.expose && error instanceof Error ? error.message : 'internal error while generating; see the server log';
  const code = error instanceof AnpdError ? error.code.toLowerCase() : 'internal';
  return { status: m.status, body: { error: { message, type: m.type, param: null, code } }, internal: !m.expose };
}

const HEADER_GETTER: TextMapGetter<IncomingMessage['headers']> = {
  get: (carrier, key) => carrier[key.toLowerCase()],
  keys: (carrier) => Object.keys(carrier),
};

/** How telemetry reports a failed generation: the HTTP status and whether it was shed, cancelled or an error. */
function failureOf(error: unknown): { errorType: string; outcome: 'cancelled' | 'error' | 'rejected' } {
  const { status, internal } = errorBody(error);
  const outcome = status === 499 || status === 504 ? 'cancelled' : internal ? 'error' : 'rejected';
  return { errorType: `HTTP ${status}`, outcome };
}

function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': String(Buffer.byteLength(text)),
    ...headers,
  });
  res.end(text);
}

async function readJson(req: IncomingMessage): Promise<Record<string, unknown>> {
  const type = req.headers['content-type'] ?? '';
  if (!type.toLowerCase().startsWith('application/json'))
    throw new HttpError(415, 'invalid_request_error', 'the body must be JSON (content-type: application/json)');
  const declared = Number(req.headers['content-length'] ?? 0);
  if (declared > OPENAI_BODY_BYTES_MAX)
    throw new HttpError(413, 'invalid_request_error', `the body is larger than ${OPENAI_BODY_BYTES_MAX} bytes`);
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > OPENAI_BODY_BYTES_MAX)
      throw new HttpError(413, 'invalid_request_error', `the body is larger than ${OPENAI_BODY_BYTES_MAX} bytes`);
    chunks.push(chunk as Buffer);
  }
  const text = Buffer.concat(chunks).toString('utf8');
  if (jsonDeeperThan(text, OPENAI_BODY_DEPTH_MAX))
    throw new InvalidRequestError(`the body nests objects and arrays deeper than ${OPENAI_BODY_DEPTH_MAX} levels`);
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch (error) {
    throw new InvalidRequestError(`the body is not JSON: ${(error as Error).message}`);
  }
  if (typeof body !== 'object' || body === null || Array.isArray(body))
    throw new InvalidRequestError('the body must be a JSON object');
  return body as Record<string, unknown>;
}

type LogprobEntry = ReturnType<typeof chatLogprobs>[number] | UnscoredToken;

interface Choice {
  text: string;
  logprobs: LogprobEntry[];
}

/** `telemetry`: the generation spans and metrics the gRPC port records (the HTTP method names the route). */
export async function startOpenAiServer(
  service: InferenceService,
  options: OpenAiServerOptions,
  logger: Logger,
  telemetry?: GenerationTelemetry,
): Promise<RunningOpenAiServer> {
  const tokens = options.apiKeys !== undefined ? new BearerTokenCheck(options.apiKeys) : undefined;
  let nextId = 1;
  const inFlight = new Set<Promise<void>>();

  const models = () => {
    const info = service.modelInfo('');
    return {
      object: 'list',
      data: [{ id: service.modelName, object: 'model', created: 0, owned_by: 'anpd', display_name: info.displayName }],
    };
  };

  async function generate(
    req: IncomingMessage,
    res: ServerResponse,
    kind: 'chat' | 'text',
    parent: Context,
  ): Promise<void> {
    const body = await readJson(req);
    const parsed: ParsedOpenAiRequest = kind === 'chat' ? parseChatCompletion(body) : parseCompletion(body);
    // The served model answers to its name (or none); another is not here.
    if (parsed.model !== '' && parsed.model !== service.modelName)
      throw new AnpdError('MODEL_NOT_FOUND', `model "${parsed.model}" is not served here; GET /v1/models lists it`);
    const controller = new AbortController();
    // A client that goes away cancels its generation (its slot is freed between rounds).
    res.on('close', () => {
      if (!res.writableFinished) controller.abort(new Error('the HTTP client disconnected'));
    });
    const id = `${kind === 'chat' ? 'chatcmpl' : 'cmpl'}-${process.pid}-${nextId++}`;
    const created = Math.floor(Date.now() / 1000);
    const object = kind === 'chat' ? 'chat.completion' : 'text_completion';
    const texts = (ids: readonly number[]) => service.decodeTokens('', ids);
    /** The echoed prompt's entries: its first token (unscored), then each scored one. */
    const echoed = (scored: readonly TokenLogprob[]): LogprobEntry[] => {
      const promptIds = service.tokenize('', parsed.request.prompt);
      const head: UnscoredToken = { token: texts(promptIds.slice(0, 1))[0] ?? '', logprob: null, top_logprobs: null };
      return [head, ...chatLogprobs(scored, texts)];
    };
    const n = parsed.request.n ?? 1;
    const choices: Choice[] = Array.from({ length: n }, () => ({ text: '', logprobs: [] }));
    const cacheScope = cacheScopeOf(req.headers.authorization, parsed.cache.salt, parsed.cache.off);
    const request = cacheScope !== undefined ? { ...parsed.request, cacheScope } : parsed.request;
    const generation = service.generate('', request, controller.signal);
    const events =
      telemetry === undefined
        ? generation
        : telemetry.observe(
            generation,
            {
              method: kind === 'chat' ? 'ChatCompletions' : 'Completions',
              requestId: id,
              model: service.modelName,
              request: parsed.request,
              stream: parsed.stream,
            },
            parent,
            failureOf,
          );
    try {
      await respond();
    } finally {
      // However this ends (an error, a client gone), the generation ends too and gives its slot back.
      await events.return(undefined);
    }
    async function respond(): Promise<void> {
      // The first event decides the status: errors before it (validation, a full queue) are plain HTTP errors.
      const first = await events.next();
      let final: ServiceFinal | undefined;
      const completionTokens = (f: ServiceFinal) => (parsed.echo?.scoreOnly === true ? 0 : f.completionTokens);
      const usageOf = (f: ServiceFinal) => ({
        prompt_tokens: f.promptTokens,
        completion_tokens: completionTokens(f),
        total_tokens: f.promptTokens + completionTokens(f),
        prompt_tokens_details: { cached_tokens: f.cachedPromptTokens ?? 0 },
        // Our extension: what speculation did.
        anpd: {
          verify_steps: f.stats.rounds,
          draft_tokens: f.stats.draftTokensProposed,
          accepted_tokens: f.stats.draftTokensAccepted,
          pool_draft_tokens: f.stats.poolDraftTokens,
          pool_accepted_tokens: f.stats.poolAcceptedTokens,
        },
      });
      const finishReasons = (f: ServiceFinal): FinishReason[] =>
        choices.map((_, i) =>
          parsed.echo?.scoreOnly === true ? 'length' : (f.samples?.[i]?.finishReason ?? f.finishReason),
        );
      if (!parsed.stream) {
        for (let step = first; !step.done; step = await events.next()) {
          const e = step.value;
          if (e.type === 'final') final = e;
          else if (e.promptLogprobs !== undefined) {
            const prompt = echoed(e.promptLogprobs);
            for (const c of choices) c.logprobs.push(...prompt);
          } else if (parsed.echo?.scoreOnly !== true) {
            const c = choices[e.index ?? 0]!;
            c.text += e.text;
            if (e.logprobs !== undefined) c.logprobs.push(...chatLogprobs(e.logprobs, texts));
          }
        }
        if (parsed.echo !== undefined) for (const c of choices) c.text = parsed.echo.prompt + c.text;
        const reasons = finishReasons(final!);
        sendJson(res, 200, {
          id,
          object,
          created,
          model: service.modelName,
          choices: choices.map((c, index) =>
            kind === 'chat'
              ? {
                  index,
                  message: { role: 'assistant', content: c.text },
                  logprobs: parsed.logprobs ? { content: c.logprobs } : null,
                  finish_reason: finishReasonOf(reasons[index]!),
                }
              : {
                  index,
                  text: c.text,
                  logprobs: parsed.logprobs ? completionLogprobs(c.logprobs) : null,
                  finish_reason: finishReasonOf(reasons[index]!),
                },
          ),
          usage: usageOf(final!),
        });
        return;
      }
      res.writeHead(200, {
        'content-type': 'text/event-stream',
        'cache-control': 'no-cache',
        connection: 'keep-alive',
      });
      const chunk = (choice: object, usage: object | null = null) =>
        `data: ${JSON.stringify({ id, object: kind === 'chat' ? 'chat.completion.chunk' : 'text_completion', created, model: service.modelName, choices: [choice], ...(parsed.includeUsage ? { usage } : {}) })}\n\n`;
      if (kind === 'chat')
        for (let index = 0; index < n; index++)
          res.write(chunk({ index, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null }));
      if (parsed.echo !== undefined) {
        // The prompt first (its log-probabilities are the first event when asked for).
        const scored = first.done || first.value.type !== 'delta' ? undefined : first.value.promptLogprobs;
        const logprobs = scored !== undefined ? completionLogprobs(echoed(scored)) : null;
        for (let index = 0; index < n; index++)
          res.write(chunk({ index, text: parsed.echo.prompt, logprobs, finish_reason: null }));
      }
      try {
        for (let step = first; !step.done; step = await events.next()) {
          const e = step.value;
          if (e.type === 'final') {
            final = e;
            continue; // the last event: the loop ends with the generator (its slot is released then)
          }
          if ((e.text === '' && e.logprobs === undefined) || parsed.echo?.scoreOnly === true) continue;
          res.write(chunk(deltaChoice(kind, e, parsed.logprobs ? chatLogprobs(e.logprobs ?? [], texts) : undefined)));
        }
        const reasons = finishReasons(final!);
        for (let index = 0; index < n; index++)
          res.write(
            chunk(
              kind === 'chat'
                ? { index, delta: {}, logprobs: null, finish_reason: finishReasonOf(reasons[index]!) }
                : { index, text: '', logprobs: null, finish_reason: finishReasonOf(reasons[index]!) },
            ),
          );
        if (parsed.includeUsage)
          res.write(
            `data: ${JSON.stringify({ id, object: kind === 'chat' ? 'chat.completion.chunk' : 'text_completion', created, model: service.modelName, choices: [], usage: usageOf(final!) })}\n\n`,
          );
        res.end('data: [DONE]\n\n');
      } catch (error) {
        // Mid-stream: the status is sent; the error goes as an event, then the stream ends.
        if (!res.writableEnded && !controller.signal.aborted) {
          const { body, internal } = errorBody(error);
          if (internal) logger.error('generation failed', { error });
          res.end(`data: ${JSON.stringify(body)}\n\n`);
        }
      }
    }
  }

  const listener = (req: IncomingMessage, res: ServerResponse) => {
    const work = handle(req, res);
    inFlight.add(work);
    void work.finally(() => inFlight.delete(work));
  };
  const tls = options.tls;
  const server: Server =
    tls === undefined
      ? createServer(listener)
      : createTlsServer(
          {
            cert: tls.certChain,
            key: tls.privateKey,
            ...(tls.clientCa !== undefined ? { ca: tls.clientCa, requestCert: true, rejectUnauthorized: true } : {}),
          },
          listener,
        );

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = (req.url ?? '/').split('?')[0]!;
    const route = ROUTES.has(path) ? path : undefined;
    // One SERVER span per request on a known route, under the caller's trace (W3C traceparent), as gRPC has per RPC.
    const caller = propagation.extract(ROOT_CONTEXT, req.headers, HEADER_GETTER);
    const http = route !== undefined ? telemetry?.startHttp(req.method ?? 'GET', route, caller) : undefined;
    try {
      await serve(req, res, path, http?.context ?? caller);
    } finally {
      if (http !== undefined) {
        const status = res.statusCode;
        // An error status, or a response the client did not wait for (its generation was cancelled).
        const errorType = status >= 400 ? String(status) : res.writableEnded ? undefined : 'CANCELLED';
        telemetry!.endHttp(http.span, status, errorType);
      }
    }
  }

  async function serve(req: IncomingMessage, res: ServerResponse, path: string, context: Context): Promise<void> {
    try {
      if (tokens !== undefined) {
        const header = req.headers.authorization;
        const error = tokens.check(header === undefined ? [] : [header], 'header');
        if (error !== undefined) throw error;
      }
      if (req.method === 'GET' && path === '/v1/models') return sendJson(res, 200, models());
      if (req.method === 'POST' && path === '/v1/chat/completions') return await generate(req, res, 'chat', context);
      if (req.method === 'POST' && path === '/v1/completions') return await generate(req, res, 'text', context);
      throw new HttpError(
        404,
        'not_found_error',
        `no route ${req.method} ${path}: /v1/models, /v1/chat/completions, /v1/completions`,
      );
    } catch (error) {
      if (res.headersSent) {
        res.destroy();
        return;
      }
      const { status, body, internal } = errorBody(error);
      if (internal) logger.error('request failed', { error });
      sendJson(res, status, body, status === 429 ? { 'retry-after': '1' } : {});
    }
  }

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port, options.host, () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  return {
    port,
    async close(graceMs = 0) {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeIdleConnections();
      const finished = Promise.allSettled([...inFlight]);
      await Promise.race([finished, new Promise((r) => setTimeout(r, graceMs).unref())]);
      server.closeAllConnections();
      await closed;
    },
  };
}

function deltaChoice(
  kind: 'chat' | 'text',
  e: GenerationDelta,
  logprobs: ReturnType<typeof chatLogprobs> | undefined,
): object {
  const index = e.index ?? 0;
  if (kind === 'chat')
    return {
      index,
      delta: { content: e.text },
      logprobs: logprobs !== undefined ? { content: logprobs } : null,
      finish_reason: null,
    };
  return {
    index,
    text: e.text,
    logprobs: logprobs !== undefined ? completionLogprobs(logprobs) : null,
    finish_reason: null,
  };
}

/** The legacy endpoint's log-probability shape (an echoed prompt's first token: null, as OpenAI has it). */
function completionLogprobs(l: readonly LogprobEntry[]): object {
  return {
    tokens: l.map((x) => x.token),
    token_logprobs: l.map((x) => x.logprob),
    top_logprobs: l.map((x) =>
      x.top_logprobs === null ? null : Object.fromEntries(x.top_logprobs.map((t) => [t.token, t.logprob])),
    ),
  };
}
