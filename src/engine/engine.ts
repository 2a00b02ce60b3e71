/**
 * The generation engine: a checked request in, a stream of events out. Knows nothing of gRPC or
 * ORT. Orchestration only: the prefill (shared by a request's samples), one SpeculativeDecoder per
 * sample (generate/: the decode round), and the samples merge. The request contract is in
 * contract.ts, its checks in validate.ts, the forward-cost table in forward-cost.ts.
 */
import {
  type CacheStats,
  DEFAULT_SPECULATION,
  POOL_DRAFT_TOKENS_MAX,
  type GenerateRequest,
  type GenerationBackend,
  type GenerationEvent,
  type PreparedGeneration,
  type Prompt,
} from '../contract.js';
import { type GrammarMatcher, grammarCompilerFor } from '../constrain/grammar.js';
import { DraftPools } from '../draft/draft-pool.js';
import { CancelledError } from '../errors.js';
import { type SampleSetup, SpeculativeDecoder } from '../generate/speculative-decoder.js';
import type { DecoderModel, DecoderSequence, ModelInfo } from '../runtime/types.js';
import { tokenLogprob, type TokenLogprob } from '../sampling/logprobs.js';
import { StepScheduler } from '../schedule/step-scheduler.js';
import type { TextTokenizer } from '../tokenizer/tokenizer.js';
import { DEFER_MEASUREMENT, type ForwardCostPlan, ForwardCostTable } from './forward-cost.js';
import { mergeSamples } from './merge-samples.js';
import { PrefixCache } from './prefix-cache.js';
import { prepareGeneration, tokenizePrompt } from './validate.js';

/** Prefill rows per forward when prompt log-probabilities are asked for (each row is a vocab of logits). */
export const PROMPT_LOGPROBS_CHUNK = 64;
/**
 * Shared draft pools (issue 34): corpus tokens kept per cache scope and scopes kept per replica
 * (least recently used out). ~1.6 MB a full scope (corpus, candidate chain, index): ≤ ~25 MB a replica.
 */
export const DRAFT_POOL_TOKENS_MAX = 65_536;
export const DRAFT_POOL_SCOPES_MAX = 16;
/** The prefix cache's default bound (~2,800 positions of SmolLM2-135M's float32 KV at 46 KB a position). */
export const PREFIX_CACHE_BYTES_DEFAULT = 128 * 2 ** 20;

export class Engine implements GenerationBackend {
  readonly model: DecoderModel;
  readonly tokenizer: TextTokenizer;
  /** The forward-cost table the adaptive draft length needs: given, measured now or on first need. */
  readonly forwardCosts: ForwardCostTable;
  /** What runs in each forward of this model: membership, draft budgets, batching (draft lengths are chosen for the batch). */
  private readonly steps: StepScheduler;
  /** Shared draft pools per cache scope (GenerateRequest.cacheScope), bounded. */
  readonly draftPools = new DraftPools({ tokensMax: DRAFT_POOL_TOKENS_MAX }, DRAFT_POOL_SCOPES_MAX);

  /**
   * Finished requests' KV by cache scope (host-KV models and the device path, `prefixCacheBytes` >
   * 0): later prompts that start the same way copy it and prefill only the rest.
   */
  readonly prefixCache: PrefixCache | undefined;

  /**
   * `forwardCost`: where the table comes from (default: measured on first need; createEngine
   * measures it now). `prefixCacheBytes`: the prefix cache's bound (0: none).
   */
  constructor(
    model: DecoderModel,
    tokenizer: TextTokenizer,
    forwardCost: ForwardCostPlan = DEFER_MEASUREMENT,
    prefixCacheBytes = PREFIX_CACHE_BYTES_DEFAULT,
  ) {
    this.model = model;
    this.tokenizer = tokenizer;
    this.steps = StepScheduler.forModel(model);
    this.forwardCosts = new ForwardCostTable(model, forwardCost);
    const { kvBytesPerPosition, kvBytesPerSequence, prefixReuseChunkTokens } = model.info;
    this.prefixCache =
      prefixCacheBytes > 0 && (kvBytesPerPosition ?? kvBytesPerSequence) !== undefined
        ? new PrefixCache(prefixCacheBytes, {
            bytesPerPosition: kvBytesPerPosition,
            bytesPerSequence: kvBytesPerSequence,
            chunkTokens: prefixReuseChunkTokens,
          })
        : undefined;
  }

