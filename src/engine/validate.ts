/**
 * The one request validator: a GenerateRequest (+ the model + the server's limits) in, a checked
 * PreparedGeneration (prompt tokenized, max_new_tokens resolved) out, or an InvalidRequestError /
 * ContextOverflowError whose message is what the client sees. Called once per request, on the
 * calling thread, before admission (no slot, no model work). The transport checks only the wire's
 * shape; everything about values is checked here.
 */
import {
  DEFAULT_SPECULATION,
  DRAFT_TOKENS_LIMIT,
  type GenerateRequest,
  MAX_NEW_TOKENS_LIMIT,
  type PreparedGeneration,
  type Prompt,
  SAMPLES_MAX,
  STOP_SEQUENCE_CHARS_MAX,
  STOP_SEQUENCES_MAX,
  TIME_LIMIT_MS_MAX,
} from '../contract.js';
import { checkResponseFormat } from '../constrain/grammar.js';
import { NGRAM_N_MAX } from '../draft/ngram-drafter.js';
import { ContextOverflowError, InvalidRequestError } from '../errors.js';
import type { ModelInfo } from '../runtime/types.js';
import { TOP_LOGPROBS_MAX } from '../sampling/logprobs.js';
import {
  GREEDY,
  LOGIT_BIAS_ABS_MAX,
  LOGIT_BIAS_ENTRIES_MAX,
  OCCURRENCE_PENALTY_ABS_MAX,
  type SamplingParams,
} from '../sampling/sampler.js';
import type { TextTokenizer } from '../tokenizer/tokenizer.js';

/** What the server allows beyond the engine's own limits. */
export interface RequestLimits {
  /** Used when a request leaves max_new_tokens unset (0); absent: 0 is refused. */
  readonly maxNewTokensDefault?: number;
  /** Largest max_new_tokens a request may ask for (≤ MAX_NEW_TOKENS_LIMIT). */
  readonly maxNewTokensLimit: number;
  /** Sequence slots of the server (ModelInfo.max_active_sequences): n samples need as many; absent: no such bound. */
  readonly sequenceSlots?: number;
}

/** An in-process engine's limits: the engine's own. */
export const ENGINE_LIMITS: RequestLimits = { maxNewTokensLimit: MAX_NEW_TOKENS_LIMIT };

/** Prompt → token ids, checked against the vocabulary. */
export function tokenizePrompt(tokenizer: TextTokenizer, info: ModelInfo, prompt: Prompt): number[] {
  let ids: number[];
  switch (prompt.kind) {
    case 'tokens':
      ids = [...prompt.tokenIds];
      for (const id of ids) {
        if (!Number.isInteger(id) || id < 0 || id >= info.vocabSize) {
          throw new InvalidRequestError(`prompt token id ${id} is outside the vocabulary [0, ${info.vocabSize})`);
        }
      }
      break;
    case 'messages':
      if (prompt.messages.length === 0) throw new InvalidRequestError('chat prompt has no messages');
      ids = tokenizer.encode(tokenizer.applyChatTemplate(prompt.messages), { addSpecialTokens: false });
      break;
    case 'text':
      ids = prompt.chat
        ? tokenizer.encode(tokenizer.applyChatTemplate([{ role: 'user', content: prompt.text }]), {
            addSpecialTokens: false,
          })
        : tokenizer.encode(prompt.text, { addSpecialTokens: true });
      break;
  }
  if (ids.length === 0) throw new InvalidRequestError('prompt is empty');
  return ids;
}

/**
 * Checks `request` and tokenizes its prompt. The order of the checks is the order in which clients
 * have always met them: sampling's basic ranges, max_new_tokens, truncation, the prompt, the
 * context, then the rest; n against the server's slots last.
 */
