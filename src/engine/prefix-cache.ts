/**
 * The prefix KV cache (issue 34): finished requests' sequences kept with the tokens their KV
 * holds, so a request whose prompt starts the same way (a system prompt, a chat re-sending its
 * history, an agent re-reading a file) copies that prefix's KV and prefills only the rest.
 *
 * Exact: a position's keys and values do not depend on how many rows the forward that computed
 * them had (test/model-reference.test.ts: bitwise; test/prefix-cache.test.ts: a split prefill's
 * logits equal one prefill's), so a copied prefix is the KV the request's own prefill would make.
 *
 * On the device path a position's KV depends on the forward that computed it (its kernels change
 * with the forward's length), so there a reused prefix ends on a prefill chunk boundary within
 * what its source prefilled (ModelInfo.prefixReuseChunkTokens): the rest of the prompt then runs
 * the very chunks a cold prefill runs, and the KV is the same bits by construction.
 *
 * Scoped like the draft pools (GenerateRequest.cacheScope): a request reuses only its own scope's
 * entries, so the time to a first token tells nothing about another tenant's prompts. Bounded in
 * bytes; least recently used entries go first. Entries are whole sequences (host KV: their buffers
 * as they grew; device: a whole KV set each), kept until evicted and then disposed.
 */
import type { DecoderSequence } from '../runtime/types.js';

/** Shorter common prefixes are prefilled: a copy is not worth its bookkeeping below this. */
export const PREFIX_CACHE_MIN_TOKENS = 16;

interface Entry {
  readonly scope: string;
  /** The tokens at the sequence's KV positions [0, tokens.length). */
  readonly tokens: Int32Array;
  /** Positions [0, prefilled) came from the prompt's prefill (the rest from decoding). */
  readonly prefilled: number;
  readonly sequence: DecoderSequence;
  readonly bytes: number;
}

/** What an entry costs and which prefixes are exact to reuse (from ModelInfo). */
export interface PrefixCacheLayout {
  /** Bytes a kept position takes (host KV, which grows with the sequence). */
  readonly bytesPerPosition?: number | undefined;
  /** Bytes a kept sequence takes whatever its length (a device KV set); wins over bytesPerPosition. */
  readonly bytesPerSequence?: number | undefined;
  /** ModelInfo.prefixReuseChunkTokens. */
  readonly chunkTokens?: number | undefined;
}

export interface PrefixHit {
  readonly sequence: DecoderSequence;
  /** Positions to copy: the common prefix. */
  readonly length: number;
}

export class PrefixCache {
  private readonly bytesMax: number;
  private readonly layout: PrefixCacheLayout;
  /** Least recently used first. */
  private entries: Entry[] = [];
  private bytes = 0;
  hits = 0;
  hitTokens = 0;
  misses = 0;
  evictions = 0;

  constructor(bytesMax: number, layout: PrefixCacheLayout) {
    const perEntry = layout.bytesPerSequence ?? layout.bytesPerPosition;
    if (!(bytesMax > 0) || perEntry === undefined || !(perEntry > 0))
      throw new RangeError('need a positive bytesMax and bytesPerSequence or bytesPerPosition');
    const chunk = layout.chunkTokens;
    if (chunk !== undefined && !(Number.isInteger(chunk) && chunk >= 1))
      throw new RangeError(`chunkTokens must be a positive integer, got ${chunk}`);
    this.bytesMax = bytesMax;
    this.layout = layout;
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
    const chunk = this.layout.chunkTokens;
    let best: Entry | undefined;
    let bestLength = 0;
    for (const e of this.entries) {
      if (e.scope !== scope) continue;
      const n = Math.min(chunk === undefined ? e.tokens.length : e.prefilled, tokens.length);
      let i = 0;
      while (i < n && e.tokens[i] === tokens[i]) i++;
      if (chunk !== undefined) i -= i % chunk;
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
   * Takes `sequence` (its KV holds `tokens`, the first `prefilled` from the prompt's prefill) into
   * the cache, or disposes it when it cannot stay. An entry that this one serves every request of
   * (its tokens start this one's, and it has no more prefilled positions) is dropped.
   */
  retain(scope: string, tokens: Int32Array, prefilled: number, sequence: DecoderSequence): void {
    const { bytesPerSequence, bytesPerPosition } = this.layout;
    // Host buffers grow in steps: count a step's slack.
    const bytes = bytesPerSequence ?? (tokens.length + 256) * bytesPerPosition!;
    const reusable = this.layout.chunkTokens === undefined ? tokens.length : prefilled;
    if (reusable < Math.max(PREFIX_CACHE_MIN_TOKENS, this.layout.chunkTokens ?? 0) || bytes > this.bytesMax) {
      sequence.dispose();
      return;
    }
    this.entries = this.entries.filter((e) => {
      if (e.scope !== scope || e.tokens.length > tokens.length || e.prefilled > prefilled) return true;
      for (let i = 0; i < e.tokens.length; i++) if (e.tokens[i] !== tokens[i]) return true;
      this.drop(e);
      return false;
    });
    while (this.bytes + bytes > this.bytesMax && this.entries.length > 0) {
      this.drop(this.entries.shift()!);
      this.evictions++;
    }
    this.entries.push({ scope, tokens, prefilled: Math.min(prefilled, tokens.length), sequence, bytes });
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
