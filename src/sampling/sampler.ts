/**
 * Token choice from a logits row: greedy, or seeded sampling with temperature, top-k, top-p and
 * min-p, after the row modifiers (repetition, presence and frequency penalties, logit bias). Pure (no I/O) and allocation-free per call: scratch buffers are sized once.
 * Every pick consumes exactly one uniform from the RNG when sampling, none when greedy, so a
 * speculative decoder that picks at the same positions reproduces plain decoding's choices.
 */

export interface SamplingParams {
  /** 0 means greedy. */
  readonly temperature: number;
  /** 0 disables top-k. */
  readonly topK: number;
  /** 1 disables top-p. */
  readonly topP: number;
  /** 1 disables the penalty (CTRL-style: positive logits divided, negative multiplied). */
  readonly repetitionPenalty: number;
  /** Seed of the RNG; the same seed and inputs give the same tokens. */
  readonly seed: number;
  /** In [0, 1]; 0 (default) disables. Keeps tokens whose probability is ≥ minP × the top token's. */
  readonly minP?: number;
  /** Subtracted once from the logit of every token the output already holds (OpenAI-style). Default 0. */
  readonly presencePenalty?: number;
  /** Subtracted from a token's logit once per occurrence in the output. Default 0. */
  readonly frequencyPenalty?: number;
  /** Added to the named tokens' logits (after the penalties), [token id, bias] pairs. */
  readonly logitBias?: readonly (readonly [number, number])[];
}

export const GREEDY: SamplingParams = { temperature: 0, topK: 0, topP: 1, repetitionPenalty: 1, seed: 0 };
/** logit_bias entries per request (OpenAI's bound) and the bias range. */
export const LOGIT_BIAS_ENTRIES_MAX = 300;
export const LOGIT_BIAS_ABS_MAX = 100;
/** presence_penalty and frequency_penalty range (OpenAI's). */
export const OCCURRENCE_PENALTY_ABS_MAX = 2;

/** xoshiro128** — small, fast, good enough for sampling, fully determined by a 32-bit seed. */
export class Rng {
  private s0: number;
  private s1: number;
  private s2: number;
  private s3: number;

  constructor(seed: number) {
    // splitmix32 expands the seed into the 128-bit state.
    let x = seed >>> 0;
    const next = (): number => {
      x = (x + 0x9e3779b9) >>> 0;
      let z = x;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
      return (z ^ (z >>> 16)) >>> 0;
    };
    this.s0 = next();
    this.s1 = next();
    this.s2 = next();
    this.s3 = next();
  }

  /** Uniform in [0, 1). */
  next(): number {
    const result = Math.imul(rotl(Math.imul(this.s1, 5) >>> 0, 7), 9) >>> 0;
    const t = (this.s1 << 9) >>> 0;
    this.s2 ^= this.s0;
    this.s3 ^= this.s1;
    this.s1 ^= this.s2;
    this.s0 ^= this.s3;
    this.s2 ^= t;
    this.s3 = rotl(this.s3, 11);
    return result / 4294967296;
  }
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}

/** Index of the largest value in row[offset, offset+n); ties go to the lowest index. */
export function argmax(row: Float32Array, offset: number, n: number): number {
  let best = 0;
  let bestValue = row[offset]!;
  for (let i = 1; i < n; i++) {
    const v = row[offset + i]!;
    if (v > bestValue) {
      bestValue = v;
      best = i;
    }
  }
  return best;
}

/**
 * What the penalties look at: which tokens the prompt and output hold (repetition penalty) and how
 * often each occurs in the output (presence and frequency penalties, as vLLM and OpenAI count).
 */
export class TokenHistory {
  private readonly seen: Uint8Array;
  private readonly seenIds: number[] = [];
  private readonly outputCounts: Int32Array;
  private readonly outputIds: number[] = [];

  constructor(vocabSize: number) {
    this.seen = new Uint8Array(vocabSize);
    this.outputCounts = new Int32Array(vocabSize);
  }

  private markSeen(token: number): void {
    if (this.seen[token] === 0) {
      this.seen[token] = 1;
      this.seenIds.push(token);
    }
  }

  addPrompt(token: number): void {
    if (token >= 0 && token < this.seen.length) this.markSeen(token);
  }

