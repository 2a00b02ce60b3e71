/**
 * A DecoderModel without a model: deterministic logits that are a function of the prefix, so the
 * engine's round (speculation, rewind, samples, limits) can be tested in milliseconds. The next
 * token's distribution has a strong favourite chosen by a hash of the last two tokens, changed now
 * and then by a hash of the prefix length: greedy text repeats enough for n-gram drafts to be
 * accepted, and not so much that they always are.
 *
 * Like the real runtimes, forward() returns a buffer that the next forward reuses, and the logits
 * of a position depend only on the tokens before it (batch invariance), whatever the forward size.
 */
import type { ChatMessage, GrammarVocab, TextTokenizer } from '../../src/tokenizer/tokenizer.js';
import type { DecoderModel, DecoderSequence, ModelInfo } from '../../src/runtime/types.js';

export const FAKE_EOS = 1;

export interface FakeModelOptions {
  readonly vocabSize?: number;
  /** The favourite changes when a hash of the prefix length is divisible by this (a rejected draft). */
  readonly surpriseEvery?: number;
  /** Each forward waits this long (time limits, cancellation). */
  readonly forwardDelayMs?: number;
  /** Provide copyPrefixFrom (samples share one prefill), as the GQA runtimes do. */
  readonly copyPrefix?: boolean;
}

/** One forward as the model saw it: the cache's content before it and the tokens it appended. */
export interface ForwardRecord {
  readonly sequence: number;
  readonly kvBefore: readonly number[];
  readonly tokens: readonly number[];
  readonly logitsRows: number;
}

function mix(x: number): number {
  let h = (x ^ 0x9e3779b9) >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b) >>> 0;
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35) >>> 0;
  return (h ^ (h >>> 16)) >>> 0;
}

export class FakeDecoderModel implements DecoderModel {
  readonly info: ModelInfo;
  readonly forwards: ForwardRecord[] = [];
  private readonly options: Required<FakeModelOptions>;
  private sequences = 0;
  private disposed = false;

  constructor(options: FakeModelOptions = {}) {
    this.options = { vocabSize: 48, surpriseEvery: 5, forwardDelayMs: 0, copyPrefix: false, ...options };
    this.info = {
      name: 'fake',
      kind: 'anpd-gqa',
      dtype: 'float32',
      architecture: 'fake',
      vocabSize: this.options.vocabSize,
      contextLength: 4096,
      bosTokenId: undefined,
      eosTokenIds: [FAKE_EOS],
      executionProvider: 'cpu',
      batchSlots: 1,
      forwardRowsMin: 1,
      runner: 'onnxruntime-node',
      attention: 'onnxruntime',
    };
  }

  /** Writes the logits that follow `prefix` (its last token included) into `row`. */
  logitsAfter(prefix: readonly number[], row: Float32Array): void {
    const vocab = this.options.vocabSize;
    const a = prefix[prefix.length - 1] ?? 0;
    const b = prefix[prefix.length - 2] ?? 0;
    const h = mix(a * 131 + b * 17 + 7);
    let favourite = h % vocab;
    if (mix(h ^ (prefix.length * 2654435761)) % this.options.surpriseEvery === 0)
      favourite = mix(h + prefix.length) % vocab;
    for (let j = 0; j < vocab; j++) row[j] = (mix(h + j * 7919) % 1000) / 500;
    row[favourite]! += 4;
  }

  createSequence(options?: { readonly capacity?: number }): DecoderSequence {
    if (this.disposed) throw new Error('model disposed');
    return new FakeSequence(this, this.sequences++, options?.capacity ?? this.info.contextLength, this.options);
  }

  dispose(): Promise<void> {
    this.disposed = true;
    return Promise.resolve();
  }
}

class FakeSequence implements DecoderSequence {
  readonly capacity: number;
  readonly copyPrefixFrom: ((source: DecoderSequence, length: number) => void) | undefined;
  private readonly model: FakeDecoderModel;
  private readonly id: number;
  private readonly delayMs: number;
  private readonly tokens: number[] = [];
  private buffer = new Float32Array(0);
  private disposed = false;

