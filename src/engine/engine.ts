/**
 * The generation engine: request in, stream of events out. Knows nothing of gRPC or ORT.
 *
 * Decoding runs in rounds: propose a draft (empty for plain decoding) → one forward over
 * [last, d1..dK] → verify → emit → rewind the KV of rejected positions. The committed sequence
 * (prompt + emitted tokens) is the single source of truth: after each round the KV length is
 * committed − 1 (the newest token is fed at the start of the next round) and the drafter has seen
 * exactly the committed tokens.
 */
import { DEFAULT_CONTROLLER_OPTIONS, DraftLengthController, fixedDraftLength, type OthersLoad } from '../draft/draft-length-controller.js';
import { type Drafter, NO_DRAFTER } from '../draft/drafter.js';
import { ANPD_PAPER_OPTIONS, DEFAULT_NGRAM_OPTIONS, NGRAM_N_MAX, NgramDrafter } from '../draft/ngram-drafter.js';
import { AnpdError, ContextOverflowError, InvalidRequestError } from '../errors.js';
import { verifyDraft } from '../generate/verify.js';
import type { DecoderModel, DecoderSequence, ModelInfo } from '../runtime/types.js';
import { tokenLogprob, TOP_LOGPROBS_MAX, type TokenLogprob } from '../sampling/logprobs.js';
import { GREEDY, LOGIT_BIAS_ABS_MAX, LOGIT_BIAS_ENTRIES_MAX, OCCURRENCE_PENALTY_ABS_MAX, Sampler, type SamplingParams, TokenHistory } from '../sampling/sampler.js';
import { StepScheduler, type StepMember } from '../schedule/step-scheduler.js';
import { IncrementalDetokenizer } from '../tokenizer/incremental-detokenizer.js';
import type { ChatMessage, TextTokenizer } from '../tokenizer/tokenizer.js';
import { StopSequenceMatcher } from './stop-sequences.js';

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
}

export const SAMPLES_MAX = 8;
/** Prefill rows per forward when prompt log-probabilities are asked for (each row is a vocab of logits). */
export const PROMPT_LOGPROBS_CHUNK = 64;

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
}

/** Cap on draft tokens per round: verify cost grows with every row (see docs/perf-notes.md). */
export const DRAFT_TOKENS_LIMIT = 16;
/** Rows the forward-cost table is measured to where forwards are batched (extended by its last slope beyond). */
export const BATCH_COST_ROWS_MAX = 128;
export const DEFAULT_SPECULATION: SpeculationOptions = { mode: 'ngram', ngramN: 5, draftTokensMax: 7, draftLength: 'adaptive', drafter: 'hybrid' };
export const PAPER_SPECULATION: SpeculationOptions = { mode: 'ngram', ngramN: 5, draftTokensMax: 7, draftLength: 'fixed', drafter: 'paper' };
export const NO_SPECULATION: SpeculationOptions = { ...DEFAULT_SPECULATION, mode: 'off' };

export type FinishReason = 'length' | 'eos_token' | 'stop_sequence' | 'time_limit';

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

/** Progress of a generation when it was cancelled, so callers can still report usage. */
export interface CancelProgress {
  readonly promptTokens: number;
  readonly completionTokens: number;
}

export class CancelledError extends AnpdError {
  readonly progress: CancelProgress;
  constructor(reason: unknown, progress: CancelProgress = { promptTokens: 0, completionTokens: 0 }) {
    super('CANCELLED', reason instanceof Error ? reason.message : 'generation cancelled', { cause: reason });
    this.progress = progress;
  }
}

/** A request that passed validation, with its prompt tokenized: what `Engine.run` takes. */
export interface PreparedGeneration {
  readonly request: GenerateRequest;
  readonly promptTokens: readonly number[];
}

/** Prompt → token ids, validated against the vocabulary. */
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
        ? tokenizer.encode(tokenizer.applyChatTemplate([{ role: 'user', content: prompt.text }]), { addSpecialTokens: false })
        : tokenizer.encode(prompt.text, { addSpecialTokens: true });
      break;
  }
  if (ids.length === 0) throw new InvalidRequestError('prompt is empty');
  return ids;
}