export function prepareGeneration(
  tokenizer: TextTokenizer,
  info: ModelInfo,
  request: GenerateRequest,
  limits: RequestLimits = ENGINE_LIMITS,
): PreparedGeneration {
  const sampling = request.sampling ?? GREEDY;
  checkSamplingRanges(sampling);
  const maxNewTokens =
    request.maxNewTokens === 0 && limits.maxNewTokensDefault !== undefined
      ? limits.maxNewTokensDefault
      : request.maxNewTokens;
  if (!Number.isInteger(maxNewTokens) || maxNewTokens < 1 || maxNewTokens > limits.maxNewTokensLimit) {
    throw new InvalidRequestError(
      `max_new_tokens must be an integer in [1, ${limits.maxNewTokensLimit}], got ${maxNewTokens}`,
    );
  }
  const checked = maxNewTokens === request.maxNewTokens ? request : { ...request, maxNewTokens };
  const truncate = request.truncateInputTokens ?? 0;
  if (!Number.isInteger(truncate) || truncate < 0)
    throw new InvalidRequestError(`truncate_input_tokens must be a non-negative integer, got ${truncate}`);
  const tokenized = tokenizePrompt(tokenizer, info, request.prompt);
  // Left truncation, as TGIS does: the most recent context is what the continuation depends on.
  const promptTokens = truncate > 0 && tokenized.length > truncate ? tokenized.slice(-truncate) : tokenized;
  const context = info.contextLength;
  if (promptTokens.length + maxNewTokens > context) {
    throw new ContextOverflowError(
      `prompt of ${promptTokens.length} tokens plus max_new_tokens ${maxNewTokens} exceeds the context of ${context} tokens`,
    );
  }
  checkControls(checked, info);
  const n = request.n ?? 1;
  if (limits.sequenceSlots !== undefined && n > limits.sequenceSlots) {
    throw new InvalidRequestError(
      `n = ${n} samples need as many sequence slots; this server has ${limits.sequenceSlots} (ModelInfo.max_active_sequences)`,
    );
  }
  return { request: checked, promptTokens };
}

/** The ranges the wire's sampling fields are known by (the messages name the proto fields). */
function checkSamplingRanges(s: SamplingParams): void {
  if (!Number.isFinite(s.temperature) || s.temperature < 0)
    throw new InvalidRequestError(`sampling.temperature must be ≥ 0, got ${s.temperature}`);
  if (!(s.topP > 0 && s.topP <= 1)) throw new InvalidRequestError(`sampling.top_p must be in (0, 1], got ${s.topP}`);
  if (!(s.repetitionPenalty > 0) || !Number.isFinite(s.repetitionPenalty)) {
    throw new InvalidRequestError(`sampling.repetition_penalty must be > 0, got ${s.repetitionPenalty}`);
  }
}

/** Stop sequences, speculation, log-probabilities, min_new_tokens, n, the time limit and the other sampling knobs. */
const RESPONSE_FORMAT_TYPES: readonly string[] = ['json_object', 'json_schema', 'regex', 'grammar'];

