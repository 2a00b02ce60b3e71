/**
 * The OpenAI API's request bodies → engine requests, and engine events → its responses and stream
 * chunks. Checks here are what only this wire can get wrong (types, shapes); the one validator
 * (engine/validate.ts) checks the values. Every message names the body field.
 */
import type { FinishReason, GenerateRequest, Prompt, ResponseFormat, SpeculationOptions } from '../../contract.js';
import { DEFAULT_SPECULATION } from '../../contract.js';
import { InvalidRequestError } from '../../errors.js';
import { CACHE_SALT_CHARS_MAX } from '../cache-scope.js';
import { logprobTexts, type TokenTexts } from '../logprob-texts.js';
import type { TokenLogprob } from '../../sampling/logprobs.js';
import type { SamplingParams } from '../../sampling/sampler.js';
import type { ChatMessage } from '../../tokenizer/tokenizer.js';

type Body = Record<string, unknown>;

export interface ParsedOpenAiRequest {
  readonly model: string;
  readonly request: GenerateRequest;
  readonly stream: boolean;
  readonly includeUsage: boolean;
  readonly logprobs: boolean;
  /**
   * The legacy endpoint's `echo`: the prompt comes back before the completion (with its
   * log-probabilities when logprobs are asked for). `scoreOnly` (max_tokens 0): the prompt alone;
   * one token is generated (the engine always generates one) and not returned.
   */
  readonly echo?: { readonly prompt: string; readonly scoreOnly: boolean };
  /** `cache_salt` (as vLLM takes it) and our `cache_off`: with the caller's key, the request's cache scope. */
  readonly cache: { readonly salt: string; readonly off: boolean };
}

const isObject = (v: unknown): v is Body => typeof v === 'object' && v !== null && !Array.isArray(v);

function optionalNumber(body: Body, field: string): number | undefined {
  const v = body[field];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'number' || !Number.isFinite(v)) throw new InvalidRequestError(`${field} must be a number`);
  return v;
}

function optionalBoolean(body: Body, field: string): boolean | undefined {
  const v = body[field];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'boolean') throw new InvalidRequestError(`${field} must be a boolean`);
  return v;
}

function stopOf(body: Body): string[] {
  const stop = body['stop'];
  if (stop === undefined || stop === null) return [];
  if (typeof stop === 'string') return [stop];
  if (Array.isArray(stop) && stop.every((s) => typeof s === 'string')) return stop as string[];
  throw new InvalidRequestError('stop must be a string or an array of strings');
}

function messagesOf(body: Body): ChatMessage[] {
  const messages = body['messages'];
  if (!Array.isArray(messages) || messages.length === 0)
    throw new InvalidRequestError('messages must be a non-empty array');
  return messages.map((m, i) => {
    if (!isObject(m) || typeof m['role'] !== 'string')
      throw new InvalidRequestError(`messages[${i}] must be an object with a role`);
    const content = m['content'];
    if (typeof content === 'string') return { role: m['role'], content };
    // Content parts: the text ones, in order (no images here).
    if (Array.isArray(content)) {
      const texts = content.map((part, j) => {
        if (!isObject(part) || part['type'] !== 'text' || typeof part['text'] !== 'string')
          throw new InvalidRequestError(
            `messages[${i}].content[${j}] must be a text part ({"type": "text", "text": ...})`,
          );
        return part['text'];
      });
      return { role: m['role'], content: texts.join('') };
    }
    throw new InvalidRequestError(`messages[${i}].content must be a string or an array of text parts`);
  });
}

function responseFormatOf(body: Body): ResponseFormat | undefined {
  const f = body['response_format'];
  if (f === undefined || f === null) return undefined;
  if (!isObject(f)) throw new InvalidRequestError('response_format must be an object');
  switch (f['type']) {
    case 'text':
      return undefined;
    case 'json_object':
      return { type: 'json_object' };
    case 'json_schema': {
      const js = f['json_schema'];
      if (!isObject(js) || !isObject(js['schema']))
        throw new InvalidRequestError('response_format.json_schema.schema must be an object (a JSON Schema)');
      return {
        type: 'json_schema',
        schema: JSON.stringify(js['schema']),
        ...(js['strict'] === false ? { strict: false } : {}),
      };
    }
    default:
      throw new InvalidRequestError('response_format.type must be text, json_object or json_schema');
  }
}

/** The sampling fields both endpoints share; extras as vLLM takes them (top_k, min_p, repetition_penalty). */
function samplingOf(body: Body): SamplingParams {
  const seed = optionalNumber(body, 'seed');
  if (seed !== undefined && (!Number.isInteger(seed) || seed < 0))
    throw new InvalidRequestError('seed must be a non-negative integer');
  const bias = body['logit_bias'];
  let logitBias: [number, number][] | undefined;
  if (bias !== undefined && bias !== null) {
    if (!isObject(bias)) throw new InvalidRequestError('logit_bias must be an object of token id → bias');
    logitBias = Object.entries(bias).map(([id, value]) => {
      if (!/^\d+$/.test(id) || typeof value !== 'number')
        throw new InvalidRequestError(`logit_bias["${id}"]: keys must be token ids and values numbers`);
      return [Number(id), value];
    });
  }
  const presence = optionalNumber(body, 'presence_penalty');
  const frequency = optionalNumber(body, 'frequency_penalty');
  const minP = optionalNumber(body, 'min_p');
  return {
    // OpenAI's default temperature is 1; greedy is temperature 0.
    temperature: optionalNumber(body, 'temperature') ?? 1,
    topP: optionalNumber(body, 'top_p') ?? 1,
    topK: optionalNumber(body, 'top_k') ?? 0,
    repetitionPenalty: optionalNumber(body, 'repetition_penalty') ?? 1,
    seed: seed ?? 0,
    ...(minP !== undefined && minP !== 0 ? { minP } : {}),
    ...(presence !== undefined && presence !== 0 ? { presencePenalty: presence } : {}),
    ...(frequency !== undefined && frequency !== 0 ? { frequencyPenalty: frequency } : {}),
    ...(logitBias !== undefined && logitBias.length > 0 ? { logitBias } : {}),
  };
}

