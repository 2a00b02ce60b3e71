/**
 * One sample's decode rounds, from its prefilled sequence (prompt but the last token in its KV
 * cache) to its final event. Each round runs the phases of ARCHITECTURE's round state machine, one
 * method each: length → propose → plan → forward → verify → record → rewind → emit → commit.
 *
 * The committed sequence (prompt + emitted tokens) is the single source of truth: after each round
 * the KV length is committed − 1 (the newest token is fed at the start of the next round) and the
 * drafter has seen exactly the committed tokens. Speculation changes speed only: verify accepts a
 * draft token iff it is what plain decoding would pick at that row, so the output is plain
 * decoding's, token for token.
 *
 * Pure: no ORT, no I/O. The per-token path reuses its arrays (input, emitted, logprobs) across rounds.
 */
import {
  DEFAULT_SPECULATION,
  type GenerateRequest,
  type GenerationDelta,
  type GenerationEvent,
  type GenerationStats,
} from '../contract.js';
import {
  DEFAULT_CONTROLLER_OPTIONS,
  DraftLengthController,
  fixedDraftLength,
  type OthersLoad,
} from '../draft/draft-length-controller.js';
import { type Drafter, NO_DRAFTER } from '../draft/drafter.js';
import type { DraftPool } from '../draft/draft-pool.js';
import { ANPD_PAPER_OPTIONS, DEFAULT_NGRAM_OPTIONS, NgramDrafter } from '../draft/ngram-drafter.js';
import { PooledDrafter } from '../draft/pooled-drafter.js';
import { CancelledError } from '../errors.js';
import type { DecoderSequence, ModelInfo } from '../runtime/types.js';
import { tokenLogprob, type TokenLogprob } from '../sampling/logprobs.js';
import { GREEDY, Sampler, TokenHistory } from '../sampling/sampler.js';
import type { TextTokenizer } from '../tokenizer/tokenizer.js';
import { Emitter } from './emitter.js';
import { verifyDraft } from './verify.js';

/**
 * A sequence's seat in the steps it shares with the other sequences of its replica: it reads the
 * others' share of the next forward (its draft length is chosen for the batch), publishes the rows
 * it will add, and submits its forward to the step. Implemented by schedule/StepMember.
 */
export interface StepSeat {
  budget(out: OthersLoad): OthersLoad;
  plan(rows: number, tokens: number): void;
  forward(tokens: ArrayLike<number>, logitsRows: number): Promise<Float32Array>;
  leave(): void;
}

/** Where a sample takes its seat: the replica's step scheduler (schedule/StepScheduler). */
export interface StepPlanner {
  join(sequence: DecoderSequence, rows: number, tokens: number): StepSeat;
}

/**
 * A sample's output constraint (constrain/GrammarMatcher: the request's response_format): which
 * tokens may come next, as a bitmask over the vocabulary (bit t of mask[t >> 5]).
 */
export interface TokenConstraint {
  nextTokenMask(): Promise<Int32Array>;
  /** Takes `token` if allowed (true); otherwise changes nothing (false). */
  accept(token: number): boolean;
  rollback(tokens: number): void;
  /** The text the constraint forces next ('' when the model has a choice). */
  forcedText(): string;
}

export interface SampleSetup {
  /** Checked (engine/validate.ts): max_new_tokens resolved, every range within its limit. */
  readonly request: GenerateRequest;
  readonly promptTokens: readonly number[];
  readonly info: ModelInfo;
  readonly tokenizer: TextTokenizer;
  /** Prefilled with every prompt token but the last. */
  readonly sequence: DecoderSequence;
  /** The sample's number when the request has several (tags its deltas, adds to the seed); else undefined. */
  readonly index: number | undefined;
  /** Largest draft per round (0: plain decoding). */
  readonly draftTokensMax: number;
  /** The forward-cost table the adaptive draft length needs (empty when it is not adaptive). */
  readonly forwardCost: readonly number[];
  readonly steps: StepPlanner;
  readonly signal: AbortSignal | undefined;
  /** performance.now() when the request started (the time limit's clock and the final's times). */
  readonly started: number;
  /** Request start → prefill done, and the prefill's forward time. */
  readonly prefill: { readonly ms: number; readonly forwardMs: number };
  /** The response_format's matcher for this sample, at the start of its output; absent: unconstrained. */
  readonly constraint?: TokenConstraint;
  /** The request's shared draft pool (GenerateRequest.cacheScope); absent: its own tables alone. */
  readonly draftPool?: DraftPool;
  /** Largest draft from the pool (≥ draftTokensMax; POOL_DRAFT_TOKENS_MAX with the adaptive length). */
  readonly poolDraftTokensMax?: number;
}

