/**
 * Adaptive N-gram drafter (ANPD, Ou et al. 2024) with a longest-suffix copy (prompt lookup).
 *
 * For each level n = 2..N a table maps the previous n−1 tokens to the tokens that followed them,
 * with counts and the position of the latest occurrence. It is built from the prompt and extended
 * with every committed token; rejected drafts never enter it. Updates are O(N) per token.
 *
 * Keys are 32-bit rolling hashes of the context; a hit is confirmed by comparing the context with
 * the history at the entry's latest occurrence, so collisions cost a miss, never a wrong lookup.
 *
 * Drafting: if the longest level's context occurred before with a long enough exact suffix match,
 * copy the span that followed it (prompt lookup: long, precise drafts on copy-heavy text);
 * otherwise draft token by token from the highest level that has a confident entry (ANPD's
 * multi-level n-gram), the most frequent continuation first, ties to the most recent.
 */
import { ContextTable, mix } from './context-table.js';
import type { Drafter } from './drafter.js';

export interface NgramDrafterOptions {
  /** Highest n-gram order N (contexts of N−1 tokens); levels are 2..N. Paper default 5. */
  readonly n: number;
  /** Minimum count for a level-n entry to be used, per level index 0 → n=2 (llama.cpp-style gating). */
  readonly minCount: readonly number[];
  /** Minimum share of the chosen continuation among all continuations of the context. */
  readonly minShare: number;
  /** Exact suffix match length (tokens) from which the span copy is used instead of the tables; 0 disables copying. */
  readonly copyMinMatch: number;
  /** Longest suffix compared when measuring a match. */
  readonly copyMaxMatch: number;
}

export const NGRAM_N_MAX = 8;
/** Continuations remembered per context: constant memory per entry (llama.cpp ngram-mod keeps 4). */
export const SLOTS_PER_CONTEXT = 4;

export const ANPD_PAPER_OPTIONS: NgramDrafterOptions = {
  n: 5,
  minCount: [1, 1, 1, 1, 1, 1, 1],
  minShare: 0,
  copyMinMatch: 0,
  copyMaxMatch: 0,
};
/**
 * Span copy on top of ungated tables: in the replay of recorded greedy outputs
 * (bench/draft-replay), confidence gating (minCount 2 at n = 2, share ≥ 0.3) lowered τ slightly on
 * every category, so the default gates nothing; the copy is kept for long matches.
 */
export const DEFAULT_NGRAM_OPTIONS: NgramDrafterOptions = {
  n: 5,
  minCount: [1, 1, 1, 1, 1, 1, 1],
  minShare: 0,
  copyMinMatch: 3,
  copyMaxMatch: 16,
};

/**
 * Every level's entries in flat typed arrays, indexed by entry: no object per context. (A prompt of
 * a few hundred tokens made thousands of entry objects per request; at 64 streams on an H100 their
 * allocation and garbage were ~14% of an ANPD step's time, docs/perf-notes.md.)
 */
class EntryPool {
  size = 0;
  /** Per slot (entry × SLOTS_PER_CONTEXT + slot): the continuation, its count, its latest history index. */
  tokens: Int32Array;
  counts: Int32Array;
  last: Int32Array;
  /** Per entry: slots used, total count, history index of the continuation at the latest occurrence of the context. */
  used: Int32Array;
  total: Int32Array;
  latest: Int32Array;

  constructor(capacity: number) {
    this.tokens = new Int32Array(capacity * SLOTS_PER_CONTEXT);
    this.counts = new Int32Array(capacity * SLOTS_PER_CONTEXT);
    this.last = new Int32Array(capacity * SLOTS_PER_CONTEXT);
    this.used = new Int32Array(capacity);
    this.total = new Int32Array(capacity);
    this.latest = new Int32Array(capacity);
  }

  /** A new empty entry's index. */
  add(): number {
    if (this.size === this.used.length) {
      const grow = (a: Int32Array) => {
        const b = new Int32Array(a.length * 2);
        b.set(a);
        return b;
      };
      this.tokens = grow(this.tokens);
      this.counts = grow(this.counts);
      this.last = grow(this.last);
      this.used = grow(this.used);
      this.total = grow(this.total);
      this.latest = grow(this.latest);
    }
    return this.size++;
  }
}