/** Checks a request against the engine's limits and the model's context. */
export function validateRequest(info: ModelInfo, request: GenerateRequest, promptLength: number): void {
  const { maxNewTokens } = request;
  if (!Number.isInteger(maxNewTokens) || maxNewTokens < 1 || maxNewTokens > MAX_NEW_TOKENS_LIMIT) {
    throw new InvalidRequestError(`max_new_tokens must be an integer in [1, ${MAX_NEW_TOKENS_LIMIT}], got ${maxNewTokens}`);
  }
  const context = info.contextLength;
  if (promptLength + maxNewTokens > context) {
    throw new ContextOverflowError(
      `prompt of ${promptLength} tokens plus max_new_tokens ${maxNewTokens} exceeds the context of ${context} tokens`,
    );
  }
  const stops = request.stopSequences ?? [];
  if (stops.length > STOP_SEQUENCES_MAX) throw new InvalidRequestError(`at most ${STOP_SEQUENCES_MAX} stop sequences, got ${stops.length}`);
  for (const s of stops) {
    if (s.length === 0 || s.length > STOP_SEQUENCE_CHARS_MAX) {
      throw new InvalidRequestError(`stop sequences must be 1..${STOP_SEQUENCE_CHARS_MAX} characters`);
    }
  }
  const spec = request.speculation ?? DEFAULT_SPECULATION;
  if (spec.mode !== 'off' && spec.mode !== 'ngram') throw new InvalidRequestError(`speculation mode must be off or ngram, got ${String(spec.mode)}`);
  if (!Number.isInteger(spec.ngramN) || spec.ngramN < 2 || spec.ngramN > NGRAM_N_MAX) {
    throw new InvalidRequestError(`speculation n must be an integer in [2, ${NGRAM_N_MAX}], got ${spec.ngramN}`);
  }
  if (!Number.isInteger(spec.draftTokensMax) || spec.draftTokensMax < 0 || spec.draftTokensMax > DRAFT_TOKENS_LIMIT) {
    throw new InvalidRequestError(`speculation max draft tokens must be an integer in [0, ${DRAFT_TOKENS_LIMIT}], got ${spec.draftTokensMax}`);
  }
  if (request.logprobs !== undefined) {
    const top = request.logprobs.top;
    if (!Number.isInteger(top) || top < 0 || top > TOP_LOGPROBS_MAX) throw new InvalidRequestError(`logprobs.top_logprobs must be an integer in [0, ${TOP_LOGPROBS_MAX}], got ${top}`);
  }
  const minNew = request.minNewTokens ?? 0;
  if (!Number.isInteger(minNew) || minNew < 0 || minNew > maxNewTokens) {
    throw new InvalidRequestError(`min_new_tokens must be an integer in [0, max_new_tokens = ${maxNewTokens}], got ${minNew}`);
  }
  const n = request.n ?? 1;
  if (!Number.isInteger(n) || n < 1 || n > SAMPLES_MAX) throw new InvalidRequestError(`n must be an integer in [1, ${SAMPLES_MAX}], got ${n}`);
  const timeLimitMs = request.timeLimitMs ?? 0;
  if (!Number.isInteger(timeLimitMs) || timeLimitMs < 0 || timeLimitMs > TIME_LIMIT_MS_MAX) {
    throw new InvalidRequestError(`time_limit_ms must be an integer in [0, ${TIME_LIMIT_MS_MAX}], got ${timeLimitMs}`);
  }
  const s = request.sampling ?? GREEDY;
  if (!(s.temperature >= 0) || !Number.isFinite(s.temperature)) throw new InvalidRequestError(`temperature must be ≥ 0, got ${s.temperature}`);
  if (!(s.topP > 0 && s.topP <= 1)) throw new InvalidRequestError(`top_p must be in (0, 1], got ${s.topP}`);
  if (!Number.isInteger(s.topK) || s.topK < 0) throw new InvalidRequestError(`top_k must be a non-negative integer, got ${s.topK}`);
  if (!(s.repetitionPenalty > 0) || !Number.isFinite(s.repetitionPenalty)) {
    throw new InvalidRequestError(`repetition_penalty must be > 0, got ${s.repetitionPenalty}`);
  }
  const minP = s.minP ?? 0;
  if (!(minP >= 0 && minP <= 1)) throw new InvalidRequestError(`min_p must be in [0, 1], got ${minP}`);
  for (const [name, value] of [['presence_penalty', s.presencePenalty ?? 0], ['frequency_penalty', s.frequencyPenalty ?? 0]] as const) {
    if (!(Math.abs(value) <= OCCURRENCE_PENALTY_ABS_MAX)) throw new InvalidRequestError(`${name} must be in [-${OCCURRENCE_PENALTY_ABS_MAX}, ${OCCURRENCE_PENALTY_ABS_MAX}], got ${value}`);
  }
  const bias = s.logitBias ?? [];
  if (bias.length > LOGIT_BIAS_ENTRIES_MAX) throw new InvalidRequestError(`logit_bias holds ${bias.length} entries; at most ${LOGIT_BIAS_ENTRIES_MAX}`);
  const biased = new Set<number>();
  for (const [id, value] of bias) {
    if (!Number.isInteger(id) || id < 0 || id >= info.vocabSize) throw new InvalidRequestError(`logit_bias token id ${id} is outside the vocabulary [0, ${info.vocabSize})`);
    if (biased.has(id)) throw new InvalidRequestError(`logit_bias names token id ${id} twice`);
    biased.add(id);
    if (!(Math.abs(value) <= LOGIT_BIAS_ABS_MAX)) throw new InvalidRequestError(`logit_bias for token ${id} must be in [-${LOGIT_BIAS_ABS_MAX}, ${LOGIT_BIAS_ABS_MAX}], got ${value}`);
  }
}