  addOutput(token: number): void {
    if (token < 0 || token >= this.seen.length) return;
    this.markSeen(token);
    const count = this.outputCounts[token]!;
    if (count === 0) this.outputIds.push(token);
    this.outputCounts[token] = count + 1;
  }

  /** Distinct tokens of prompt and output. */
  forEachSeen(fn: (id: number) => void): void {
    for (const id of this.seenIds) fn(id);
  }

  /** Distinct output tokens with their counts. */
  forEachOutput(fn: (id: number, count: number) => void): void {
    for (const id of this.outputIds) fn(id, this.outputCounts[id]!);
  }
}

/**
 * The first index of the row's largest value among the allowed tokens (bit t of allowed[t >> 5]):
 * argmax of the row with every other token at −∞, without writing it. −1 when none is allowed.
 */
export function maskedArgmax(logits: Float32Array, offset: number, vocab: number, allowed: Int32Array): number {
  let best = -1;
  let bestValue = -Infinity;
  const words = Math.min(allowed.length, Math.ceil(vocab / 32));
  for (let w = 0; w < words; w++) {
    let bits = allowed[w]!;
    if (bits === -1) {
      // A word of allowed tokens (most of them inside a JSON string): a plain scan.
      const end = Math.min(vocab, w * 32 + 32);
      for (let id = w * 32; id < end; id++) {
        const v = logits[offset + id]!;
        if (v > bestValue || best === -1) {
          best = id;
          bestValue = v;
        }
      }
      continue;
    }
    while (bits !== 0) {
      const bit = 31 - Math.clz32(bits & -bits);
      bits &= bits - 1;
      const id = w * 32 + bit;
      if (id >= vocab) break;
      const v = logits[offset + id]!;
      if (v > bestValue || best === -1) {
        best = id;
        bestValue = v;
      }
    }
  }
  return best;
}

/** Sets every token the bitmask does not allow to −∞ (whole words at once where none is allowed). */
export function applyTokenMask(logits: Float32Array, offset: number, vocab: number, allowed: Int32Array): void {
  const words = Math.ceil(vocab / 32);
  for (let w = 0; w < words; w++) {
    const bits = w < allowed.length ? allowed[w]! : 0;
    if (bits === -1) continue;
    const start = w * 32;
    const end = Math.min(vocab, start + 32);
    if (bits === 0) logits.fill(-Infinity, offset + start, offset + end);
    else for (let id = start; id < end; id++) if (((bits >>> (id - start)) & 1) === 0) logits[offset + id] = -Infinity;
  }
}

export class Sampler {
  readonly params: SamplingParams;
  private readonly vocab: number;
  private readonly rng: Rng;
  private readonly probs: Float32Array;
  private readonly order: Int32Array;

  constructor(params: SamplingParams, vocabSize: number) {
    this.params = params;
    this.vocab = vocabSize;
    this.rng = new Rng(params.seed);
    this.probs = new Float32Array(params.temperature > 0 ? vocabSize : 0);
    this.order = new Int32Array(params.temperature > 0 ? vocabSize : 0);
  }

  get greedy(): boolean {
    return this.params.temperature <= 0;
  }

  /** Whether picking rewrites the row (penalties, bias): the pick then needs a TokenHistory. */
  get modifiesRow(): boolean {
    const p = this.params;
    return (
      p.repetitionPenalty !== 1 ||
      (p.presencePenalty ?? 0) !== 0 ||
      (p.frequencyPenalty ?? 0) !== 0 ||
      (p.logitBias?.length ?? 0) > 0
    );
  }

