/**
 * The proto messages as proto-loader decodes them (keepCase, longs/enums as strings, no defaults,
 * empty arrays, oneof names), and their translation to and from engine types. Validation of what
 * only the wire can get wrong (missing prompt, unknown role, huge seed) lives here; the one
 * validator (engine/validate.ts) checks the values. Every message names the field.
 */
import {
  DEFAULT_SPECULATION,
  type GenerateRequest as EngineRequest,
  type GenerationDelta,
  type GenerationStats,
  type Prompt,
  type ResponseFormat,
  type SpeculationOptions,
} from '../../contract.js';
import type { ServiceCancelledError, ServiceFinal, ServedModelInfo } from '../../engine/inference-service.js';
import { InvalidRequestError } from '../../errors.js';
import { CACHE_SALT_CHARS_MAX } from '../cache-scope.js';
import { logprobTexts, type TokenTexts } from '../logprob-texts.js';
import type { TokenLogprob } from '../../sampling/logprobs.js';
import type { SamplingParams as EngineSampling } from '../../sampling/sampler.js';
import type { ChatMessage } from '../../tokenizer/tokenizer.js';

export interface ChatMessageMsg {
  role?: string;
  content?: string;
}

export interface GenerateRequestMsg {
  request_id?: string;
  model?: string;
  prompt?: 'text' | 'messages' | 'token_ids';
  text?: string;
  messages?: { messages?: ChatMessageMsg[] };
  token_ids?: { ids?: number[] };
  sampling?: {
    temperature?: number;
    top_p?: number;
    top_k?: number;
    repetition_penalty?: number;
    seed?: string;
    min_p?: number;
    presence_penalty?: number;
    frequency_penalty?: number;
    logit_bias?: { token_id?: number; bias?: number }[];
  };
  stopping?: {
    max_new_tokens?: number;
    stop_sequences?: string[];
    stop_token_ids?: number[];
    ignore_eos?: boolean;
    min_new_tokens?: number;
    time_limit_ms?: number;
    include_stop_sequence?: boolean;
    truncate_input_tokens?: number;
  };
  speculation?: {
    mode?: 'MODE_DEFAULT' | 'MODE_OFF' | 'MODE_NGRAM';
    max_draft_tokens?: number;
    ngram_n?: number;
    forced_drafts?: boolean;
  };
  logprobs?: { enabled?: boolean; top_logprobs?: number; prompt?: boolean };
  n?: number;
  response_format?: {
    format?: 'json_object' | 'json_schema' | 'regex' | 'grammar';
    json_object?: object;
    json_schema?: { schema?: string; strict?: boolean };
    regex?: string;
    grammar?: string;
  };
  cache?: { salt?: string; off?: boolean };
}

export interface TokenLogprobMsg {
  token_id: number;
  logprob: number;
  rank: number;
  text: string;
  top: { token_id: number; logprob: number; text: string }[];
}

export type FinishReasonMsg =
  | 'FINISH_REASON_LENGTH'
  | 'FINISH_REASON_EOS_TOKEN'
  | 'FINISH_REASON_STOP_SEQUENCE'
  | 'FINISH_REASON_CANCELLED'
  | 'FINISH_REASON_TIME_LIMIT'
  | 'FINISH_REASON_CONSTRAINT_INCOMPLETE';

export interface SpeculationStatsMsg {
  verify_steps: number;
  draft_tokens: number;
  accepted_tokens: number;
  pool_draft_tokens: number;
  pool_accepted_tokens: number;
}

function speculationStats(stats: Readonly<GenerationStats>): SpeculationStatsMsg {
  return {
    verify_steps: stats.rounds,
    draft_tokens: stats.draftTokensProposed,
    accepted_tokens: stats.draftTokensAccepted,
    pool_draft_tokens: stats.poolDraftTokens,
    pool_accepted_tokens: stats.poolAcceptedTokens,
  };
}

export interface SampleFinalMsg {
  index: number;
  finish_reason: FinishReasonMsg;
  output_tokens: number;
  speculation: SpeculationStatsMsg;
}