/** Tokenizes and validates a request (no model work): what `Engine.run` and engine workers take. */
export function prepareGeneration(tokenizer: TextTokenizer, info: ModelInfo, request: GenerateRequest): PreparedGeneration {
  const truncate = request.truncateInputTokens ?? 0;
  if (!Number.isInteger(truncate) || truncate < 0) throw new InvalidRequestError(`truncate_input_tokens must be a non-negative integer, got ${truncate}`);
  const tokenized = tokenizePrompt(tokenizer, info, request.prompt);
  // Left truncation, as TGIS does: the most recent context is what the continuation depends on.
  const promptTokens = truncate > 0 && tokenized.length > truncate ? tokenized.slice(-truncate) : tokenized;
  validateRequest(info, request, promptTokens.length);
  return { request, promptTokens };
}

/**
 * What serves generations: the in-process Engine, or a WorkerEngine that runs one on another
 * thread. Transports and the InferenceService see only this.
 */
export interface GenerationBackend {
  readonly info: ModelInfo;
  readonly tokenizer: TextTokenizer;
  tokenizePrompt(prompt: Prompt): number[];
  prepare(request: GenerateRequest): PreparedGeneration;
  run(prepared: PreparedGeneration, signal?: AbortSignal): AsyncGenerator<GenerationEvent>;
  dispose(): Promise<void>;
  /** Replicated backends (EnginePool): how many replicas can serve now, and a hook for each change. */
  readonly capacity?: { readonly up: number; readonly total: number };
  onReplicaEvent?(listener: (event: { readonly up: number; readonly total: number }) => void): void;
}

export class Engine implements GenerationBackend {
  readonly model: DecoderModel;
  readonly tokenizer: TextTokenizer;
  /** What runs in each forward of this model: membership, draft budgets, batching (draft lengths are chosen for the batch). */
  private readonly steps: StepScheduler;

  /** `forwardCost`: a fixed cost-by-T table (index T) instead of measuring one, e.g. for reproducible runs. */
  constructor(model: DecoderModel, tokenizer: TextTokenizer, forwardCost?: readonly number[]) {
    this.model = model;
    this.tokenizer = tokenizer;
    this.steps = StepScheduler.forModel(model);
    if (forwardCost !== undefined) {
      if (forwardCost.length < DRAFT_TOKENS_LIMIT + 2 || forwardCost[1] !== 1) {
        throw new InvalidRequestError(`a forward cost table needs entries for T = 1..${DRAFT_TOKENS_LIMIT + 1} with cost[1] = 1`);
      }
      this.costTable = Promise.resolve([...forwardCost]);
    }
  }

  get info(): ModelInfo {
    return this.model.info;
  }

  /** Prompt → token ids, validated against the vocabulary. */
  tokenizePrompt(prompt: Prompt): number[] {
    return tokenizePrompt(this.tokenizer, this.model.info, prompt);
  }

  private costTable: Promise<number[]> | undefined;