  get info(): ModelInfo {
    return this.model.info;
  }

  /** Prompt → token ids, validated against the vocabulary. */
  tokenizePrompt(prompt: Prompt): number[] {
    return tokenizePrompt(this.tokenizer, this.model.info, prompt);
  }

  /** The forward-cost table (index T), to T = maxT; measured now if it is not known yet. */
  forwardCost(maxT?: number): Promise<number[]> {
    return this.forwardCosts.get(maxT);
  }

  /** Tokenizes and validates against the engine's own limits: throws InvalidRequestError / ContextOverflowError before any model work. */
  prepare(request: GenerateRequest): PreparedGeneration {
    return prepareGeneration(this.tokenizer, this.model.info, request);
  }

  /** What the prefix cache and the draft pools hold now, and have evicted. */
  cacheStats(): CacheStats {
    const prefix = this.prefixCache;
    return {
      prefixCacheBytes: prefix?.bytesHeld ?? 0,
      prefixCacheBytesMax: prefix?.bytesBound ?? 0,
      prefixCacheEntries: prefix?.size ?? 0,
      prefixCacheEvictions: prefix?.evictions ?? 0,
      draftPoolTokens: this.draftPools.tokens,
      draftPoolScopes: this.draftPools.scopes,
      draftPoolEvictedTokens: this.draftPools.evictedTokens,
    };
  }

  dispose(): Promise<void> {
    this.prefixCache?.dispose();
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
    const draftTokensMax = speculate
      ? Math.max(0, Math.min(spec.draftTokensMax, (info.verifyTokensMax ?? Infinity) - 1))
      : 0;
    const adaptive = speculate && spec.draftLength === 'adaptive';
    const forwardCost = adaptive ? await this.forwardCost() : [];
    // The scope's pool is taken (made, or moved to most recent) only once the prompt is in: a
    // request that ends before then pushes no other scope out.
    const pooled = speculate && request.cacheScope !== undefined;
    // No drafts asked for (max_draft_tokens 0): none from the pool either.
    const poolDraftTokensMax =
      !pooled || draftTokensMax === 0
        ? 0
        : adaptive
          ? Math.max(draftTokensMax, Math.min(POOL_DRAFT_TOKENS_MAX, (info.verifyTokensMax ?? Infinity) - 1))
          : draftTokensMax;
    const capacity = Math.min(
      info.contextLength,
      promptTokens.length + request.maxNewTokens + Math.max(draftTokensMax, poolDraftTokensMax) + 1,
    );
    const sequences: DecoderSequence[] = [];
    const constraints: GrammarMatcher[] = [];
    // One sample, scoped, no prompt log-probabilities (they need every prompt row's logits): its
    // prompt may start from a cached prefix, and its sequence is kept for later ones.
    const scope = request.cacheScope;
    const cache =
      samples === 1 && scope !== undefined && request.logprobs?.prompt !== true ? this.prefixCache : undefined;
    const outputIds: number[] = [];
    let finished = false;
    try {
      const format = request.responseFormat;
      if (format !== undefined) {
        const compiler = await grammarCompilerFor(this.tokenizer, info.vocabSize, info.eosTokenIds);
        const grammar = await compiler.compile(format);
        for (let i = 0; i < samples; i++) constraints.push(await grammar.matcher());
      }
      for (let i = 0; i < samples; i++) sequences.push(this.model.createSequence({ capacity }));
      throwIfAborted(signal, promptTokens.length);
      const t0 = performance.now();
      const hit = cache?.lookup(scope!, promptTokens.slice(0, -1));
      if (hit !== undefined) sequences[0]!.copyPrefixFrom?.(hit.sequence, hit.length);
      const promptLogprobs = await this.prefill(prepared, sequences, signal, hit !== undefined ? hit.length : 0);
      const prefill = { ms: performance.now() - started, forwardMs: performance.now() - t0 };
      if (promptLogprobs !== undefined) yield { type: 'delta', text: '', tokenIds: [], promptLogprobs };
      const setup: Omit<SampleSetup, 'sequence' | 'index'> = {
        request,
        promptTokens,
        info,
        tokenizer: this.tokenizer,
        draftTokensMax,
        forwardCost,
        steps: this.steps,
        signal,
        started,
        prefill,
        ...(pooled ? { draftPool: this.draftPools.get(request.cacheScope!), poolDraftTokensMax } : {}),
      };
      const constraintOf = (index: number) => (constraints.length > 0 ? { constraint: constraints[index]! } : {});
      if (samples === 1) {
        for await (const event of new SpeculativeDecoder({
          ...setup,
          sequence: sequences[0]!,
          index: undefined,
          ...constraintOf(0),
        }).run()) {
          if (cache !== undefined && event.type === 'delta') for (const id of event.tokenIds) outputIds.push(id);
          if (event.type !== 'final') yield event;
          else {
            finished = true;
            yield hit !== undefined ? { ...event, cachedPromptTokens: hit.length } : event;
          }
        }
      } else {
        yield* mergeSamples(
          sequences.map((sequence, index) =>
            new SpeculativeDecoder({ ...setup, sequence, index, ...constraintOf(index) }).run(),
          ),
          promptTokens.length,
          started,
          prefill.ms,
        );
      }
    } finally {
      const kept = cache !== undefined && finished ? sequences.shift() : undefined;
      if (kept !== undefined) {
        // The KV holds the prompt and the output but its last token (fed next round), maybe fewer.
        const length = Math.min(kept.length, promptTokens.length + outputIds.length - 1);
        const tokens = new Int32Array(length);
        for (let i = 0; i < length; i++)
          tokens[i] = i < promptTokens.length ? promptTokens[i]! : outputIds[i - promptTokens.length]!;
        kept.rewind(length);
        kept.releaseScratch?.();
        cache!.retain(scope!, tokens, promptTokens.length - 1, kept);
      }
      for (const s of sequences) s.dispose();
      for (const c of constraints) c.dispose();
    }
  }

