/**
 * Shared draft pools (issue 34): what earlier requests of the same scope (tenant) said, as a
 * source of drafts for the next ones. An agent that re-reads the same files, a chat that re-sends
 * its history, a tool that emits the same JSON: the text a request is about to produce often
 * follows, token for token, text an earlier request produced or read.
 *
 * A pool is a bounded corpus of finished requests' tokens (prompt and output, documents separated)
 * and an index from every `contextTokens`-token context to the positions after its occurrences
 * (the latest, chained to the earlier ones). A request whose last tokens match a context there (at
 * least `minMatch` tokens, measured back up to `maxMatch`; of the latest POOL_CANDIDATES_MAX
 * occurrences the longest match) gets the span that followed it as its draft (prompt lookup
 * across requests). Drafts only change speed: the verifier decides every token.
 *
 * Memory: 8 bytes a corpus token (token, chain) plus the index (~16 bytes a token); past `tokensMax` the oldest
 * documents are dropped and the index rebuilt (at a request's end, never in a decode round).
 * Pools are per scope; `DraftPools` keeps at most `scopesMax` of them, least recently used out.
 */
import { ContextTable, mix } from './context-table.js';

export interface DraftPoolOptions {
  /** Corpus tokens kept per scope (separators included). */
  readonly tokensMax: number;
  /** Tokens of context the index keys on (a match is at least this long). */
  readonly contextTokens: number;
  /** Shortest match (tokens) that yields a draft. */
  readonly minMatch: number;
  /** Longest match measured (a longer one is as good). */
  readonly maxMatch: number;
}

export const DEFAULT_DRAFT_POOL_OPTIONS: Omit<DraftPoolOptions, 'tokensMax'> = {
  contextTokens: 4,
  minMatch: 4,
  maxMatch: 32,
};

/** Occurrences of a context compared per lookup (each at most maxMatch token compares). */
export const POOL_CANDIDATES_MAX = 8;

/** Between documents: no context spans it and no copy runs past it. */
const SEPARATOR = -1;

export class DraftPool {
  readonly options: DraftPoolOptions;
  private corpus: Int32Array;
  private length = 0;
  /** Starts of the documents in the corpus, oldest first (each after its separator). */
  private starts: number[] = [];
  private index: ContextTable;
  /**
   * earlier[at]: the position after the previous occurrence of the context that ends before `at`
   * (−1: none), so the candidates of a context are a chain from the index's latest one.
   */
  private earlier: Int32Array;
  /** Documents dropped to stay within tokensMax, and their tokens. */
  evictions = 0;
  evictedTokens = 0;
  /**
   * How the scope's pool drafts are accepted, per draft position, as the last request to finish
   * measured them: the next request sizes its pool drafts from there, not from a blind prior (a
   * pool's reliability is the scope's, and a request is too short to learn it alone).
   */
  acceptance: readonly number[] | undefined;

  constructor(options: DraftPoolOptions) {
    if (!Number.isInteger(options.tokensMax) || options.tokensMax < 64)
      throw new RangeError(`tokensMax must be an integer ≥ 64, got ${options.tokensMax}`);
    if (options.minMatch < options.contextTokens || options.maxMatch < options.minMatch)
      throw new RangeError('need contextTokens ≤ minMatch ≤ maxMatch');
    this.options = options;
    this.corpus = new Int32Array(Math.min(options.tokensMax, 4096));
    this.earlier = new Int32Array(this.corpus.length + 1);
    this.index = new ContextTable(this.corpus.length);
  }

  /** Corpus tokens held (separators included). */
  get size(): number {
    return this.length;
  }

  get documents(): number {
    return this.starts.length;
  }

  /** A finished request's tokens (prompt and output) join the pool; the oldest leave when it is full. */
  add(tokens: ArrayLike<number>): void {
    const { tokensMax } = this.options;
    // A document larger than half the pool keeps its end (the latest text is the likeliest to return).
    const keep = Math.min(tokens.length, tokensMax >> 1);
    const from = tokens.length - keep;
    if (this.length + keep + 1 > tokensMax) this.evict(tokensMax - keep - 1);
    this.reserve(this.length + keep + 1);
    this.corpus[this.length++] = SEPARATOR;
    this.starts.push(this.length);
    for (let i = from; i < tokens.length; i++) this.append(tokens[i]!);
  }