const EMPTY_IDS = new Int32Array(0);

/** Bit `token` of a token bitmask. */
const allows = (mask: Int32Array, token: number): boolean => ((mask[token >> 5]! >>> (token & 31)) & 1) === 1;
const NO_DRAFT: readonly number[] = Object.freeze([]);

type DraftLength = Pick<DraftLengthController, 'current' | 'record' | 'rowsFor' | 'expectedTokens'>;

export class SpeculativeDecoder {
  private readonly setup: SampleSetup;
  private readonly sequence: DecoderSequence;
  private readonly vocab: number;
  private readonly sampler: Sampler;
  /** Penalty state: it takes each verified draft token as its row is picked (the lossless rule). */
  private readonly history: TokenHistory | undefined;
  private readonly minNewTokens: number;
  private readonly suppressedBeforeMin: readonly number[] | undefined;
  private readonly drafter: Drafter;
  /** The drafter when a shared pool stands beside the request's own tables. */
  private readonly pooled: PooledDrafter | undefined;
  /** Sizes the request's own drafts. */
  private readonly controller: DraftLength;
  /** Sizes the shared pool's drafts (with a pool: they are accepted at a rate of their own). */
  private readonly poolController: DraftLength | undefined;
  private readonly poolDraftTokensMax: number;
  /** The controller that sized this round's draft (it learns the round's acceptance). */
  private roundController: DraftLength;
  private readonly emitter: Emitter;
  private readonly stats: GenerationStats;
  /** With log-probabilities: how many alternatives per token. */
  private readonly logprobTop: number | undefined;
  /** Greedy without row modifiers needs only each row's argmax: the runtime's, where it computes it. */
  private readonly forwardGreedy: DecoderSequence['forwardGreedy'];
  /**
   * Log-probabilities are of the raw row: penalties, bias and suppression rewrite the row in place
   * when picking, so then the row is copied first. One entry per picked row = per emitted token.
   */
  private readonly rawRow: Float32Array | undefined;

  // Round state, reused across rounds.
  private last: number;
  private readonly input: number[] = [];
  private readonly emitted: number[] = [];
  private readonly logprobs: TokenLogprob[] = [];
  private draft: readonly number[] = NO_DRAFT;
  /** With a constraint: the allowed tokens at each row of this round's forward (row i follows d1..di). */
  private readonly masks: Int32Array[] = [];
  private readonly constraint: TokenConstraint | undefined;
  /** The model's end tokens (a constrained output is complete when one of them is allowed). */
  private readonly eosTokenIds: readonly number[];
  /** Speculating under a constraint: the text it forces is the draft (SpeculationOptions.forcedDrafts). */
  private readonly forcedDrafts: boolean;
  private logits: Float32Array = new Float32Array(0);
  private greedyIds: Int32Array = EMPTY_IDS;
  private greedyRound = false;
  private kvBefore = 0;
  private firstTokenMs = 0;