/** Our extra: `speculation: "off" | "ngram"` (default ngram; the output is the same either way). */
function speculationOf(body: Body): SpeculationOptions {
  const s = body['speculation'];
  if (s === undefined || s === null || s === 'ngram') return DEFAULT_SPECULATION;
  if (s === 'off') return { ...DEFAULT_SPECULATION, mode: 'off' };
  throw new InvalidRequestError('speculation must be "off" or "ngram"');
}

function common(body: Body, prompt: Prompt, maxTokensFields: readonly string[]): ParsedOpenAiRequest {
  const model = body['model'];
  if (model !== undefined && typeof model !== 'string') throw new InvalidRequestError('model must be a string');
  let maxNewTokens = 0;
  for (const field of maxTokensFields) {
    const v = optionalNumber(body, field);
    if (v !== undefined) maxNewTokens = v;
  }
  const n = optionalNumber(body, 'n') ?? 1;
  const streamOptions = body['stream_options'];
  const responseFormat = responseFormatOf(body);
  const request: GenerateRequest = {
    prompt,
    maxNewTokens,
    stopSequences: stopOf(body),
    sampling: samplingOf(body),
    speculation: speculationOf(body),
    ...(n !== 1 ? { n } : {}),
    ...(responseFormat !== undefined ? { responseFormat } : {}),
  };
  const salt = body['cache_salt'] ?? '';
  if (typeof salt !== 'string' || salt.length > CACHE_SALT_CHARS_MAX)
    throw new InvalidRequestError(`cache_salt must be a string of at most ${CACHE_SALT_CHARS_MAX} characters`);
  return {
    model: model ?? '',
    request,
    stream: optionalBoolean(body, 'stream') ?? false,
    includeUsage: isObject(streamOptions) && streamOptions['include_usage'] === true,
    logprobs: false,
    cache: { salt, off: optionalBoolean(body, 'cache_off') ?? false },
  };
}

export function parseChatCompletion(body: Body): ParsedOpenAiRequest {
  const parsed = common(body, { kind: 'messages', messages: messagesOf(body) }, [
    'max_tokens',
    'max_completion_tokens',
  ]);
  const logprobs = optionalBoolean(body, 'logprobs') ?? false;
  const top = optionalNumber(body, 'top_logprobs');
  if (top !== undefined && !logprobs) throw new InvalidRequestError('top_logprobs needs logprobs: true');
  return logprobs ? { ...parsed, logprobs, request: { ...parsed.request, logprobs: { top: top ?? 0 } } } : parsed;
}

export function parseCompletion(body: Body): ParsedOpenAiRequest {
  const prompt = body['prompt'];
  if (typeof prompt !== 'string') throw new InvalidRequestError('prompt must be a string');
  const parsed = common(body, { kind: 'text', text: prompt }, ['max_tokens']);
  const echo = optionalBoolean(body, 'echo') ?? false;
  // Scoring a prompt: echo with max_tokens 0.
  const scoreOnly = echo && body['max_tokens'] === 0;
  // The legacy endpoint's default max_tokens is 16.
  const maxNewTokens = scoreOnly ? 1 : parsed.request.maxNewTokens === 0 ? 16 : parsed.request.maxNewTokens;
  const logprobs = optionalNumber(body, 'logprobs');
  return {
    ...parsed,
    request: {
      ...parsed.request,
      maxNewTokens,
      ...(logprobs !== undefined ? { logprobs: { top: logprobs, ...(echo ? { prompt: true } : {}) } } : {}),
    },
    logprobs: logprobs !== undefined,
    ...(echo ? { echo: { prompt, scoreOnly } } : {}),
  };
}

/** OpenAI has stop and length: a stop sequence or EOS is "stop"; running out (of tokens, time, a constraint's room) is "length". */
export function finishReasonOf(reason: FinishReason): 'stop' | 'length' {
  return reason === 'eos_token' || reason === 'stop_sequence' ? 'stop' : 'length';
}

/** The first prompt token's entry when the prompt is echoed: nothing predicts it, so it has no log-probability. */
export interface UnscoredToken {
  readonly token: string;
  readonly logprob: null;
  readonly top_logprobs: null;
}

/** Chat log-probabilities: each token with its text and bytes, and the alternatives. */
export function chatLogprobs(
  logprobs: readonly TokenLogprob[],
  texts: TokenTexts,
): {
  token: string;
  logprob: number;
  bytes: number[];
  top_logprobs: { token: string; logprob: number; bytes: number[] }[];
}[] {
  const bytes = (s: string) => [...Buffer.from(s, 'utf8')];
  return logprobTexts(logprobs, texts).map(({ text, topTexts }, i) => ({
    token: text,
    logprob: logprobs[i]!.logprob,
    bytes: bytes(text),
    top_logprobs: logprobs[i]!.top.map((t, j) => ({
      token: topTexts[j]!,
      logprob: t.logprob,
      bytes: bytes(topTexts[j]!),
    })),
  }));
}
