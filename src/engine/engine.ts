/**
 * The generation engine: request in, stream of events out. Knows nothing of gRPC or ORT.
 *
 * Decoding runs in rounds: propose a draft (empty for plain decoding) → one forward over
 * [last, d1..dK] → verify → emit → rewind the KV of rejected positions. The committed sequence
 * (prompt + emitted tokens) is the single source of truth: after each round the KV length is
 * committed − 1 (the newest token is fed at the start of the next round) and the drafter has seen
 * exactly the committed tokens.
 */
import { type Drafter, NO_DRAFTER } from '../draft/drafter.js';
import { AnpdError, ContextOverflowError, InvalidRequestError } from '../errors.js';
import { verifyDraft } from '../generate/verify.js';
import type { DecoderModel } from '../runtime/types.js';
import { GREEDY, Sampler, type SamplingParams, TokenPresence } from '../sampling/sampler.js';
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
  /** Makes draft proposals; the default never drafts. Changes speed only, never output. */
  readonly drafter?: (promptTokens: readonly number[]) => Drafter;
  /** Largest draft per round. */
  readonly draftTokensMax?: number;
}

export type FinishReason = 'length' | 'eos_token' | 'stop_sequence';

export interface GenerationStats {
  rounds: number;
  draftTokensProposed: number;
  draftTokensAccepted: number;
  forwardMs: number;
  draftMs: number;
}

export interface GenerationDelta {
  readonly type: 'delta';
  readonly text: string;
  readonly tokenIds: readonly number[];
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
}

export type GenerationEvent = GenerationDelta | GenerationFinal;

export class CancelledError extends AnpdError {
  constructor(reason: unknown) {
    super('CANCELLED', reason instanceof Error ? reason.message : 'generation cancelled', { cause: reason });
  }
}

export class Engine {
  readonly model: DecoderModel;
  readonly tokenizer: TextTokenizer;

  constructor(model: DecoderModel, tokenizer: TextTokenizer) {
    this.model = model;
    this.tokenizer = tokenizer;
  }

  /** Prompt → token ids, validated against the vocabulary. */
  tokenizePrompt(prompt: Prompt): number[] {
    let ids: number[];
    switch (prompt.kind) {
      case 'tokens':
        ids = [...prompt.tokenIds];
        for (const id of ids) {
          if (!Number.isInteger(id) || id < 0 || id >= this.model.info.vocabSize) {
            throw new InvalidRequestError(`prompt token id ${id} is outside the vocabulary [0, ${this.model.info.vocabSize})`);
          }
        }
        break;
      case 'messages':
        if (prompt.messages.length === 0) throw new InvalidRequestError('chat prompt has no messages');
        ids = this.tokenizer.encode(this.tokenizer.applyChatTemplate(prompt.messages), { addSpecialTokens: false });
        break;
      case 'text':
        ids = prompt.chat
          ? this.tokenizer.encode(this.tokenizer.applyChatTemplate([{ role: 'user', content: prompt.text }]), { addSpecialTokens: false })
          : this.tokenizer.encode(prompt.text, { addSpecialTokens: true });
        break;
    }
    if (ids.length === 0) throw new InvalidRequestError('prompt is empty');
    return ids;
  }

  private validate(request: GenerateRequest, promptLength: number): void {
    const { maxNewTokens } = request;
    if (!Number.isInteger(maxNewTokens) || maxNewTokens < 1 || maxNewTokens > MAX_NEW_TOKENS_LIMIT) {
      throw new InvalidRequestError(`max_new_tokens must be an integer in [1, ${MAX_NEW_TOKENS_LIMIT}], got ${maxNewTokens}`);
    }
    const context = this.model.info.contextLength;
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
    const s = request.sampling ?? GREEDY;
    if (!(s.temperature >= 0) || !Number.isFinite(s.temperature)) throw new InvalidRequestError(`temperature must be ≥ 0, got ${s.temperature}`);
    if (!(s.topP > 0 && s.topP <= 1)) throw new InvalidRequestError(`top_p must be in (0, 1], got ${s.topP}`);
    if (!Number.isInteger(s.topK) || s.topK < 0) throw new InvalidRequestError(`top_k must be a non-negative integer, got ${s.topK}`);
    if (!(s.repetitionPenalty > 0) || !Number.isFinite(s.repetitionPenalty)) {
      throw new InvalidRequestError(`repetition_penalty must be > 0, got ${s.repetitionPenalty}`);
    }
  }