export interface SampleOutputMsg {
  index: number;
  text: string;
  token_ids: number[];
  logprobs?: TokenLogprobMsg[];
  finish_reason?: FinishReasonMsg;
}

export interface FinalInfoMsg {
  finish_reason: FinishReasonMsg;
  samples?: SampleFinalMsg[];
  usage: { input_tokens: number; output_tokens: number; cached_input_tokens: number };
  speculation: SpeculationStatsMsg;
  queue_ms: number;
  first_token_ms: number;
  total_ms: number;
  seed: string;
}

export interface GenerateChunkMsg {
  request_id: string;
  seq: number;
  text: string;
  token_ids: readonly number[];
  logprobs?: TokenLogprobMsg[];
  prompt_logprobs?: TokenLogprobMsg[];
  index?: number;
  final?: FinalInfoMsg;
}

export interface GenerateResponseMsg {
  request_id: string;
  text: string;
  token_ids: number[];
  logprobs?: TokenLogprobMsg[];
  prompt_logprobs?: TokenLogprobMsg[];
  samples?: SampleOutputMsg[];
  final: FinalInfoMsg;
}

export interface CancelRequestMsg {
  request_ids?: string[];
  all?: boolean;
}

export interface BidiClientMsg {
  msg?: 'generate' | 'cancel';
  generate?: GenerateRequestMsg;
  cancel?: CancelRequestMsg;
}

export interface RequestErrorMsg {
  request_id: string;
  code: number;
  message: string;
  reason: string;
}

export type BidiServerMsg = { chunk: GenerateChunkMsg } | { error: RequestErrorMsg };

export interface TokenizeRequestMsg {
  model?: string;
  prompt?: 'text' | 'messages';
  text?: string;
  messages?: { messages?: ChatMessageMsg[] };
  return_tokens?: boolean;
}

export interface TokenizeResponseMsg {
  token_count: number;
  token_ids: number[];
  tokens: string[];
}

export interface ModelInfoResponseMsg {
  model: string;
  architecture: string;
  vocab_size: number;
  max_context_tokens: number;
  max_new_tokens_limit: number;
  max_new_tokens_default: number;
  eos_token_ids: number[];
  has_chat_template: boolean;
  speculation_available: boolean;
  max_draft_tokens: number;
  execution_provider: string;
  max_active_sequences: number;
  max_queued_requests: number;
  display_name: string;
  replicas_up: number;
  replicas_total: number;
  runner: string;
  attention: string;
  dtype: string;
}

/** Request ids are echoed on every chunk: keep them short. */
export const REQUEST_ID_CHARS_MAX = 256;
/** Chat messages per request: rendering cost and prompt size stay bounded. */
export const CHAT_MESSAGES_MAX = 1024;
const CHAT_ROLES = new Set(['system', 'user', 'assistant']);
const UINT32_MAX = 0xffff_ffff;

export function parseChatMessages(field: string, msg: { messages?: ChatMessageMsg[] } | undefined): ChatMessage[] {
  const list = msg?.messages ?? [];
  if (list.length === 0) throw new InvalidRequestError(`${field} must hold at least one message`);
  if (list.length > CHAT_MESSAGES_MAX)
    throw new InvalidRequestError(`${field} holds ${list.length} messages; at most ${CHAT_MESSAGES_MAX}`);
  return list.map((m, i) => {
    const role = m.role ?? '';
    if (!CHAT_ROLES.has(role)) {
      throw new InvalidRequestError(`${field}[${i}].role must be one of system, user, assistant; got "${role}"`);
    }
    if (typeof m.content !== 'string' || m.content.length === 0)
      throw new InvalidRequestError(`${field}[${i}].content is empty`);
    return { role, content: m.content };
  });
}

