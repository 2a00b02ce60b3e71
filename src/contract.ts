/**
 * The generation contract: what a caller asks for (GenerateRequest), what comes back
 * (GenerationEvent), the limits a request is checked against, and the GenerationBackend interface
 * the service and transports see. Types and constants only: no behaviour, so every layer from the
 * decode round (generate/) up to the transport can import it without a cycle.
 */
import type { ModelInfo } from './runtime/types.js';
import type { TokenLogprob } from './sampling/logprobs.js';
import type { SamplingParams } from './sampling/sampler.js';
import type { ChatMessage, TextTokenizer } from './tokenizer/tokenizer.js';

/** Hard ceiling on tokens one request may ask for, whatever the context allows. */
export const MAX_NEW_TOKENS_LIMIT = 8192;
/** Stop sequences per request and their length: matching cost is per token. */
export const STOP_SEQUENCES_MAX = 16;
export const STOP_SEQUENCE_CHARS_MAX = 256;

export type Prompt =
  | { readonly kind: 'text'; readonly text: string; readonly chat?: boolean }
  | { readonly kind: 'messages'; readonly messages: readonly ChatMessage[] }
  | { readonly kind: 'tokens'; readonly tokenIds: readonly number[] };

export interface GenerateRequest {
  readonly prompt: Prompt;
  readonly maxNewTokens: number;
  readonly stopSequences?: readonly string[];
  readonly stopTokenIds?: readonly number[];
  /** Do not stop at the model's EOS tokens (benchmarks). */
  readonly ignoreEos?: boolean;
  readonly sampling?: SamplingParams;
  /** Speculation changes speed only, never output. Default: DEFAULT_SPECULATION. */
  readonly speculation?: SpeculationOptions;
  /**
   * Each generated token's log-probability and rank, and the `top` most likely tokens at its
   * position (0..TOP_LOGPROBS_MAX), from the raw model distribution. Absent: none.
   */
  readonly logprobs?: { readonly top: number; readonly prompt?: boolean };
  /**
   * The first this-many generated tokens are never EOS or stop tokens (they are suppressed), and
   * stop sequences are looked for only in the text after them. Default 0.
   */
  readonly minNewTokens?: number;
  /** Stop with finish reason time_limit once decoding (after any wait for a slot) has run this long; 0/absent: no limit. */
  readonly timeLimitMs?: number;
  /** Emit the stop sequence that ended the output (default: never emitted). */
  readonly includeStopSequence?: boolean;
  /** Keep only the last N prompt tokens when the prompt is longer; 0/absent: the whole prompt. */
  readonly truncateInputTokens?: number;
  /**
   * Samples of this prompt (1..SAMPLES_MAX, default 1): one prefill, then each decodes with its own
   * seed (sampling seed + index), drafter and penalty state.
   */
  readonly n?: number;
  /**
   * Constrains the output to a JSON schema, any JSON, a regular expression or a grammar; every
   * token is picked from those the constraint allows (speculation keeps the output identical).
   */
  readonly responseFormat?: ResponseFormat;
  /**
   * The shared draft pool this request drafts from and feeds (issue 34): earlier requests of the
   * same scope. Set by the transport from the caller's API key and cache salt; absent: none.
   */
  readonly cacheScope?: string;
}

/**
 * What the output must match. `grammar`: XGrammar's EBNF (GBNF-like: `root ::= ...`, character
 * classes, `* + ?`, `{m,n}`). `json_schema`: a JSON Schema as text; `strict` (default true) allows no
 * properties beyond those listed where the schema says nothing of `additionalProperties`.
 */
export type ResponseFormat =
  | { readonly type: 'json_object' }
  | { readonly type: 'json_schema'; readonly schema: string; readonly strict?: boolean }
  | { readonly type: 'regex'; readonly pattern: string }
  | { readonly type: 'grammar'; readonly ebnf: string };

/** Longest schema, pattern or grammar text a request may carry. */
export const RESPONSE_FORMAT_CHARS_MAX = 65_536;

export const SAMPLES_MAX = 8;

/** Longest time_limit_ms a request may set (one day). */
export const TIME_LIMIT_MS_MAX = 86_400_000;

export interface SpeculationOptions {
  readonly mode: 'off' | 'ngram';
  /** Highest n-gram order N (tables for n = 2..N). */
  readonly ngramN: number;
  /** Largest draft per round. */
  readonly draftTokensMax: number;
  /** 'adaptive': length per round from acceptance and verify cost; 'fixed': always up to draftTokensMax (the paper). */
  readonly draftLength: 'adaptive' | 'fixed';
  /** 'hybrid': span copy + confidence-gated tables; 'paper': ANPD's multi-level tables only, ungated. */
  readonly drafter: 'hybrid' | 'paper';
  /** With a response_format: draft the text the grammar forces next (default true). */
  readonly forcedDrafts?: boolean;
}

/** Cap on draft tokens per round: verify cost grows with every row (see docs/perf-notes.md). */
export const DRAFT_TOKENS_LIMIT = 16;
/**
 * Largest draft from a scope's shared pool (issue 34), with the adaptive draft length: a pool match
 * is a repeated file or tool call, often accepted whole, so its drafts may run past max_draft_tokens
 * (which bounds the request's own tables); the controller still sizes each one by the pool's
 * measured acceptance and the forward-cost table.
 */