  async *generate(request: GenerateRequest, signal?: AbortSignal): AsyncGenerator<GenerationEvent> {
    const started = performance.now();
    const promptTokens = this.tokenizePrompt(request.prompt);
    this.validate(request, promptTokens.length);
    const info = this.model.info;
    const vocab = info.vocabSize;
    const stopTokens = new Set<number>(request.stopTokenIds ?? []);
    if (!request.ignoreEos) for (const id of info.eosTokenIds) stopTokens.add(id);
    const sampler = new Sampler(request.sampling ?? GREEDY, vocab);
    const presence = new TokenPresence(vocab);
    for (const t of promptTokens) presence.add(t);
    const usePresence = sampler.params.repetitionPenalty !== 1 ? presence : undefined;
    const drafter = request.drafter?.(promptTokens) ?? NO_DRAFTER;
    const draftTokensMax = request.drafter ? Math.max(0, request.draftTokensMax ?? 0) : 0;
    const detokenizer = new IncrementalDetokenizer(this.tokenizer, promptTokens);
    const stopMatcher = new StopSequenceMatcher(request.stopSequences ?? []);
    const stats: GenerationStats = { rounds: 0, draftTokensProposed: 0, draftTokensAccepted: 0, forwardMs: 0, draftMs: 0 };

    const sequence = this.model.createSequence({ capacity: Math.min(info.contextLength, promptTokens.length + request.maxNewTokens + draftTokensMax + 1) });
    try {
      throwIfAborted(signal);
      // Prefill everything but the last prompt token: it opens the first round like every newest token.
      if (promptTokens.length > 1) {
        const t0 = performance.now();
        await sequence.forward(promptTokens.slice(0, -1), 1);
        stats.forwardMs += performance.now() - t0;
      }
      const prefillMs = performance.now() - started;
      let firstTokenMs = 0;
      let completionTokens = 0;
      let last = promptTokens[promptTokens.length - 1]!;
      const input: number[] = [];
      const emitted: number[] = [];
      let finishReason: FinishReason | undefined;
      const pickAt = (logits: Float32Array, draft: readonly number[]) => (row: number): number => {
        if (row > 0 && usePresence) usePresence.add(draft[row - 1]!);
        return sampler.pick(logits, row, usePresence);
      };

      while (finishReason === undefined) {
        throwIfAborted(signal);
        // Room left for drafts: never past max_new_tokens nor the KV capacity.
        const room = Math.min(draftTokensMax, request.maxNewTokens - completionTokens - 1, sequence.capacity - sequence.length - 1);
        let draft: readonly number[] = [];
        if (room > 0) {
          const d0 = performance.now();
          draft = drafter.propose(room);
          stats.draftMs += performance.now() - d0;
        }
        input.length = 0;
        input.push(last);
        for (const d of draft) input.push(d);
        const kvBefore = sequence.length;
        const f0 = performance.now();
        const logits = await sequence.forward(input, input.length);
        stats.forwardMs += performance.now() - f0;
        const accepted = verifyDraft(draft, pickAt(logits, draft), emitted);
        stats.rounds++;
        stats.draftTokensProposed += draft.length;
        stats.draftTokensAccepted += accepted;
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
          const r = stopMatcher.push(detokenizer.push(token));
          text += r.text;
          if (r.stopped) {
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
          if (usePresence) usePresence.add(emitted[emitted.length - 1]!);
          last = emitted[emitted.length - 1]!;
        } else if (finishReason !== 'stop_sequence') {
          text += stopMatcher.push(detokenizer.flush()).text;
          if (!stopMatcher.done) text += stopMatcher.flush();
          else finishReason = 'stop_sequence';
        }
        if (committed.length > 0 || text.length > 0) {
          if (firstTokenMs === 0) firstTokenMs = performance.now() - started;
          yield { type: 'delta', text, tokenIds: committed };
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
      sequence.dispose();
    }
  }
}

function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw new CancelledError(signal.reason);
}