function parsePrompt(msg: GenerateRequestMsg): Prompt {
  switch (msg.prompt) {
    case 'text':
      if (!msg.text) throw new InvalidRequestError('text is empty');
      return { kind: 'text', text: msg.text };
    case 'messages':
      return { kind: 'messages', messages: parseChatMessages('messages.messages', msg.messages) };
    case 'token_ids': {
      const ids = msg.token_ids?.ids ?? [];
      if (ids.length === 0) throw new InvalidRequestError('token_ids.ids is empty');
      return { kind: 'tokens', tokenIds: ids };
    }
    default:
      throw new InvalidRequestError('prompt is missing: set one of text, messages, token_ids');
  }
}

/** uint64 seed (decimal string) → the sampler's 32-bit seed: small seeds map to themselves. */
export function foldSeed(seed: string | undefined): number {
  if (seed === undefined || seed === '') return 0;
  if (!/^\d+$/.test(seed)) throw new InvalidRequestError(`sampling.seed must be an unsigned integer, got "${seed}"`);
  const big = BigInt(seed);
  return Number((big & 0xffff_ffffn) ^ (big >> 32n)) >>> 0;
}

function parseSampling(s: GenerateRequestMsg['sampling']): EngineSampling {
  const temperature = s?.temperature ?? 0;
  const topP = s?.top_p ?? 1;
  const repetitionPenalty = s?.repetition_penalty ?? 1;
  // Ranges are checked by the one validator (engine/validate.ts), whose messages name the proto fields.
  const sampling: EngineSampling = {
    temperature,
    topP,
    topK: s?.top_k ?? 0,
    repetitionPenalty,
    seed: foldSeed(s?.seed),
  };
  // Optional knobs only when set, so the engine sees the plain parameters otherwise.
  const extra: { -readonly [K in 'minP' | 'presencePenalty' | 'frequencyPenalty']?: number } & {
    logitBias?: [number, number][];
  } = {};
  if (s?.min_p !== undefined && s.min_p !== 0) extra.minP = s.min_p;
  if (s?.presence_penalty !== undefined && s.presence_penalty !== 0) extra.presencePenalty = s.presence_penalty;
  if (s?.frequency_penalty !== undefined && s.frequency_penalty !== 0) extra.frequencyPenalty = s.frequency_penalty;
  if (s?.logit_bias !== undefined && s.logit_bias.length > 0)
    extra.logitBias = s.logit_bias.map((b) => [b.token_id ?? 0, b.bias ?? 0]);
  return { ...sampling, ...extra };
}

function parseSpeculation(s: GenerateRequestMsg['speculation']): SpeculationOptions {
  const mode = s?.mode === 'MODE_OFF' ? 'off' : 'ngram';
  return {
    ...DEFAULT_SPECULATION,
    mode,
    draftTokensMax: s?.max_draft_tokens || DEFAULT_SPECULATION.draftTokensMax,
    ngramN: s?.ngram_n || DEFAULT_SPECULATION.ngramN,
    ...(s?.forced_drafts === false ? { forcedDrafts: false } : {}),
  };
}

/** The oneof set, or undefined (free text). The schema's content is checked by the service. */
function parseResponseFormat(r: GenerateRequestMsg['response_format']): ResponseFormat | undefined {
  switch (r?.format) {
    case undefined:
      return undefined;
    case 'json_object':
      return { type: 'json_object' };
    case 'json_schema':
      return {
        type: 'json_schema',
        schema: r.json_schema?.schema ?? '',
        ...(r.json_schema?.strict === false ? { strict: false } : {}),
      };
    case 'regex':
      return { type: 'regex', pattern: r.regex ?? '' };
    case 'grammar':
      return { type: 'grammar', ebnf: r.grammar ?? '' };
  }
}

export interface ParsedGenerate {
  readonly requestId: string;
  readonly model: string;
  readonly request: EngineRequest;
  /** Echoed in FinalInfo.seed. */
  readonly seed: string;
  /** CacheOptions: the transport makes the request's cache scope of them and the caller's key. */
  readonly cache: { readonly salt: string; readonly off: boolean };
}