  /**
   * forwardCost[T] = time of one forward over T tokens relative to T = 1, for T = 1..maxT (the whole
   * table when omitted: to DRAFT_TOKENS_LIMIT + 1, or to BATCH_COST_ROWS_MAX rows where forwards are
   * batched), measured once per engine on this model and device (median of interleaved repetitions,
   * made monotone).
   */
  async forwardCost(maxT?: number): Promise<number[]> {
    this.costTable ??= this.measureForwardCost(this.model.info.batchSlots > 1 ? BATCH_COST_ROWS_MAX : DRAFT_TOKENS_LIMIT + 1);
    const table = await this.costTable;
    return maxT === undefined ? table : table.slice(0, maxT + 1);
  }

  private async measureForwardCost(maxT: number): Promise<number[]> {
    const draftT = Math.min(maxT, DRAFT_TOKENS_LIMIT + 1);
    // Draft sizes: every T up to 9, then 12 and 17 (the rest interpolated), interleaved among
    // themselves only: a 128-row forward just before disturbs the timing of a 2-row one.
    const small = [...new Set([...Array.from({ length: Math.min(9, draftT) }, (_, i) => i + 1), Math.min(12, draftT), draftT])];
    // Batch sizes, where forwards are batched: a second pass anchored on the largest draft size.
    const large = maxT > draftT ? [draftT, ...[24, 32, 48, 64, 96].filter((t) => t > draftT && t < maxT), maxT] : [];
    const past = 48;
    const seq = this.model.createSequence({ capacity: past + maxT + 1 });
    try {
      const ids = Array.from({ length: past + maxT }, (_, i) => (i * 7919) % this.model.info.vocabSize);
      await seq.forward(ids.slice(0, past), 1);
      const measured = await timeForwards(seq, ids, past, small);
      const base = measured.get(1)!;
      const points: (readonly [number, number])[] = small.map((t) => [t, measured.get(t)! / base]);
      if (large.length > 0) {
        const batch = await timeForwards(seq, ids, past, large);
        const anchor = batch.get(draftT)!;
        const scale = measured.get(draftT)! / base;
        for (const t of large.slice(1)) points.push([t, (batch.get(t)! / anchor) * scale]);
      }
      const cost = [0];
      for (let t = 1; t <= maxT; t++) {
        const hi = points.findIndex(([s]) => s >= t);
        const [t1, c1] = points[hi]!;
        const [t0, c0] = points[Math.max(0, hi - 1)]!;
        const interpolated = t1 === t ? c1 : c0 + ((c1 - c0) * (t - t0)) / (t1 - t0);
        // Cost never falls with more tokens; noise below T=1 is clamped.
        cost.push(Math.max(t === 1 ? 1 : cost[t - 1]!, interpolated));
      }
      return cost;
    } finally {
      seq.dispose();
    }
  }

  /** Tokenizes and validates: throws InvalidRequestError / ContextOverflowError before any model work. */
  prepare(request: GenerateRequest): PreparedGeneration {
    return prepareGeneration(this.tokenizer, this.model.info, request);
  }

  dispose(): Promise<void> {
    return this.model.dispose();
  }

  generate(request: GenerateRequest, signal?: AbortSignal): AsyncGenerator<GenerationEvent> {
    return this.run(this.prepare(request), signal);
  }