  constructor(setup: SampleSetup) {
    this.setup = setup;
    const { request, promptTokens, info, index, draftTokensMax, forwardCost, sequence } = setup;
    this.sequence = sequence;
    this.vocab = info.vocabSize;
    this.constraint = setup.constraint;
    this.eosTokenIds = info.eosTokenIds;
    this.emitter = new Emitter(setup.tokenizer, request, promptTokens, info.eosTokenIds, setup.started);
    const params = request.sampling ?? GREEDY;
    this.sampler = new Sampler(
      index === undefined ? params : { ...params, seed: (params.seed + index) >>> 0 },
      this.vocab,
    );
    this.history = this.sampler.modifiesRow ? new TokenHistory(this.vocab) : undefined;
    if (this.history !== undefined) for (const t of promptTokens) this.history.addPrompt(t);
    this.minNewTokens = request.minNewTokens ?? 0;
    this.suppressedBeforeMin = this.minNewTokens > 0 ? [...this.emitter.stopTokens] : undefined;
    const spec = request.speculation ?? DEFAULT_SPECULATION;
    const speculate = spec.mode === 'ngram';
    const rowsMin = info.forwardRowsMin;
    this.forcedDrafts = speculate && spec.forcedDrafts !== false;
    const d0 = performance.now();
    const own = speculate
      ? new NgramDrafter(promptTokens, {
          ...(spec.drafter === 'paper' ? ANPD_PAPER_OPTIONS : DEFAULT_NGRAM_OPTIONS),
          n: spec.ngramN,
        })
      : undefined;
    // One sample of several feeds the pool: the prompt once.
    this.pooled =
      own !== undefined && setup.draftPool !== undefined
        ? new PooledDrafter(own, setup.draftPool, index === undefined || index === 0)
        : undefined;
    this.drafter = this.pooled ?? own ?? NO_DRAFTER;
    const controllerOf = (kMax: number): DraftLength =>
      !speculate
        ? fixedDraftLength(0, rowsMin)
        : spec.draftLength === 'fixed'
          ? fixedDraftLength(kMax, rowsMin)
          : new DraftLengthController({ ...DEFAULT_CONTROLLER_OPTIONS, draftTokensMax: kMax, forwardCost, rowsMin });
    this.controller = controllerOf(draftTokensMax);
    this.poolDraftTokensMax = this.pooled !== undefined ? (setup.poolDraftTokensMax ?? draftTokensMax) : 0;
    this.poolController = this.pooled !== undefined ? controllerOf(this.poolDraftTokensMax) : undefined;
    const positions = Math.max(draftTokensMax, this.poolDraftTokensMax);
    const poolAcceptance = setup.draftPool?.acceptance;
    if (this.poolController instanceof DraftLengthController && poolAcceptance !== undefined)
      this.poolController.restore(poolAcceptance);
    this.roundController = this.controller;
    const indexMs = performance.now() - d0;
    this.stats = {
      rounds: 0,
      draftRounds: 0,
      zeroAcceptRounds: 0,
      draftTokensProposed: 0,
      draftTokensAccepted: 0,
      draftedAtPosition: new Array<number>(positions).fill(0),
      acceptedAtPosition: new Array<number>(positions).fill(0),
      // The shared prefill counts once, on the first sample.
      forwardMs: index === undefined || index === 0 ? setup.prefill.forwardMs : 0,
      draftMs: indexMs,
      poolDraftTokens: 0,
      poolAcceptedTokens: 0,
    };
    this.logprobTop = request.logprobs?.top;
    this.rawRow =
      this.logprobTop !== undefined &&
      (this.history !== undefined || this.suppressedBeforeMin !== undefined || this.constraint !== undefined)
        ? new Float32Array(this.vocab)
        : undefined;
    // (Plain and speculative rounds both take the argmax path once past min_new_tokens' suppression;
    // the device argmax equals the row's, tested.)
    this.forwardGreedy =
      this.sampler.greedy &&
      this.history === undefined &&
      this.logprobTop === undefined &&
      this.constraint === undefined
        ? sequence.forwardGreedy
        : undefined;
    this.last = promptTokens[promptTokens.length - 1]!;
  }

  /** The rounds, to the final event. Aborting the signal ends them between rounds with a CancelledError carrying the usage. */
  async *run(): AsyncGenerator<GenerationEvent> {
    const { promptTokens, signal, started, prefill } = this.setup;
    const emitter = this.emitter;
    this.joinBatch();
    try {
      while (emitter.finishReason === undefined) {
        if (signal?.aborted)
          throw new CancelledError(signal.reason, {
            promptTokens: promptTokens.length,
            completionTokens: emitter.completionTokens,
          });
        if (emitter.timeUp()) {
          if (emitter.text.length > 0) yield this.tagged({ type: 'delta', text: emitter.text, tokenIds: [] });
          break;
        }
        const room = this.length();
        this.propose(room);
        if (this.constraint !== undefined) await this.constrain(this.constraint);
        this.planBatch();
        await this.forward();
        const accepted = this.verify();
        this.record(accepted);
        this.rewind(accepted);
        emitter.emit(this.emitted);
        const committed = this.emitted.slice(0, emitter.count);
        if (this.constraint !== undefined) this.constraintTakes(this.constraint, committed);
        if (emitter.finishReason === undefined) this.commit(committed);
        // The last round's tokens still count for the pool (its acceptance, and the text it keeps).
        else this.pooled?.commit(committed);
        if (committed.length > 0 || emitter.text.length > 0) {
          if (this.firstTokenMs === 0) this.firstTokenMs = performance.now() - started;
          const text = emitter.text;
          yield this.tagged(
            this.logprobTop === undefined
              ? { type: 'delta', text, tokenIds: committed }
              : { type: 'delta', text, tokenIds: committed, logprobs: this.logprobs.slice(0, committed.length) },
          );
        }
      }
      // Out of tokens before the constrained output was complete: say so, not 'length'.
      if (emitter.finishReason === 'length' && this.constraint !== undefined && !(await this.constraintComplete()))
        emitter.finishReason = 'constraint_incomplete';
      if (this.pooled !== undefined) {
        this.stats.poolDraftTokens = this.pooled.poolDraftTokens;
        this.stats.poolAcceptedTokens = this.pooled.poolAcceptedTokens;
        this.pooled.finish();
        if (this.poolController instanceof DraftLengthController && this.pooled.poolDraftTokens > 0)
          this.setup.draftPool!.acceptance = this.poolController.estimates();
      }
      yield {
        type: 'final',
        finishReason: emitter.finishReason!, // (set: the loop ends only then)
        promptTokens: promptTokens.length,
        completionTokens: emitter.completionTokens,
        firstTokenMs: this.firstTokenMs,
        prefillMs: prefill.ms,
        totalMs: performance.now() - started,
        stats: this.stats,
      };
    } finally {
      this.leaveBatch();
    }
  }