/** Wire request → engine request. max_new_tokens 0 stays 0: the service applies its default. */
export function parseGenerateRequest(msg: GenerateRequestMsg): ParsedGenerate {
  const requestId = msg.request_id ?? '';
  if (requestId.length > REQUEST_ID_CHARS_MAX)
    throw new InvalidRequestError(`request_id is longer than ${REQUEST_ID_CHARS_MAX} characters`);
  const stopping = msg.stopping;
  const stopTokenIds = stopping?.stop_token_ids ?? [];
  for (const id of stopTokenIds) {
    if (id > UINT32_MAX) throw new InvalidRequestError(`stopping.stop_token_ids holds ${id}, outside uint32`);
  }
  let request: EngineRequest = {
    prompt: parsePrompt(msg),
    maxNewTokens: stopping?.max_new_tokens ?? 0,
    stopSequences: stopping?.stop_sequences ?? [],
    stopTokenIds,
    ignoreEos: stopping?.ignore_eos ?? false,
    sampling: parseSampling(msg.sampling),
    speculation: parseSpeculation(msg.speculation),
    minNewTokens: stopping?.min_new_tokens ?? 0,
    timeLimitMs: stopping?.time_limit_ms ?? 0,
    includeStopSequence: stopping?.include_stop_sequence ?? false,
    truncateInputTokens: stopping?.truncate_input_tokens ?? 0,
    // 0 (unset) and 1: one sample; the validator checks the range.
    ...(msg.n !== undefined && msg.n > 1 ? { n: msg.n } : {}),
  };
  const responseFormat = parseResponseFormat(msg.response_format);
  if (responseFormat !== undefined) request = { ...request, responseFormat };
  // top_logprobs > 0 or prompt imply enabled; the validator checks the range (the message names the field).
  const top = msg.logprobs?.top_logprobs ?? 0;
  const prompt = msg.logprobs?.prompt === true;
  const withLogprobs =
    msg.logprobs?.enabled === true || top > 0 || prompt
      ? { ...request, logprobs: prompt ? { top, prompt } : { top } }
      : request;
  const salt = msg.cache?.salt ?? '';
  if (salt.length > CACHE_SALT_CHARS_MAX)
    throw new InvalidRequestError(`cache.salt is longer than ${CACHE_SALT_CHARS_MAX} characters`);
  return {
    requestId,
    model: msg.model ?? '',
    request: withLogprobs,
    seed: msg.sampling?.seed || '0',
    cache: { salt, off: msg.cache?.off === true },
  };
}

/** Engine log-probabilities → wire, each token and alternative with its text (one decode call). */
export function toLogprobMsgs(entries: readonly TokenLogprob[], texts: TokenTexts): TokenLogprobMsg[] {
  const decoded = logprobTexts(entries, texts);
  return entries.map((e, i) => ({
    token_id: e.tokenId,
    logprob: e.logprob,
    rank: e.rank,
    text: decoded[i]!.text,
    top: e.top.map((t, j) => ({ token_id: t.tokenId, logprob: t.logprob, text: decoded[i]!.topTexts[j]! })),
  }));
}

/** A delta's chunk; its log-probabilities when it carries them. */
export function deltaChunk(
  requestId: string,
  seq: number,
  delta: GenerationDelta,
  texts: TokenTexts,
): GenerateChunkMsg {
  const chunk: GenerateChunkMsg = { request_id: requestId, seq, text: delta.text, token_ids: delta.tokenIds };
  if (delta.logprobs !== undefined) chunk.logprobs = toLogprobMsgs(delta.logprobs, texts);
  if (delta.index !== undefined) chunk.index = delta.index;
  if (delta.promptLogprobs !== undefined) chunk.prompt_logprobs = toLogprobMsgs(delta.promptLogprobs, texts);
  return chunk;
}

