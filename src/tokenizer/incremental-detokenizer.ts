/**
 * Streams text for tokens as they are generated, never emitting a broken UTF-8 character: a token
 * that ends mid-character (byte-level BPE splits emoji and CJK across tokens) yields nothing until
 * the character completes. Works for any tokenizer by decoding a short window (prefix/read offsets,
 * as TGI and vLLM do), seeded with the last prompt tokens so leading-space rules see real context.
 */
import type { TextTokenizer } from './tokenizer.js';

const CONTEXT_TOKENS = 4;
const REPLACEMENT = '\uFFFD';

export class IncrementalDetokenizer {
  private readonly tokenizer: TextTokenizer;
  private readonly tokens: number[];
  private prefixOffset: number;
  private readOffset: number;

  constructor(tokenizer: TextTokenizer, promptTail: readonly number[] = []) {
    this.tokenizer = tokenizer;
    this.tokens = promptTail.slice(-CONTEXT_TOKENS);
    this.prefixOffset = 0;
    this.readOffset = this.tokens.length;
  }

  /** Adds one generated token and returns the text it completes (possibly empty). */
  push(token: number): string {
    this.tokens.push(token);
    const window = this.tokens.slice(this.prefixOffset);
    const prefixText = this.tokenizer.decode(window.slice(0, this.readOffset - this.prefixOffset), {
      skipSpecialTokens: true,
    });
    const fullText = this.tokenizer.decode(window, { skipSpecialTokens: true });
    if (fullText.length > prefixText.length && !fullText.endsWith(REPLACEMENT)) {
      const delta = fullText.slice(prefixText.length);
      this.prefixOffset = this.readOffset;
      this.readOffset = this.tokens.length;
      // Keep the window short: drop tokens before the prefix.
      if (this.prefixOffset > 64) {
        this.tokens.splice(0, this.prefixOffset);
        this.readOffset -= this.prefixOffset;
        this.prefixOffset = 0;
      }
      return delta;
    }
    return '';
  }

  /** Text still held back at the end (an incomplete character is emitted as U+FFFD, as decode would). */
  flush(): string {
    const window = this.tokens.slice(this.prefixOffset);
    const prefixText = this.tokenizer.decode(window.slice(0, this.readOffset - this.prefixOffset), {
      skipSpecialTokens: true,
    });
    const fullText = this.tokenizer.decode(window, { skipSpecialTokens: true });
    this.prefixOffset = this.readOffset = this.tokens.length;
    return fullText.length > prefixText.length ? fullText.slice(prefixText.length) : '';
  }
}