function checkControls(request: GenerateRequest, info: ModelInfo): void {
  const { maxNewTokens } = request;
  const stops = request.stopSequences ?? [];
  if (stops.length > STOP_SEQUENCES_MAX)
    throw new InvalidRequestError(`at most ${STOP_SEQUENCES_MAX} stop sequences, got ${stops.length}`);
  for (const s of stops) {
    if (s.length === 0 || s.length > STOP_SEQUENCE_CHARS_MAX) {
      throw new InvalidRequestError(`stop sequences must be 1..${STOP_SEQUENCE_CHARS_MAX} characters`);
    }
  }
  const spec = request.speculation ?? DEFAULT_SPECULATION;
  if (spec.mode !== 'off' && spec.mode !== 'ngram')
    throw new InvalidRequestError(`speculation mode must be off or ngram, got ${String(spec.mode)}`);
  if (!Number.isInteger(spec.ngramN) || spec.ngramN < 2 || spec.ngramN > NGRAM_N_MAX) {
    throw new InvalidRequestError(`speculation n must be an integer in [2, ${NGRAM_N_MAX}], got ${spec.ngramN}`);
  }
  if (!Number.isInteger(spec.draftTokensMax) || spec.draftTokensMax < 0 || spec.draftTokensMax > DRAFT_TOKENS_LIMIT) {
    throw new InvalidRequestError(
      `speculation max draft tokens must be an integer in [0, ${DRAFT_TOKENS_LIMIT}], got ${spec.draftTokensMax}`,
    );
  }
  if (request.logprobs !== undefined) {
    const top = request.logprobs.top;
    if (!Number.isInteger(top) || top < 0 || top > TOP_LOGPROBS_MAX)
      throw new InvalidRequestError(`logprobs.top_logprobs must be an integer in [0, ${TOP_LOGPROBS_MAX}], got ${top}`);
  }
  const minNew = request.minNewTokens ?? 0;
  if (!Number.isInteger(minNew) || minNew < 0 || minNew > maxNewTokens) {
    throw new InvalidRequestError(
      `min_new_tokens must be an integer in [0, max_new_tokens = ${maxNewTokens}], got ${minNew}`,
    );
  }
  const format = request.responseFormat;
  if (format !== undefined) {
    if (!RESPONSE_FORMAT_TYPES.includes(format.type))
      throw new InvalidRequestError(
        `response_format must be one of ${RESPONSE_FORMAT_TYPES.join(', ')}, got ${String(format.type)}`,
      );
    checkResponseFormat(format);
    if (request.ignoreEos === true)
      throw new InvalidRequestError(
        'response_format cannot be combined with stopping.ignore_eos: a constrained output ends with the end-of-sequence token',
      );
    if (minNew > 0)
      throw new InvalidRequestError(
        'response_format cannot be combined with stopping.min_new_tokens: the constraint decides where the output may end',
      );
  }
  const n = request.n ?? 1;
  if (!Number.isInteger(n) || n < 1 || n > SAMPLES_MAX)
    throw new InvalidRequestError(`n must be an integer in [1, ${SAMPLES_MAX}], got ${n}`);
  const timeLimitMs = request.timeLimitMs ?? 0;
  if (!Number.isInteger(timeLimitMs) || timeLimitMs < 0 || timeLimitMs > TIME_LIMIT_MS_MAX) {
    throw new InvalidRequestError(`time_limit_ms must be an integer in [0, ${TIME_LIMIT_MS_MAX}], got ${timeLimitMs}`);
  }
  const s = request.sampling ?? GREEDY;
  if (!Number.isInteger(s.topK) || s.topK < 0)
    throw new InvalidRequestError(`top_k must be a non-negative integer, got ${s.topK}`);
  const minP = s.minP ?? 0;
  if (!(minP >= 0 && minP <= 1)) throw new InvalidRequestError(`min_p must be in [0, 1], got ${minP}`);
  for (const [name, value] of [
    ['presence_penalty', s.presencePenalty ?? 0],
    ['frequency_penalty', s.frequencyPenalty ?? 0],
  ] as const) {
    if (!(Math.abs(value) <= OCCURRENCE_PENALTY_ABS_MAX))
      throw new InvalidRequestError(
        `${name} must be in [-${OCCURRENCE_PENALTY_ABS_MAX}, ${OCCURRENCE_PENALTY_ABS_MAX}], got ${value}`,
      );
  }
  const bias = s.logitBias ?? [];
  if (bias.length > LOGIT_BIAS_ENTRIES_MAX)
    throw new InvalidRequestError(`logit_bias holds ${bias.length} entries; at most ${LOGIT_BIAS_ENTRIES_MAX}`);
  const biased = new Set<number>();
  for (const [id, value] of bias) {
    if (!Number.isInteger(id) || id < 0 || id >= info.vocabSize)
      throw new InvalidRequestError(`logit_bias token id ${id} is outside the vocabulary [0, ${info.vocabSize})`);
    if (biased.has(id)) throw new InvalidRequestError(`logit_bias names token id ${id} twice`);
    biased.add(id);
    if (!(Math.abs(value) <= LOGIT_BIAS_ABS_MAX))
      throw new InvalidRequestError(
        `logit_bias for token ${id} must be in [-${LOGIT_BIAS_ABS_MAX}, ${LOGIT_BIAS_ABS_MAX}], got ${value}`,
      );
  }
}