/** A unary response from the per-sample outputs: the top level is sample 0's; all of them in `samples` when there are several. */
export function toGenerateResponse(
  requestId: string,
  outputs: readonly SampleOutputMsg[],
  final: FinalInfoMsg,
  withLogprobs: boolean,
  promptLogprobs?: TokenLogprobMsg[],
): GenerateResponseMsg {
  const first = outputs[0]!;
  const response: GenerateResponseMsg = { request_id: requestId, text: first.text, token_ids: first.token_ids, final };
  if (withLogprobs) response.logprobs = first.logprobs ?? [];
  if (promptLogprobs !== undefined) response.prompt_logprobs = promptLogprobs;
  if (outputs.length > 1) {
    response.samples = outputs.map((o) => {
      const out: SampleOutputMsg = { index: o.index, text: o.text, token_ids: o.token_ids };
      if (withLogprobs) out.logprobs = o.logprobs ?? [];
      const reason = final.samples?.[o.index]?.finish_reason;
      if (reason !== undefined) out.finish_reason = reason;
      return out;
    });
  }
  return response;
}

const FINISH_REASONS: Record<ServiceFinal['finishReason'], FinishReasonMsg> = {
  length: 'FINISH_REASON_LENGTH',
  eos_token: 'FINISH_REASON_EOS_TOKEN',
  stop_sequence: 'FINISH_REASON_STOP_SEQUENCE',
  time_limit: 'FINISH_REASON_TIME_LIMIT',
  constraint_incomplete: 'FINISH_REASON_CONSTRAINT_INCOMPLETE',
};

export function toFinalInfo(final: ServiceFinal, seed: string): FinalInfoMsg {
  const info = toFinalInfoOne(final, seed);
  if (final.samples !== undefined) {
    info.samples = final.samples.map((s) => ({
      index: s.index,
      finish_reason: FINISH_REASONS[s.finishReason],
      output_tokens: s.completionTokens,
      speculation: speculationStats(s.stats),
    }));
  }
  return info;
}

function toFinalInfoOne(final: ServiceFinal, seed: string): FinalInfoMsg {
  return {
    finish_reason: FINISH_REASONS[final.finishReason],
    usage: {
      input_tokens: final.promptTokens,
      output_tokens: final.completionTokens,
      cached_input_tokens: final.cachedPromptTokens ?? 0,
    },
    speculation: speculationStats(final.stats),
    queue_ms: final.queueMs,
    first_token_ms: final.firstTokenMs,
    total_ms: final.totalMs,
    seed,
  };
}

/** The final info of a request ended by a cancel message. */
export function cancelledFinalInfo(cancelled: ServiceCancelledError, seed: string): FinalInfoMsg {
  return {
    finish_reason: 'FINISH_REASON_CANCELLED',
    usage: {
      input_tokens: cancelled.progress.promptTokens,
      output_tokens: cancelled.progress.completionTokens,
      cached_input_tokens: 0,
    },
    speculation: {
      verify_steps: 0,
      draft_tokens: 0,
      accepted_tokens: 0,
      pool_draft_tokens: 0,
      pool_accepted_tokens: 0,
    },
    queue_ms: cancelled.queueMs,
    first_token_ms: 0,
    total_ms: cancelled.totalMs,
    seed,
  };
}

export function toModelInfo(
  info: ServedModelInfo,
  pool: { maxActive: number; maxQueued: number },
): ModelInfoResponseMsg {
  return {
    model: info.name,
    architecture: info.architecture,
    vocab_size: info.vocabSize,
    max_context_tokens: info.contextLength,
    max_new_tokens_limit: info.maxNewTokensLimit,
    max_new_tokens_default: info.maxNewTokensDefault,
    eos_token_ids: [...info.eosTokenIds],
    has_chat_template: info.hasChatTemplate,
    speculation_available: true,
    max_draft_tokens: info.draftTokensLimit,
    execution_provider: info.executionProvider,
    max_active_sequences: pool.maxActive,
    max_queued_requests: pool.maxQueued,
    display_name: info.displayName,
    replicas_up: info.replicasUp,
    replicas_total: info.replicasTotal,
    runner: info.runner,
    attention: info.attention,
    dtype: info.dtype,
  };
}