  constructor(model: FakeDecoderModel, id: number, capacity: number, options: Required<FakeModelOptions>) {
    this.model = model;
    this.id = id;
    this.capacity = capacity;
    this.delayMs = options.forwardDelayMs;
    this.copyPrefixFrom = options.copyPrefix
      ? (source, length) => {
          if (this.tokens.length !== 0) throw new Error('copyPrefixFrom needs an empty sequence');
          this.tokens.push(...(source as FakeSequence).tokens.slice(0, length));
        }
      : undefined;
  }

  get length(): number {
    return this.tokens.length;
  }

  async forward(tokens: ArrayLike<number>, logitsRows: number): Promise<Float32Array> {
    if (this.disposed) throw new Error('sequence disposed');
    const input = Array.from(tokens);
    if (logitsRows < 1 || logitsRows > input.length)
      throw new RangeError(`logitsRows ${logitsRows} for ${input.length} tokens`);
    if (this.tokens.length + input.length > this.capacity) throw new RangeError('past capacity');
    this.model.forwards.push({ sequence: this.id, kvBefore: [...this.tokens], tokens: input, logitsRows });
    if (this.delayMs > 0) await new Promise((resolve) => setTimeout(resolve, this.delayMs));
    else await Promise.resolve();
    this.tokens.push(...input);
    const vocab = this.model.info.vocabSize;
    if (this.buffer.length < logitsRows * vocab) this.buffer = new Float32Array(logitsRows * vocab);
    // Reused like a runtime's output: a caller that keeps it across forwards sees it change.
    const out = this.buffer.subarray(0, logitsRows * vocab);
    const first = this.tokens.length - logitsRows;
    for (let r = 0; r < logitsRows; r++)
      this.model.logitsAfter(this.tokens.slice(0, first + r + 1), out.subarray(r * vocab, (r + 1) * vocab));
    return out;
  }

  rewind(length: number): void {
    if (length > this.tokens.length || length < 0) throw new RangeError(`rewind to ${length} of ${this.tokens.length}`);
    this.tokens.length = length;
  }

  dispose(): void {
    this.disposed = true;
  }
}

/** Token i reads "w<i> "; EOS reads "</s>" (special). Words "w<i>" encode back to i; other words hash into the vocabulary. */
export class FakeTokenizer implements TextTokenizer {
  readonly vocabSize: number;
  readonly hasChatTemplate = true;
  readonly specialTokenIds: ReadonlySet<number> = new Set([FAKE_EOS]);

  constructor(vocabSize = 48) {
    this.vocabSize = vocabSize;
  }

  encode(text: string): number[] {
    return text
      .split(/\s+/)
      .filter((w) => w !== '')
      .map((w) =>
        /^w\d+$/.test(w)
          ? Number(w.slice(1)) % this.vocabSize
          : 2 + (mix([...w].reduce((a, c) => a * 31 + c.charCodeAt(0), 0)) % (this.vocabSize - 2)),
      );
  }

  decode(ids: readonly number[], options?: { skipSpecialTokens?: boolean }): string {
    return ids.map((id) => (id === FAKE_EOS ? (options?.skipSpecialTokens ? '' : '</s>') : `w${id} `)).join('');
  }

  applyChatTemplate(messages: readonly ChatMessage[]): string {
    return messages.map((m) => m.content).join(' ');
  }

  tokenToId(token: string): number | undefined {
    return /^w\d+$/.test(token) ? Number(token.slice(1)) : undefined;
  }

  grammarVocab(): GrammarVocab {
    return {
      tokens: Array.from({ length: this.vocabSize }, (_, id) => (id === FAKE_EOS ? '' : `w${id} `)),
      kind: 'raw',
      prependSpace: false,
    };
  }
}