  /**
   * Prefills every prompt token but the last (it opens the first round like every newest token)
   * into each sample's sequence. Returns the prompt's log-probabilities when they are asked for.
   */
  private async prefill(
    prepared: PreparedGeneration,
    sequences: readonly DecoderSequence[],
    signal: AbortSignal | undefined,
    cached: number,
  ): Promise<TokenLogprob[] | undefined> {
    const { request, promptTokens } = prepared;
    const promptLogprobs: TokenLogprob[] | undefined = request.logprobs?.prompt === true ? [] : undefined;
    if (promptTokens.length <= 1) return promptLogprobs;
    const prefix = promptTokens.slice(0, -1);
    const first = sequences[0]!;
    if (promptLogprobs === undefined) {
      // The first `cached` positions came from the prefix cache. The prefix's logits are never
      // read: where the runtime can skip them, it does.
      const rest = cached > 0 ? prefix.slice(cached) : prefix;
      if (rest.length > 0) await (first.fill !== undefined ? first.fill(rest) : first.forward(rest, 1));
    } else {
      // Every prefill row scores the next prompt token; chunks bound the logits buffer
      // (PROMPT_LOGPROBS_CHUNK rows × vocab). Same KV and rows as one forward (batch invariance).
      const vocab = this.model.info.vocabSize;
      const top = request.logprobs!.top;
      for (let start = 0; start < prefix.length; start += PROMPT_LOGPROBS_CHUNK) {
        const chunk = prefix.slice(start, start + PROMPT_LOGPROBS_CHUNK);
        const logits = await first.forward(chunk, chunk.length);
        for (let r = 0; r < chunk.length; r++)
          promptLogprobs.push(tokenLogprob(logits, r * vocab, vocab, promptTokens[start + r + 1]!, top));
        throwIfAborted(signal, promptTokens.length);
      }
    }
    // Samples share the one prefill where the runtime copies caches; elsewhere each prefills
    // (together, so batching runtimes batch them). Same positions either way (batch invariance).
    await Promise.all(
      sequences
        .slice(1)
        .map((s) =>
          s.copyPrefixFrom !== undefined
            ? s.copyPrefixFrom(first, prefix.length)
            : s.fill !== undefined
              ? s.fill(prefix)
              : s.forward(prefix, 1),
        ),
    );
    return promptLogprobs;
  }
}

/** Before any token is generated: the usage is the prompt alone. */
function throwIfAborted(signal: AbortSignal | undefined, promptTokens: number): void {
  if (signal?.aborted) throw new CancelledError(signal.reason, { promptTokens, completionTokens: 0 });
}
