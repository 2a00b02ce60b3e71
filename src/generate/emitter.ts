/**
 * The round's `emit` phase: turns verified tokens into the client's text, token by token, so EOS /
 * stop tokens, stop sequences, max_new_tokens and the time limit cut inside a round's tokens. Owns
 * the detokenizer, the stop-sequence matcher, the stop-token set and the limits of one sample.
 *
 * Results are left in fields (`count`, `text`, `finishReason`) rather than returned in an object,
 * so a round allocates nothing here beyond the text itself.
 */
import type { FinishReason, GenerateRequest } from '../contract.js';
import { IncrementalDetokenizer } from '../tokenizer/incremental-detokenizer.js';
import type { TextTokenizer } from '../tokenizer/tokenizer.js';
import { StopSequenceMatcher } from './stop-sequences.js';

export class Emitter {
  /** Tokens emitted so far (the sample's completion tokens). */
  completionTokens = 0;
  /** Set once the sample is finished; then no more tokens are emitted. */
  finishReason: FinishReason | undefined;
  /** After emit(): how many of the round's tokens were emitted (a prefix of them). */
  count = 0;
  /** After emit() or timeUp(): the text to send for this round (possibly empty). */
  text = '';
  /** Tokens that end the output: the request's stop tokens and, unless ignore_eos, the model's EOS. */
  readonly stopTokens: ReadonlySet<number>;
  private readonly detokenizer: IncrementalDetokenizer;
  private readonly stopMatcher: StopSequenceMatcher;
  private readonly maxNewTokens: number;
  private readonly minNewTokens: number;
  private readonly includeStopSequence: boolean;
  private readonly timeLimitMs: number;
  /** performance.now() when the time limit's clock started. */
  private readonly started: number;

  constructor(
    tokenizer: TextTokenizer,
    request: GenerateRequest,
    promptTokens: readonly number[],
    eosTokenIds: readonly number[],
    started: number,
  ) {
    const stopTokens = new Set<number>(request.stopTokenIds ?? []);
    if (!request.ignoreEos) for (const id of eosTokenIds) stopTokens.add(id);
    this.stopTokens = stopTokens;
    this.detokenizer = new IncrementalDetokenizer(tokenizer, promptTokens);
    this.stopMatcher = new StopSequenceMatcher(request.stopSequences ?? []);
    this.maxNewTokens = request.maxNewTokens;
    this.minNewTokens = request.minNewTokens ?? 0;
    this.includeStopSequence = request.includeStopSequence === true;
    this.timeLimitMs = request.timeLimitMs ?? 0;
    this.started = started;
  }

  /**
   * Checked before each round: true once the time limit has passed, with the finish reason set to
   * time_limit and `text` holding whatever text was held back (to send before the final).
   */
  timeUp(): boolean {
    if (this.timeLimitMs <= 0 || performance.now() - this.started < this.timeLimitMs) return false;
    this.finishReason = 'time_limit';
    this.text = this.stopMatcher.push(this.detokenizer.flush()).text;
    if (!this.stopMatcher.done) this.text += this.stopMatcher.flush();
    return true;
  }

  /** Emits the round's verified `tokens` in order until one ends the sample. */
  emit(tokens: readonly number[]): void {
    let text = '';
    let count = 0;
    for (const token of tokens) {
      if (this.stopTokens.has(token)) {
        this.finishReason = 'eos_token';
        break;
      }
      count++;
      this.completionTokens++;
      const piece = this.detokenizer.push(token);
      // Stop sequences are looked for only after min_new_tokens.
      if (this.completionTokens <= this.minNewTokens) {
        text += piece;
      } else {
        const r = this.stopMatcher.push(piece);
        text += r.text;
        if (r.stopped) {
          if (this.includeStopSequence && r.stop !== undefined) text += r.stop;
          this.finishReason = 'stop_sequence';
          break;
        }
      }
      if (this.completionTokens >= this.maxNewTokens) {
        this.finishReason = 'length';
        break;
      }
    }
    // Finished other than by a stop sequence: release the held-back text (it may complete one).
    if (this.finishReason !== undefined && this.finishReason !== 'stop_sequence') {
      text += this.stopMatcher.push(this.detokenizer.flush()).text;
      if (!this.stopMatcher.done) text += this.stopMatcher.flush();
      else this.finishReason = 'stop_sequence';
    }
    this.count = count;
    this.text = text;
  }
}