  /**
   * Picks a token from logits row `rowIndex` (rows of vocabSize). Penalties, bias and `suppressed`
   * (tokens that may not be picked, e.g. EOS before min_new_tokens) are applied in place on the
   * row, so call once per row. Order: repetition penalty, presence and frequency penalties, logit
   * bias, suppression, the `allowed` bitmask (a response_format's: bit t of allowed[t >> 5]); then
   * temperature, top-k, top-p, min-p.
   */
  pick(
    logits: Float32Array,
    rowIndex: number,
    history: TokenHistory | undefined,
    suppressed?: readonly number[],
    allowed?: Int32Array,
  ): number {
    const offset = rowIndex * this.vocab;
    const p = this.params;
    if (history !== undefined) {
      const penalty = p.repetitionPenalty;
      if (penalty !== 1) {
        history.forEachSeen((id) => {
          const v = logits[offset + id]!;
          logits[offset + id] = v > 0 ? v / penalty : v * penalty;
        });
      }
      const presence = p.presencePenalty ?? 0;
      const frequency = p.frequencyPenalty ?? 0;
      if (presence !== 0 || frequency !== 0) {
        history.forEachOutput((id, count) => {
          logits[offset + id] = logits[offset + id]! - (presence + frequency * count);
        });
      }
    }
    if (p.logitBias !== undefined)
      for (const [id, bias] of p.logitBias) logits[offset + id] = logits[offset + id]! + bias;
    if (suppressed !== undefined) for (const id of suppressed) if (id < this.vocab) logits[offset + id] = -Infinity;
    if (allowed !== undefined) {
      if (this.greedy) return maskedArgmax(logits, offset, this.vocab, allowed);
      applyTokenMask(logits, offset, this.vocab, allowed);
    }
    if (this.greedy) return argmax(logits, offset, this.vocab);
    return this.sample(logits, offset);
  }

  private sample(logits: Float32Array, offset: number): number {
    const { temperature, topK, topP } = this.params;
    const n = this.vocab;
    const probs = this.probs;
    let max = -Infinity;
    for (let i = 0; i < n; i++) if (logits[offset + i]! > max) max = logits[offset + i]!;
    let sum = 0;
    for (let i = 0; i < n; i++) {
      probs[i] = Math.exp((logits[offset + i]! - max) / temperature);
      sum += probs[i]!; // sum the stored float32 values, so the cumulative scan below reaches it
    }
    const minP = this.params.minP ?? 0;
    if (topK <= 0 && topP >= 1 && minP <= 0) {
      // Full distribution: no ordering needed.
      const u = this.rng.next() * sum;
      let acc = 0;
      for (let i = 0; i < n; i++) {
        acc += probs[i]!;
        if (u < acc) return i;
      }
      return argmax(logits, offset, n);
    }
    // Candidates are the tokens at or above a threshold, lowered until they hold the top-k set
    // (top-k given), the top-p mass (top-p alone) or the min-p set, so the filtered set (the
    // shortest of those prefixes of the sorted order) is exact; then sorted. The top token's
    // unnormalized probability is 1, so min-p keeps probs ≥ minP.
    const keep = topK > 0 ? Math.min(topK, n) : n;
    let threshold = Math.max(sum / (64 * n), minP);
    let count = 0;
    for (;;) {
      count = 0;
      let mass = 0;
      for (let i = 0; i < n; i++) {
        if (probs[i]! >= threshold) {
          this.order[count++] = i;
          mass += probs[i]!;
        }
      }
      const enough = (topK > 0 ? count >= keep : topP < 1 && mass >= topP * sum) || (minP > 0 && threshold <= minP);
      if (enough || threshold === 0) break;
      threshold = threshold > 1e-30 * sum ? threshold / 64 : 0;
    }
    const candidates = this.order.subarray(0, count);
    candidates.sort((a, b) => probs[b]! - probs[a]! || a - b);
    let limit = Math.min(count, keep);
    let mass = 0;
    for (let i = 0; i < limit; i++) mass += probs[candidates[i]!]!;
    if (topP < 1) {
      let acc = 0;
      // top-p alone measures against the whole distribution; after top-k, against the kept set (as HF does).
      const target = topP * (topK > 0 ? mass : sum);
      for (let i = 0; i < limit; i++) {
        acc += probs[candidates[i]!]!;
        if (acc >= target) {
          limit = i + 1;
          break;
        }
      }
      mass = acc;
    }
    if (minP > 0) {
      let kept = 1;
      while (kept < limit && probs[candidates[kept]!]! >= minP) kept++;
      if (kept < limit) {
        limit = kept;
        mass = 0;
        for (let i = 0; i < limit; i++) mass += probs[candidates[i]!]!;
      }
    }
    const u = this.rng.next() * mass;
    let acc = 0;
    for (let i = 0; i < limit; i++) {
      acc += probs[candidates[i]!]!;
      if (u < acc) return candidates[i]!;
    }
    return candidates[limit - 1]!;
  }
}