  /**
   * Decodes a prepared request. Aborting `signal` ends it between rounds with a CancelledError
   * carrying the usage so far.
   */
  async *run(prepared: PreparedGeneration, signal?: AbortSignal): AsyncGenerator<GenerationEvent> {
    const started = performance.now();
    const { request, promptTokens } = prepared;
    const info = this.model.info;
    const samples = request.n ?? 1;
    const spec = request.speculation ?? DEFAULT_SPECULATION;
    const speculate = spec.mode === 'ngram';
    // A draft and the token it is verified with must fit the runtime's exact forward size.
    const draftTokensMax = speculate ? Math.max(0, Math.min(spec.draftTokensMax, (info.verifyTokensMax ?? Infinity) - 1)) : 0;
    const forwardCost = speculate && spec.draftLength === 'adaptive' ? await this.forwardCost() : [];
    const capacity = Math.min(info.contextLength, promptTokens.length + request.maxNewTokens + draftTokensMax + 1);
    const sequences: DecoderSequence[] = [];
    try {
      for (let i = 0; i < samples; i++) sequences.push(this.model.createSequence({ capacity }));
      throwIfAborted(signal, promptTokens.length, 0);
      // Prefill everything but the last prompt token: it opens the first round like every newest token.
      const t0 = performance.now();
      const promptLogprobs: TokenLogprob[] | undefined = request.logprobs?.prompt === true ? [] : undefined;
      if (promptTokens.length > 1) {
        const prefix = promptTokens.slice(0, -1);
        const first = sequences[0]!;
        if (promptLogprobs === undefined) {
          await first.forward(prefix, 1);
        } else {
          // Every prefill row scores the next prompt token; chunks bound the logits buffer
          // (PROMPT_LOGPROBS_CHUNK rows × vocab). Same KV and rows as one forward (batch invariance).
          const vocab = info.vocabSize;
          const top = request.logprobs!.top;
          for (let start = 0; start < prefix.length; start += PROMPT_LOGPROBS_CHUNK) {
            const chunk = prefix.slice(start, start + PROMPT_LOGPROBS_CHUNK);
            const logits = await first.forward(chunk, chunk.length);
            for (let r = 0; r < chunk.length; r++) promptLogprobs.push(tokenLogprob(logits, r * vocab, vocab, promptTokens[start + r + 1]!, top));
            throwIfAborted(signal, promptTokens.length, 0);
          }
        }
        // Samples share the one prefill where the runtime copies caches; elsewhere each prefills
        // (together, so batching runtimes batch them). Same positions either way (batch invariance).
        await Promise.all(sequences.slice(1).map((s) => (s.copyPrefixFrom !== undefined ? s.copyPrefixFrom(first, prefix.length) : s.forward(prefix, 1))));
      }
      const prefill = { ms: performance.now() - started, forwardMs: performance.now() - t0 };
      if (promptLogprobs !== undefined) yield { type: 'delta', text: '', tokenIds: [], promptLogprobs };
      const context = { prepared, signal, started, prefill, draftTokensMax, forwardCost };
      if (samples === 1) {
        yield* this.decode({ ...context, sequence: sequences[0]!, index: undefined });
      } else {
        yield* mergeSamples(
          sequences.map((sequence, index) => this.decode({ ...context, sequence, index })),
          promptTokens.length,
          started,
          prefill.ms,
        );
      }
    } finally {
      for (const s of sequences) s.dispose();
    }
  }