  /**
   * length: how many draft tokens this round may carry, by the estimates of the source that will
   * draft it; never past max_new_tokens nor the KV capacity.
   */
  private length(): number {
    const completion = this.emitter.completionTokens;
    const limit = Math.min(
      this.setup.request.maxNewTokens - completion - 1,
      this.sequence.capacity - this.sequence.length - 1,
    );
    this.roundController =
      this.pooled !== undefined &&
      limit > 0 &&
      this.pooled.prepare(Math.min(limit, this.setup.draftTokensMax), Math.min(limit, this.poolDraftTokensMax))
        ? this.poolController!
        : this.controller;
    return Math.min(this.roundController.current(this.othersLoad()), limit);
  }

  /**
   * propose: the drafter's continuation of the committed tokens, up to `room` tokens; with a
   * constraint that forces the next text, that text's tokens instead (all but the last: it may
   * merge with what follows; verification decides either way).
   */
  private propose(room: number): void {
    this.draft = NO_DRAFT;
    if (room > 0) {
      const d0 = performance.now();
      const forced = this.constraint !== undefined && this.forcedDrafts ? this.forcedTokens(room) : NO_DRAFT;
      this.draft = forced.length > 0 ? forced : this.drafter.propose(room);
      this.stats.draftMs += performance.now() - d0;
    }
  }

  private forcedTokens(room: number): readonly number[] {
    const text = this.constraint!.forcedText();
    if (text.length === 0) return NO_DRAFT;
    const tokens = this.setup.tokenizer.encode(text, { addSpecialTokens: false });
    return tokens.slice(0, Math.min(room, tokens.length - 1));
  }

  /**
   * constrain: the draft cut at its first token the constraint forbids, and the allowed tokens at
   * every row of the forward (row i's after d1..di), read before the forward; the constraint is
   * left where it was (the verified tokens are taken after emit).
   */
  private async constrain(constraint: TokenConstraint): Promise<void> {
    const draft = this.draft;
    const masks = this.masks;
    masks.length = 0;
    masks.push(await constraint.nextTokenMask());
    let taken = 0;
    // (The mask is checked first: the matcher warns on stderr about every token it refuses. An end
    // token is never drafted: nothing may follow it, and the model picks it at its row anyway.)
    while (
      taken < draft.length &&
      allows(masks[taken]!, draft[taken]!) &&
      !this.eosTokenIds.includes(draft[taken]!) &&
      constraint.accept(draft[taken]!)
    ) {
      taken++;
      masks.push(await constraint.nextTokenMask());
    }
    constraint.rollback(taken);
    if (taken < draft.length) this.draft = draft.slice(0, taken);
  }

  /** The verified tokens: each was picked under its row's mask, so the constraint takes it (or the state is corrupt). */
  private constraintTakes(constraint: TokenConstraint, tokens: readonly number[]): void {
    for (const t of tokens)
      if (!constraint.accept(t)) throw new Error(`the response_format refused token ${t}, which its mask allowed`);
  }

  /** The constrained output may end here: one of the model's end tokens is allowed next. */
  private async constraintComplete(): Promise<boolean> {
    const mask = await this.constraint!.nextTokenMask();
    return this.eosTokenIds.some((id) => allows(mask, id));
  }