export class NgramDrafter implements Drafter {
  readonly options: NgramDrafterOptions;
  private history: Int32Array;
  private length = 0;
  /** tables[level] for level = n − 2 (context of n − 1 tokens): context hash → entry of `entries`. */
  private readonly tables: ContextTable[];
  private readonly entries: EntryPool;
  private readonly scratch: number[] = [];
  lookups = 0;
  hits = 0;
  /** The last proposal's span-copy match length (tokens), 0 when it did not copy. */
  lastCopyMatch = 0;

  constructor(prompt: readonly number[], options: NgramDrafterOptions = DEFAULT_NGRAM_OPTIONS) {
    if (!Number.isInteger(options.n) || options.n < 2 || options.n > NGRAM_N_MAX)
      throw new RangeError(`n must be in [2, ${NGRAM_N_MAX}]`);
    this.options = options;
    // Sized for the prompt and as many tokens again (each grows by doubling).
    const expected = Math.max(64, prompt.length * 2);
    this.tables = Array.from({ length: options.n - 1 }, () => new ContextTable(expected));
    this.entries = new EntryPool(expected * (options.n - 1));
    this.history = new Int32Array(expected);
    this.commit(prompt);
  }

  get size(): number {
    return this.length;
  }

  /** The committed tokens are `committed()[0, size)` (the array is replaced as it grows: read it, do not keep it). */
  committed(): Int32Array {
    return this.history;
  }

  /** Number of distinct contexts stored per level (for tests and memory accounting). */
  contextCounts(): number[] {
    return this.tables.map((t) => t.size);
  }

  commit(tokens: readonly number[]): void {
    for (const t of tokens) this.push(t);
  }

  private push(token: number): void {
    if (this.length === this.history.length) {
      const grown = new Int32Array(this.history.length * 2);
      grown.set(this.history);
      this.history = grown;
    }
    const pos = this.length;
    this.history[pos] = token;
    this.length++;
    // For each level, the context is history[pos-(n-1) .. pos-1] and the continuation is `token`.
    let h = 0;
    for (let ctx = 1; ctx <= this.tables.length && ctx <= pos; ctx++) {
      h = mix(h, this.history[pos - ctx]!);
      const table = this.tables[ctx - 1]!;
      const pool = this.entries;
      let entry = table.get(h);
      if (entry < 0) {
        entry = pool.add();
        table.set(h, entry);
      } else if (!this.contextMatches(pool.latest[entry]!, pos, ctx)) {
        // Hash collision with a different context: the newer context takes the slot.
        pool.used[entry] = 0;
        pool.total[entry] = 0;
      }
      addContinuation(pool, entry, token, pos);
    }
  }

  /** True if the ctx tokens before history index a equal the ctx tokens before index b. */
  private contextMatches(a: number, b: number, ctx: number): boolean {
    if (a < ctx) return false;
    for (let i = 1; i <= ctx; i++) if (this.history[a - i] !== this.history[b - i]) return false;
    return true;
  }

  propose(maxTokens: number): readonly number[] {
    const draft = this.scratch;
    draft.length = 0;
    if (maxTokens <= 0 || this.length === 0) return draft;
    const o = this.options;
    this.lastCopyMatch = 0;
    // 1. Span copy from the latest occurrence of the longest context, if its match is long enough.
    if (o.copyMinMatch > 0) {
      const src = this.copySource();
      if (src >= 0) {
        // Past the end of history the copy continues from its own draft: a periodic pattern
        // (a list, a repeated line) extends itself.
        for (let i = src; draft.length < maxTokens; i++)
          draft.push(i < this.length ? this.history[i]! : draft[i - this.length]!);
        return draft;
      }
    }
    // 2. Multi-level n-gram, token by token over committed + drafted tokens.
    while (draft.length < maxTokens) {
      const next = this.lookup(draft);
      if (next < 0) break;
      draft.push(next);
    }
    return draft;
  }