  /**
   * One sample's rounds on its prefilled sequence (prompt but the last token in its cache), to its
   * final event. `index` (several samples): the sample's number, which tags its deltas and adds to
   * the sampling seed.
   */
  private async *decode(ctx: SampleContext): AsyncGenerator<GenerationEvent> {
    const { prepared, signal, started, sequence, index, draftTokensMax, forwardCost } = ctx;
    const { request, promptTokens } = prepared;
    const info = this.model.info;
    const vocab = info.vocabSize;
    const stopTokens = new Set<number>(request.stopTokenIds ?? []);
    if (!request.ignoreEos) for (const id of info.eosTokenIds) stopTokens.add(id);
    const params = request.sampling ?? GREEDY;
    const sampler = new Sampler(index === undefined ? params : { ...params, seed: (params.seed + index) >>> 0 }, vocab);
    // Penalty state: it takes each verified draft token as its row is picked (the lossless rule).
    const history = sampler.modifiesRow ? new TokenHistory(vocab) : undefined;
    if (history !== undefined) for (const t of promptTokens) history.addPrompt(t);
    const minNewTokens = request.minNewTokens ?? 0;
    const suppressedBeforeMin = minNewTokens > 0 ? [...stopTokens] : undefined;
    const timeLimitMs = request.timeLimitMs ?? 0;
    const spec = request.speculation ?? DEFAULT_SPECULATION;
    const speculate = spec.mode === 'ngram';
    const rowsMin = info.forwardRowsMin;
    const d0 = performance.now();
    const drafter: Drafter = speculate
      ? new NgramDrafter(promptTokens, { ...(spec.drafter === 'paper' ? ANPD_PAPER_OPTIONS : DEFAULT_NGRAM_OPTIONS), n: spec.ngramN })
      : NO_DRAFTER;
    const controller = !speculate
      ? fixedDraftLength(0, rowsMin)
      : spec.draftLength === 'fixed'
        ? fixedDraftLength(draftTokensMax, rowsMin)
        : new DraftLengthController({ ...DEFAULT_CONTROLLER_OPTIONS, draftTokensMax, forwardCost, rowsMin });
    const others: OthersLoad = { rows: 0, tokens: 0 };
    const indexMs = performance.now() - d0;
    const detokenizer = new IncrementalDetokenizer(this.tokenizer, promptTokens);
    const stopMatcher = new StopSequenceMatcher(request.stopSequences ?? []);
    const stats: GenerationStats = {
      rounds: 0,
      draftRounds: 0,
      zeroAcceptRounds: 0,
      draftTokensProposed: 0,
      draftTokensAccepted: 0,
      draftedAtPosition: new Array<number>(draftTokensMax).fill(0),
      acceptedAtPosition: new Array<number>(draftTokensMax).fill(0),
      // The shared prefill counts once, on the first sample.
      forwardMs: index === undefined || index === 0 ? ctx.prefill.forwardMs : 0,
      draftMs: indexMs,
    };

    let completionTokens = 0;
    let member: StepMember | undefined;
    try {
      const prefillMs = ctx.prefill.ms;
      let firstTokenMs = 0;
      let last = promptTokens[promptTokens.length - 1]!;
      const input: number[] = [];
      const emitted: number[] = [];
      let finishReason: FinishReason | undefined;
      member = this.steps.join(sequence, controller.rowsFor(0), 1);
      // Log-probabilities are of the raw row: penalties, bias and suppression rewrite the row in
      // place when picking, so then the row is copied first. One entry per picked row = per emitted token.
      const logprobTop = request.logprobs?.top;
      const logprobs: TokenLogprob[] = [];
      const rawRow = logprobTop !== undefined && (history !== undefined || suppressedBeforeMin !== undefined) ? new Float32Array(vocab) : undefined;
      const pickAt = (logits: Float32Array, draft: readonly number[]) => (row: number): number => {
        if (row > 0 && history !== undefined) history.addOutput(draft[row - 1]!);
        // Row `row` picks output token number completionTokens + row (0-based).
        const suppressed = completionTokens + row < minNewTokens ? suppressedBeforeMin : undefined;
        if (logprobTop === undefined) return sampler.pick(logits, row, history, suppressed);
        const offset = row * vocab;
        if (rawRow !== undefined) rawRow.set(logits.subarray(offset, offset + vocab));
        const token = sampler.pick(logits, row, history, suppressed);
        logprobs.push(rawRow !== undefined ? tokenLogprob(rawRow, 0, vocab, token, logprobTop) : tokenLogprob(logits, offset, vocab, token, logprobTop));
        return token;
      };
      // Greedy without row modifiers needs only each row's argmax: where the model computes it (GPU
      // graphs), the logits stay on the device. Plain and speculative rounds both take this path
      // (once past min_new_tokens' suppression; the device argmax equals the row's, tested).
      const forwardGreedy = sampler.greedy && history === undefined && logprobTop === undefined ? sequence.forwardGreedy : undefined;
      let greedyIds: Int32Array = EMPTY_IDS;
      const pickGreedy = (row: number): number => greedyIds[row]!;

      while (finishReason === undefined) {
        throwIfAborted(signal, promptTokens.length, completionTokens);
        if (timeLimitMs > 0 && performance.now() - started >= timeLimitMs) {
          finishReason = 'time_limit';
          let text = stopMatcher.push(detokenizer.flush()).text;
          if (!stopMatcher.done) text += stopMatcher.flush();
          if (text.length > 0) yield withIndex({ type: 'delta', text, tokenIds: [] }, index);
          break;
        }
        // Room left for drafts: never past max_new_tokens nor the KV capacity.
        const room = Math.min(controller.current(member.budget(others)), request.maxNewTokens - completionTokens - 1, sequence.capacity - sequence.length - 1);
        let draft: readonly number[] = [];
        if (room > 0) {
          const d0 = performance.now();
          draft = drafter.propose(room);
          stats.draftMs += performance.now() - d0;
        }
        member.plan(controller.rowsFor(draft.length), controller.expectedTokens(draft.length));
        input.length = 0;
        input.push(last);
        for (const d of draft) input.push(d);
        const kvBefore = sequence.length;
        const f0 = performance.now();
        let accepted: number;
        if (forwardGreedy !== undefined && completionTokens >= minNewTokens) {
          greedyIds = await forwardGreedy(input, input.length);
          stats.forwardMs += performance.now() - f0;
          accepted = verifyDraft(draft, pickGreedy, emitted);
        } else {
          const logits = await member.forward(input, input.length);
          stats.forwardMs += performance.now() - f0;
          logprobs.length = 0;
          accepted = verifyDraft(draft, pickAt(logits, draft), emitted);
        }
        controller.record(draft.length, accepted);
        stats.rounds++;
        if (draft.length > 0) {
          stats.draftRounds++;
          if (accepted === 0) stats.zeroAcceptRounds++;
          stats.draftTokensProposed += draft.length;
          stats.draftTokensAccepted += accepted;
          for (let j = 0; j < draft.length; j++) stats.draftedAtPosition[j]!++;
          for (let j = 0; j < accepted; j++) stats.acceptedAtPosition[j]!++;
        }
        // KV keeps [last, accepted drafts]; the model's own token is fed next round.
        sequence.rewind(kvBefore + 1 + accepted);

        // Emit token by token so EOS, stop sequences and max_new_tokens cut inside the chunk.
        let text = '';
        let count = 0;
        for (const token of emitted) {
          if (stopTokens.has(token)) {
            finishReason = 'eos_token';
            break;
          }
          count++;
          completionTokens++;
          const piece = detokenizer.push(token);
          // Stop sequences are looked for only after min_new_tokens.
          const r = completionTokens <= minNewTokens ? { text: piece, stopped: false, stop: undefined } : stopMatcher.push(piece);
          text += r.text;
          if (r.stopped) {
            if (request.includeStopSequence === true && r.stop !== undefined) text += r.stop;
            finishReason = 'stop_sequence';
            break;
          }
          if (completionTokens >= request.maxNewTokens) {
            finishReason = 'length';
            break;
          }
        }
        const committed = emitted.slice(0, count);
        if (finishReason === undefined) {
          drafter.commit(committed);
          if (history !== undefined) history.addOutput(emitted[emitted.length - 1]!);
          last = emitted[emitted.length - 1]!;
        } else if (finishReason !== 'stop_sequence') {
          text += stopMatcher.push(detokenizer.flush()).text;
          if (!stopMatcher.done) text += stopMatcher.flush();
          else finishReason = 'stop_sequence';
        }
        if (committed.length > 0 || text.length > 0) {
          if (firstTokenMs === 0) firstTokenMs = performance.now() - started;
          yield withIndex(logprobTop === undefined ? { type: 'delta', text, tokenIds: committed } : { type: 'delta', text, tokenIds: committed, logprobs: logprobs.slice(0, committed.length) }, index);
        }
      }
      yield {
        type: 'final',
        finishReason,
        promptTokens: promptTokens.length,
        completionTokens,
        firstTokenMs,
        prefillMs,
        totalMs: performance.now() - started,
        stats,
      };
    } finally {
      member?.leave();
    }
  }
}