  /** forward: one forward over [last, d1..dK], K + 1 rows: their logits, or (greedy on the device) their argmax. */
  private async forward(): Promise<void> {
    const input = this.input;
    input.length = 0;
    input.push(this.last);
    for (const d of this.draft) input.push(d);
    this.kvBefore = this.sequence.length;
    const f0 = performance.now();
    const forwardGreedy = this.forwardGreedy;
    this.greedyRound = forwardGreedy !== undefined && this.emitter.completionTokens >= this.minNewTokens;
    if (this.greedyRound) {
      this.greedyIds = await forwardGreedy!(input, input.length);
    } else {
      this.logits = await this.seat!.forward(input, input.length);
    }
    this.stats.forwardMs += performance.now() - f0;
  }

  /** verify: row by row, the model's token against the draft's, to the first mismatch; `emitted` gets the verified tokens. */
  private verify(): number {
    if (this.greedyRound) return verifyDraft(this.draft, this.pickGreedy, this.emitted);
    this.logprobs.length = 0;
    return verifyDraft(this.draft, this.pickRow, this.emitted);
  }

  private readonly pickGreedy = (row: number): number => this.greedyIds[row]!;

  /** The token at logits row `row` (sampling, penalties, suppression before min_new_tokens, log-probabilities). */
  private readonly pickRow = (row: number): number => {
    const { history, sampler, logits, vocab } = this;
    if (row > 0 && history !== undefined) history.addOutput(this.draft[row - 1]!);
    // Row `row` picks output token number completionTokens + row (0-based).
    const suppressed = this.emitter.completionTokens + row < this.minNewTokens ? this.suppressedBeforeMin : undefined;
    const top = this.logprobTop;
    const allowed = this.constraint !== undefined ? this.masks[row] : undefined;
    if (top === undefined) return sampler.pick(logits, row, history, suppressed, allowed);
    const offset = row * vocab;
    const rawRow = this.rawRow;
    if (rawRow !== undefined) rawRow.set(logits.subarray(offset, offset + vocab));
    const token = sampler.pick(logits, row, history, suppressed, allowed);
    this.logprobs.push(
      rawRow !== undefined
        ? tokenLogprob(rawRow, 0, vocab, token, top)
        : tokenLogprob(logits, offset, vocab, token, top),
    );
    return token;
  };

  /** record: the controller learns the acceptance; the statistics count the round. */
  private record(accepted: number): void {
    const drafted = this.draft.length;
    this.roundController.record(drafted, accepted);
    const stats = this.stats;
    stats.rounds++;
    if (drafted > 0) {
      stats.draftRounds++;
      if (accepted === 0) stats.zeroAcceptRounds++;
      stats.draftTokensProposed += drafted;
      stats.draftTokensAccepted += accepted;
      for (let j = 0; j < drafted; j++) stats.draftedAtPosition[j]!++;
      for (let j = 0; j < accepted; j++) stats.acceptedAtPosition[j]!++;
    }
  }

  /** rewind: KV keeps [last, accepted drafts]; the model's own token is fed next round. */
  private rewind(accepted: number): void {
    this.sequence.rewind(this.kvBefore + 1 + accepted);
  }

  /** commit: the round's tokens join the committed sequence (drafter, penalty history, the next round's first token). */
  private commit(committed: readonly number[]): void {
    const emitted = this.emitted;
    this.drafter.commit(committed);
    if (this.history !== undefined) this.history.addOutput(emitted[emitted.length - 1]!);
    this.last = emitted[emitted.length - 1]!;
  }

  private tagged(delta: GenerationDelta): GenerationDelta {
    const index = this.setup.index;
    return index === undefined ? delta : { ...delta, index };
  }

  // ---- The step seat: the round's only contact with the other sequences (join / budget / plan / forward / leave). ----

  private seat: StepSeat | undefined;
  private readonly others: OthersLoad = { rows: 0, tokens: 0 };

  private joinBatch(): void {
    this.seat = this.setup.steps.join(this.sequence, this.controller.rowsFor(0), 1);
  }

  private othersLoad(): OthersLoad {
    return this.seat!.budget(this.others);
  }

  /** plan: this round's rows and expected tokens, published for the others' draft lengths. */
  private planBatch(): void {
    this.seat!.plan(
      this.roundController.rowsFor(this.draft.length),
      this.roundController.expectedTokens(this.draft.length),
    );
  }

  private leaveBatch(): void {
    this.seat?.leave();
  }
}