  /**
   * The pool's continuation of `context[0, contextLength)`: writes up to `maxTokens` tokens into
   * `out` (emptied first) and returns the match length, or 0 (and `out` empty) when no context of
   * at least minMatch tokens matches.
   */
  continuation(context: ArrayLike<number>, contextLength: number, maxTokens: number, out: number[]): number {
    out.length = 0;
    const { contextTokens, minMatch, maxMatch } = this.options;
    if (contextLength < minMatch || maxTokens <= 0 || this.length === 0) return 0;
    let h = 0;
    for (let i = contextLength - contextTokens; i < contextLength; i++) h = mix(h, context[i]!);
    // The longest match among the context's latest POOL_CANDIDATES_MAX occurrences (the most recent
    // on a tie): a tool call's skeleton recurs in many documents, and the text before it says which
    // one this request is repeating.
    const corpus = this.corpus;
    let best = -1;
    let match = 0;
    let at = this.index.get(h);
    for (let n = 0; n < POOL_CANDIDATES_MAX && at >= 0 && at <= this.length; n++, at = this.earlier[at]!) {
      if (at >= this.length || corpus[at] === SEPARATOR) continue; // nothing follows this one
      let m = 0;
      while (
        m < maxMatch &&
        m < contextLength &&
        at - m - 1 >= 0 &&
        corpus[at - m - 1] === context[contextLength - m - 1]
      )
        m++;
      if (m > match) {
        match = m;
        best = at;
      }
      if (match >= maxMatch) break;
    }
    if (match < minMatch) return 0; // hash collisions, or shorter matches than asked
    for (let i = best; i < this.length && out.length < maxTokens && corpus[i] !== SEPARATOR; i++) out.push(corpus[i]!);
    return out.length > 0 ? match : 0;
  }

  private append(token: number): void {
    const pos = this.length;
    this.corpus[this.length++] = token;
    // Index the context that ends here, if it lies inside this document.
    const k = this.options.contextTokens;
    const start = this.starts[this.starts.length - 1]!;
    if (pos + 1 - k < start) return;
    let h = 0;
    for (let i = pos + 1 - k; i <= pos; i++) h = mix(h, this.corpus[i]!);
    this.earlier[pos + 1] = this.index.get(h);
    this.index.put(h, pos + 1);
  }

  private reserve(length: number): void {
    if (length <= this.corpus.length) return;
    let n = this.corpus.length;
    while (n < length) n *= 2;
    const grown = new Int32Array(Math.min(n, this.options.tokensMax));
    grown.set(this.corpus.subarray(0, this.length));
    this.corpus = grown;
    const chain = new Int32Array(grown.length + 1);
    chain.set(this.earlier.subarray(0, this.length + 1));
    this.earlier = chain;
  }

  /** Drops the oldest documents until the corpus holds at most `room` tokens, then rebuilds the index. */
  private evict(room: number): void {
    let first = 0;
    while (first < this.starts.length && this.length - (this.starts[first]! - 1) > room) first++;
    const kept = this.starts.slice(first);
    this.evictions += first;
    const from = kept.length > 0 ? kept[0]! - 1 : this.length;
    this.evictedTokens += from;
    const old = this.corpus.subarray(from, this.length).slice();
    this.length = 0;
    this.starts = [];
    this.index = new ContextTable(Math.max(this.options.tokensMax >> 1, 64));
    let i = 0;
    while (i < old.length) {
      // old[i] is a separator: the next document runs to the next one.
      let end = i + 1;
      while (end < old.length && old[end] !== SEPARATOR) end++;
      this.corpus[this.length++] = SEPARATOR;
      this.starts.push(this.length);
      for (let j = i + 1; j < end; j++) this.append(old[j]!);
      i = end;
    }
  }
}

/** Pools per scope: at most `scopesMax`, the least recently used dropped first. */
export class DraftPools {
  private readonly pools = new Map<string, DraftPool>();
  private readonly options: DraftPoolOptions;
  private readonly scopesMax: number;
  /** Scopes dropped to stay within scopesMax, and the tokens their pools held (and had evicted). */
  scopeEvictions = 0;
  private droppedTokens = 0;

  constructor(options: Partial<DraftPoolOptions> & Pick<DraftPoolOptions, 'tokensMax'>, scopesMax: number) {
    if (!Number.isInteger(scopesMax) || scopesMax < 1)
      throw new RangeError(`scopesMax must be a positive integer, got ${scopesMax}`);
    this.options = { ...DEFAULT_DRAFT_POOL_OPTIONS, ...options };
    this.scopesMax = scopesMax;
  }

  /** The scope's pool (made on first use). */
  get(scope: string): DraftPool {
    let pool = this.pools.get(scope);
    if (pool !== undefined) {
      // Most recently used last.
      this.pools.delete(scope);
      this.pools.set(scope, pool);
      return pool;
    }
    pool = new DraftPool(this.options);
    this.pools.set(scope, pool);
    if (this.pools.size > this.scopesMax) {
      const [oldest, dropped] = this.pools.entries().next().value!;
      this.pools.delete(oldest);
      this.scopeEvictions++;
      this.droppedTokens += dropped.size + dropped.evictedTokens;
    }
    return pool;
  }

  /** Whether `scope` has a pool (for tests and metrics; does not touch its recency). */
  has(scope: string): boolean {
    return this.pools.has(scope);
  }

  get scopes(): number {
    return this.pools.size;
  }

  /** Corpus tokens held across scopes. */
  get tokens(): number {
    let n = 0;
    for (const p of this.pools.values()) n += p.size;
    return n;
  }

  /** Tokens dropped since start: from full pools and with evicted scopes. */
  get evictedTokens(): number {
    let n = this.droppedTokens;
    for (const p of this.pools.values()) n += p.evictedTokens;
    return n;
  }
}