interface SampleContext {
  readonly prepared: PreparedGeneration;
  readonly signal: AbortSignal | undefined;
  readonly started: number;
  /** Request start → prefill done, and the prefill's forward time. */
  readonly prefill: { readonly ms: number; readonly forwardMs: number };
  readonly draftTokensMax: number;
  readonly forwardCost: readonly number[];
  readonly sequence: DecoderSequence;
  /** Set when the request has several samples. */
  readonly index: number | undefined;
}

function withIndex(delta: GenerationDelta, index: number | undefined): GenerationDelta {
  return index === undefined ? delta : { ...delta, index };
}

/**
 * Runs the samples' generators side by side (their forwards overlap, and batch where the runtime
 * batches), passes their deltas through as they come and ends with one final event: the first
 * sample's finish reason, the prompt counted once, the completions summed, and each sample's own
 * in `samples`. A sample's failure ends them all.
 */
async function* mergeSamples(samples: readonly AsyncGenerator<GenerationEvent>[], promptTokens: number, started: number, prefillMs: number): AsyncGenerator<GenerationEvent> {
  type Step = { readonly index: number; readonly result?: IteratorResult<GenerationEvent>; readonly error?: unknown };
  const pending = new Map<number, Promise<Step>>();
  const pull = (index: number) => {
    pending.set(
      index,
      samples[index]!.next().then(
        (result) => ({ index, result }),
        (error: unknown) => ({ index, error }),
      ),
    );
  };
  const finals: GenerationFinal[] = [];
  const emitted = new Array<number>(samples.length).fill(0);
  samples.forEach((_, i) => pull(i));
  try {
    while (pending.size > 0) {
      const step = await Promise.race(pending.values());
      if (step.error !== undefined) {
        if (step.error instanceof CancelledError) {
          throw new CancelledError(step.error.cause ?? step.error, { promptTokens, completionTokens: emitted.reduce((a, b) => a + b, 0) });
        }
        throw step.error;
      }
      const { done, value } = step.result!;
      if (done) {
        pending.delete(step.index);
        continue;
      }
      if (value.type === 'final') {
        finals[step.index] = value;
      } else {
        emitted[step.index]! += value.tokenIds.length;
        yield value;
      }
      pull(step.index);
    }
  } finally {
    // Stop the others (each ends at its next round boundary and leaves its batch) before the caller disposes their sequences.
    await Promise.allSettled(samples.map((g) => g.return(undefined)));
  }
  const first = finals[0]!;
  const stats = mergeStats(finals.map((f) => f.stats));
  const withTokens = finals.filter((f) => f.completionTokens > 0);
  yield {
    type: 'final',
    finishReason: first.finishReason,
    promptTokens,
    completionTokens: finals.reduce((a, f) => a + f.completionTokens, 0),
    firstTokenMs: withTokens.length > 0 ? Math.min(...withTokens.map((f) => f.firstTokenMs)) : 0,
    prefillMs,
    totalMs: performance.now() - started,
    stats,
    samples: finals.map((f, index) => ({ index, finishReason: f.finishReason, completionTokens: f.completionTokens, stats: f.stats })),
  };
}