  /** History index to copy from, or −1. */
  private copySource(): number {
    const o = this.options;
    const ctx = Math.min(this.tables.length, this.length);
    if (ctx < 1) return -1;
    let h = 0;
    for (let i = 1; i <= ctx; i++) h = mix(h, this.history[this.length - i]!);
    this.lookups++;
    const entry = this.tables[ctx - 1]!.get(h);
    // The latest occurrence < length always: the context at the end of history has no continuation yet.
    if (entry < 0 || this.entries.used[entry] === 0) return -1;
    const latest = this.entries.latest[entry]!;
    if (!this.contextMatches(latest, this.length, ctx)) return -1;
    let match = ctx;
    while (
      match < o.copyMaxMatch &&
      latest - match - 1 >= 0 &&
      this.history[latest - match - 1] === this.history[this.length - match - 1]
    )
      match++;
    if (match < o.copyMinMatch) return -1;
    this.hits++;
    this.lastCopyMatch = match;
    return latest;
  }

  /** Next token after committed history + draft from the highest confident level, or −1. */
  private lookup(draft: readonly number[]): number {
    const o = this.options;
    const total = this.length + draft.length;
    const at = (back: number): number => {
      // Token `back` positions before the end of committed + draft (back ≥ 1).
      const i = total - back;
      return i >= this.length ? draft[i - this.length]! : this.history[i]!;
    };
    const maxCtx = Math.min(this.tables.length, total);
    // Hashes for every context length, shortest first (they share the rolling prefix).
    let h = 0;
    const hashes = this.hashScratch;
    for (let ctx = 1; ctx <= maxCtx; ctx++) {
      h = mix(h, at(ctx));
      hashes[ctx] = h;
    }
    this.lookups++;
    const pool = this.entries;
    for (let ctx = maxCtx; ctx >= 1; ctx--) {
      const entry = this.tables[ctx - 1]!.get(hashes[ctx]!);
      if (entry < 0 || pool.used[entry] === 0) continue;
      // Confirm the context (collisions are misses).
      const latest = pool.latest[entry]!;
      let same = true;
      for (let i = 1; i <= ctx && same; i++) same = this.history[latest - i] === at(i);
      if (!same) continue;
      const best = bestSlot(pool, entry);
      const count = pool.counts[best]!;
      if (count < (o.minCount[ctx - 1] ?? 1) || count < o.minShare * pool.total[entry]!) continue;
      this.hits++;
      return pool.tokens[best]!;
    }
    return -1;
  }

  private readonly hashScratch: number[] = new Array<number>(NGRAM_N_MAX + 1).fill(0);
}

function addContinuation(pool: EntryPool, entry: number, token: number, pos: number): void {
  const { tokens, counts, last } = pool;
  pool.total[entry]!++;
  pool.latest[entry] = pos;
  const first = entry * SLOTS_PER_CONTEXT;
  const used = pool.used[entry]!;
  for (let s = first; s < first + used; s++) {
    if (tokens[s] === token) {
      counts[s]!++;
      last[s] = pos;
      return;
    }
  }
  if (used < SLOTS_PER_CONTEXT) {
    const s = first + used;
    pool.used[entry] = used + 1;
    tokens[s] = token;
    counts[s] = 1;
    last[s] = pos;
    return;
  }
  // Full: replace the weakest slot (lowest count, then oldest).
  let weakest = first;
  for (let s = first + 1; s < first + SLOTS_PER_CONTEXT; s++) {
    if (counts[s]! < counts[weakest]! || (counts[s] === counts[weakest] && last[s]! < last[weakest]!)) weakest = s;
  }
  pool.total[entry]! -= counts[weakest]!;
  tokens[weakest] = token;
  counts[weakest] = 1;
  last[weakest] = pos;
}

/** The slot (index into the pool's slot arrays) of the most frequent continuation; ties go to the most recent. */
function bestSlot(pool: EntryPool, entry: number): number {
  const { counts, last } = pool;
  const first = entry * SLOTS_PER_CONTEXT;
  let best = first;
  for (let s = first + 1; s < first + pool.used[entry]!; s++) {
    if (counts[s]! > counts[best]! || (counts[s] === counts[best] && last[s]! > last[best]!)) best = s;
  }
  return best;
}