export const POOL_DRAFT_TOKENS_MAX = DRAFT_TOKENS_LIMIT;
export const DEFAULT_SPECULATION: SpeculationOptions = {
  mode: 'ngram',
  ngramN: 5,
  draftTokensMax: 7,
  draftLength: 'adaptive',
  drafter: 'hybrid',
};
export const PAPER_SPECULATION: SpeculationOptions = {
  mode: 'ngram',
  ngramN: 5,
  draftTokensMax: 7,
  draftLength: 'fixed',
  drafter: 'paper',
};
export const NO_SPECULATION: SpeculationOptions = { ...DEFAULT_SPECULATION, mode: 'off' };

/** `constraint_incomplete`: max_new_tokens (or the context) ran out before the response_format was complete. */
export type FinishReason = 'length' | 'eos_token' | 'stop_sequence' | 'time_limit' | 'constraint_incomplete';

export interface GenerationStats {
  /** Verify steps (forward passes after prefill). */
  rounds: number;
  /** Rounds that carried a non-empty draft. */
  draftRounds: number;
  /** Draft rounds in which nothing was accepted. */
  zeroAcceptRounds: number;
  draftTokensProposed: number;
  draftTokensAccepted: number;
  /** draftedAtPosition[j] / acceptedAtPosition[j]: rounds that drafted / accepted position j+1. */
  draftedAtPosition: number[];
  acceptedAtPosition: number[];
  forwardMs: number;
  draftMs: number;
  /** Of draftTokensProposed / draftTokensAccepted: those the shared draft pool proposed (GenerateRequest.cacheScope). */
  poolDraftTokens: number;
  poolAcceptedTokens: number;
}

export interface GenerationDelta {
  readonly type: 'delta';
  /** Which sample (GenerateRequest.n > 1); absent for a single one. */
  readonly index?: number;
  readonly text: string;
  readonly tokenIds: readonly number[];
  /** With GenerateRequest.logprobs: one entry per token of tokenIds. */
  readonly logprobs?: readonly TokenLogprob[];
  /**
   * With logprobs.prompt: each prompt token's but the first (nothing predicts it), in order, on
   * one delta without tokens that comes before any other.
   */
  readonly promptLogprobs?: readonly TokenLogprob[];
}

export interface GenerationFinal {
  readonly type: 'final';
  readonly finishReason: FinishReason;
  readonly promptTokens: number;
  readonly completionTokens: number;
  readonly firstTokenMs: number;
  readonly prefillMs: number;
  readonly totalMs: number;
  readonly stats: Readonly<GenerationStats>;
  /** Of promptTokens: those whose KV came from the prefix cache (not prefilled); absent: none. */
  readonly cachedPromptTokens?: number;
  /** With several samples: each one's end (the fields above: the first sample's finish reason, sums). */
  readonly samples?: readonly SampleFinal[];
}

export interface SampleFinal {
  readonly index: number;
  readonly finishReason: FinishReason;
  readonly completionTokens: number;
  readonly stats: Readonly<GenerationStats>;
}

export type GenerationEvent = GenerationDelta | GenerationFinal;

/** A request checked by engine/validate.ts (max_new_tokens resolved), with its prompt tokenized: what `GenerationBackend.run` takes. */
export interface PreparedGeneration {
  readonly request: GenerateRequest;
  readonly promptTokens: readonly number[];
}

/**
 * What serves generations: the in-process Engine, a WorkerEngine that runs one on another thread
 * or process, or an EnginePool of those. The InferenceService sees only this (and, for a pool,
 * its ReplicaSet).
 */
export interface GenerationBackend {
  readonly info: ModelInfo;
  readonly tokenizer: TextTokenizer;
  tokenizePrompt(prompt: Prompt): number[];
  prepare(request: GenerateRequest): PreparedGeneration;
  run(prepared: PreparedGeneration, signal?: AbortSignal): AsyncGenerator<GenerationEvent>;
  /** What the cross-request caches hold now (summed over replicas); undefined where there are none. */
  cacheStats?(): CacheStats | undefined;
  dispose(): Promise<void>;
}

/** The cross-request caches of issue 34, for metrics: held now, and evicted since start (cumulative). */
export interface CacheStats {
  readonly prefixCacheBytes: number;
  readonly prefixCacheBytesMax: number;
  readonly prefixCacheEntries: number;
  readonly prefixCacheEvictions: number;
  readonly draftPoolTokens: number;
  readonly draftPoolScopes: number;
  /** Pool tokens dropped: the oldest text of a full pool, and whole scopes past the scope limit. */
  readonly draftPoolEvictedTokens: number;
}

export const NO_CACHES: CacheStats = Object.freeze({
  prefixCacheBytes: 0,
  prefixCacheBytesMax: 0,
  prefixCacheEntries: 0,
  prefixCacheEvictions: 0,
  draftPoolTokens: 0,
  draftPoolScopes: 0,
  draftPoolEvictedTokens: 0,
});

/** Sums replicas' cache figures. */
export function sumCacheStats(all: readonly (CacheStats | undefined)[]): CacheStats {
  const sum: Record<keyof CacheStats, number> = { ...NO_CACHES };
  for (const stats of all) {
    if (stats === undefined) continue;
    for (const key of Object.keys(sum) as (keyof CacheStats)[]) sum[key] += stats[key];
  }
  return sum;
}