function mergeStats(all: readonly Readonly<GenerationStats>[]): GenerationStats {
  const sum = (pick: (s: Readonly<GenerationStats>) => number) => all.reduce((a, s) => a + pick(s), 0);
  const sumArrays = (pick: (s: Readonly<GenerationStats>) => readonly number[]) => all[0]!.draftedAtPosition.map((_, j) => all.reduce((a, s) => a + (pick(s)[j] ?? 0), 0));
  return {
    rounds: sum((s) => s.rounds),
    draftRounds: sum((s) => s.draftRounds),
    zeroAcceptRounds: sum((s) => s.zeroAcceptRounds),
    draftTokensProposed: sum((s) => s.draftTokensProposed),
    draftTokensAccepted: sum((s) => s.draftTokensAccepted),
    draftedAtPosition: sumArrays((s) => s.draftedAtPosition),
    acceptedAtPosition: sumArrays((s) => s.acceptedAtPosition),
    forwardMs: sum((s) => s.forwardMs),
    draftMs: sum((s) => s.draftMs),
  };
}

/** Median time of a forward over each of `sizes` tokens on top of `past`, sizes interleaved in rotating order. */
async function timeForwards(seq: ReturnType<DecoderModel['createSequence']>, ids: readonly number[], past: number, sizes: readonly number[]): Promise<Map<number, number>> {
  const rounds = 5;
  const samples = new Map<number, number[]>(sizes.map((t) => [t, []]));
  for (let r = 0; r <= rounds; r++) {
    // Rotate the order each round so drift (frequency, caches) does not favour any size.
    for (let i = 0; i < sizes.length; i++) {
      const t = sizes[(i + r) % sizes.length]!;
      const t0 = performance.now();
      await seq.forward(ids.slice(past, past + t), t);
      if (r > 0) samples.get(t)!.push(performance.now() - t0); // round 0 warms up
      seq.rewind(past);
    }
  }
  const median = (a: number[]) => a.sort((x, y) => x - y)[a.length >> 1]!;
  return new Map(sizes.map((t) => [t, median(samples.get(t)!)]));
}

const EMPTY_IDS = new Int32Array(0);

function throwIfAborted(signal: AbortSignal | undefined, promptTokens: number, completionTokens: number): void {
  if (signal?.aborted) throw new CancelledError(signal.reason, { promptTokens, completionTokens });
}
