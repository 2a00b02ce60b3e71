/**
 * The prefix KV cache (issue 34): finished requests' sequences kept with the tokens their KV
 * holds, so a request whose prompt starts the same way (a system prompt, a chat re-sending its
 * history, an agent re-reading a file) copies that prefix's KV and prefills only the rest.
 *
 * Exact: a position's keys and values do not depend on how many rows the forward that computed
 * them had (test/model-reference.test.ts: bitwise; test/prefix-cache.test.ts: a split prefill's
 * logits equal one prefill's), so a copied prefix is the KV the request's own prefill would make.
 *
 * Scoped like the draft pools (GenerateRequest.cacheScope): a request reuses only its own scope's
 * entries, so the time to a first token tells nothing about another tenant's prompts. Bounded in
 * bytes; least recently used entries go first. Entries are whole sequences (their buffers as they
 * grew), kept until evicted and then disposed.
 */
import type { DecoderSequence } from '../runtime/types.js';

/** Shorter common prefixes are prefilled: a copy is not worth its bookkeeping below this. */
export const PREFIX_CACHE_MIN_TOKENS = 16;

interface Entry {
  readonly scope: string;
  /** The tokens at the sequence's KV positions [0, tokens.length). */
  readonly tokens: Int32Array;
  readonly sequence: DecoderSequence;
  readonly bytes: number;
}

export interface PrefixHit {
  readonly sequence: DecoderSequence;
  /** Positions to copy: the common prefix. */
  readonly length: number;
}

export class PrefixCache {
  private readonly bytesMax: number;
  private readonly bytesPerPosition: number;
  /** Least recently used first. */
  private entries: Entry[] = [];
  private bytes = 0;
  hits = 0;
  hitTokens = 0;
  misses = 0;
  evictions = 0;

  constructor(bytesMax: number, bytesPerPosition: number) {
    if (!(bytesMax > 0) || !(bytesPerPosition > 0)) throw new RangeError('need positive bytesMax and bytesPerPosition');
    this.bytesMax = bytesMax;
    this.bytesPerPosition = bytesPerPosition;
  }

  get size(): number {
    return this.entries.length;
  }

  get bytesHeld(): number {
    return this.bytes;
  }

  get bytesBound(): number {
    return this.bytesMax;
  }

  /**
   * The scope's entry sharing the longest prefix with `tokens` (at least PREFIX_CACHE_MIN_TOKENS),
   * or undefined. The hit is used at once (copied from synchronously): entries only leave in retain().
   */
  lookup(scope: string, tokens: ArrayLike<number>): PrefixHit | undefined {
    let best: Entry | undefined;
    let bestLength = 0;
    for (const e of this.entries) {
      if (e.scope !== scope) continue;
      const n = Math.min(e.tokens.length, tokens.length);
      let i = 0;
      while (i < n && e.tokens[i] === tokens[i]) i++;
      if (i > bestLength) {
        best = e;
        bestLength = i;
      }
    }
    if (best === undefined || bestLength < PREFIX_CACHE_MIN_TOKENS) {
      this.misses++;
      return undefined;
    }
    this.hits++;
    this.hitTokens += bestLength;
    // Most recently used last.
    this.entries.splice(this.entries.indexOf(best), 1);
    this.entries.push(best);
    return { sequence: best.sequence, length: bestLength };
  }

  /**
   * Takes `sequence` (its KV holds `tokens`) into the cache, or disposes it when it cannot stay.
   * An entry whose tokens start this one's is dropped: the new one serves every request it would.
   */
  retain(scope: string, tokens: Int32Array, sequence: DecoderSequence): void {
    // The buffers grow in steps: count a step's slack.
    const bytes = (tokens.length + 256) * this.bytesPerPosition;
    if (tokens.length < PREFIX_CACHE_MIN_TOKENS || bytes > this.bytesMax) {
      sequence.dispose();
      return;
    }
    this.entries = this.entries.filter((e) => {
      if (e.scope !== scope || e.tokens.length > tokens.length) return true;
      for (let i = 0; i < e.tokens.length; i++) if (e.tokens[i] !== tokens[i]) return true;
      this.drop(e);
      return false;
    });
    while (this.bytes + bytes > this.bytesMax && this.entries.length > 0) {
      this.drop(this.entries.shift()!);
      this.evictions++;
    }
    this.entries.push({ scope, tokens, sequence, bytes });
    this.bytes += bytes;
  }

  dispose(): void {
    for (const e of this.entries) this.drop(e);
    this.entries = [];
  }

  private drop(e: Entry): void {
    this.bytes -= e.bytes;
    e.sequence.dispose();
  }
}
