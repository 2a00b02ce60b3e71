/**
 * Pure helpers of the peers benchmark (bench/peers.ts): one definition of each metric for every
 * engine, the comparison with our plain greedy output, and the llama-lookup output parser.
 */

/** One generation by one engine, timed by that engine's own API or stream. */
export interface PeerSample {
  /** Generated ids without EOS; empty for engines that only give text (llama-lookup). */
  readonly tokens: readonly number[];
  /** Generated text, where the engine gives text rather than ids. */
  readonly text?: string;
  /** Tokens generated (equals tokens.length where ids are known). */
  readonly tokenCount: number;
  /** From the request to the first generated token. */
  readonly ttftMs: number;
  readonly totalMs: number;
  /** Tokens delivered together with the first one (a speculative first round can give several). */
  readonly firstChunkTokens: number;
  /** Model forward passes that produced tokens, the prompt's (or first round's) included. */
  readonly modelCalls: number;
}

/**
 * Decode rate: the tokens after the first chunk over the time after it. Prefill and the first
 * token are TTFT's; this is the steady-state rate that speculation changes.
 */
export function decodeTokPerS(s: Pick<PeerSample, 'tokenCount' | 'firstChunkTokens' | 'ttftMs' | 'totalMs'>): number {
  const tokens = s.tokenCount - s.firstChunkTokens;
  const ms = s.totalMs - s.ttftMs;
  return tokens > 0 && ms > 0 ? (tokens / ms) * 1000 : NaN;
}

/** Index of the first position where two outputs differ (the shorter length if one is a prefix). */
export function firstDivergence(a: readonly number[], b: readonly number[]): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? a.length : n;
}

/** Token-identical to the reference (same ids, same length). */
export function sameTokens(reference: readonly number[], other: readonly number[]): boolean {
  return reference.length === other.length && firstDivergence(reference, other) === reference.length;
}

/**
 * Text-identical to the reference. An engine that overshoots max_new_tokens (llama-lookup checks
 * the limit once per round) still matches when the reference was cut by the limit and the other
 * text starts with it.
 */
export function sameText(reference: string, referenceHitLimit: boolean, other: string): boolean {
  return other === reference || (referenceHitLimit && other.startsWith(reference));
}

export interface LookupRun {
  /** The generated text, end-of-generation marker removed. */
  readonly text: string;
  readonly promptTokens: number;
  /** Tokens sampled (n_predict), the first one and the EOS included. */
  readonly predicted: number;
  readonly drafted: number;
  readonly accepted: number;
  /** Prompt forward including the last prompt token, i.e. up to the first token's logits. */
  readonly encodeMs: number;
  /** From the first sampled token to the end. */
  readonly decodeMs: number;
  /** The run stopped on an end-of-generation token (counted in `predicted`). */
  readonly endedOnEog: boolean;
}

function num(text: string, re: RegExp, what: string): number {
  const m = re.exec(text);
  if (!m?.[1]) throw new Error(`llama-lookup output has no ${what}`);
  return Number(m[1]);
}

/**
 * Parses llama-lookup (llama.cpp examples/lookup): stdout is "\n\n" + prompt + generated text +
 * "\n\n…"; stderr carries "encoded N tokens in S seconds", "decoded N tokens in S seconds",
 * n_drafted and n_accept.
 */
export function parseLlamaLookup(
  stdout: string,
  stderr: string,
  promptText: string,
  eogMarkers: readonly string[],
): LookupRun {
  const start = stdout.indexOf(promptText);
  if (start < 0) throw new Error('llama-lookup stdout does not echo the prompt');
  let text = stdout.slice(start + promptText.length).replace(/\n+$/, '');
  let endedOnEog = false;
  for (const m of eogMarkers) {
    const at = text.lastIndexOf(m);
    if (at >= 0 && at === text.length - m.length) {
      text = text.slice(0, at);
      endedOnEog = true;
      break;
    }
  }
  return {
    text,
    promptTokens: num(stderr, /encoded\s+(\d+) tokens in/, 'encoded line'),
    predicted: num(stderr, /n_predict\s+=\s+(\d+)/, 'n_predict'),
    drafted: num(stderr, /n_drafted\s+=\s+(\d+)/, 'n_drafted'),
    accepted: num(stderr, /n_accept\s+=\s+(\d+)/, 'n_accept'),
    encodeMs: num(stderr, /encoded\s+\d+ tokens in\s+([\d.]+) seconds/, 'encode time') * 1000,
    decodeMs: num(stderr, /decoded\s+\d+ tokens in\s+([\d.]+) seconds/, 'decode time') * 1000,
    endedOnEog,
  };
}

/**
 * A llama-lookup run as a PeerSample. Each target call yields its accepted drafts plus one token,
 * so calls = sampled − accepted (the prompt's call, which gave the first token, included). The EOS
 * it sampled is not a generated token for the others, so it is dropped from the count.
 */
export function lookupSample(run: LookupRun): PeerSample {
  const tokenCount = run.predicted - (run.endedOnEog ? 1 : 0);
  return {
    tokens: [],
    text: run.text,
    tokenCount,
    ttftMs: run.encodeMs,
    totalMs: run.encodeMs + run.decodeMs,
    firstChunkTokens: 1,
    modelCalls: run.predicted - run.accepted,
  };
}

export interface EngineTotals {
  samples: number;
  tokens: number;
  decodeTokens: number;
  decodeMs: number;
  modelCalls: number;
  ttftMs: number[];
  identical: number;
  compared: number;
  /** First divergence from our plain output, in tokens, for the samples that differ (ids known). */
  divergeAt: number[];
}

export function emptyTotals(): EngineTotals {
  return {
    samples: 0,
    tokens: 0,
    decodeTokens: 0,
    decodeMs: 0,
    modelCalls: 0,
    ttftMs: [],
    identical: 0,
    compared: 0,
    divergeAt: [],
  };
}

export function addSample(t: EngineTotals, s: PeerSample, identical: boolean | undefined, divergeAt?: number): void {
  t.samples++;
  t.tokens += s.tokenCount;
  t.decodeTokens += Math.max(0, s.tokenCount - s.firstChunkTokens);
  t.decodeMs += Math.max(0, s.totalMs - s.ttftMs);
  t.modelCalls += s.modelCalls;
  t.ttftMs.push(s.ttftMs);
  if (identical !== undefined) {
    t.compared++;
    if (identical) t.identical++;
    else if (divergeAt !== undefined) t.divergeAt.push(divergeAt);
  }
}

export function median(a: readonly number[]): number {
  const s = [...a].sort((x, y) => x - y);
  return s.length === 0 ? NaN : s.length % 2 ? s[s.length >> 1]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
}

export interface EngineRow {
  decodeTokPerS: number;
  ttftMsMedian: number;
  /** Tokens per model call (τ for speculative engines, 1 for plain ones). */
  tokensPerCall: number;
  identicalShare: number | null;
  medianDivergeAt: number | null;
  samples: number;
  meanTokens: number;
}

/** Per-category summary: rates are totals over totals (long outputs weigh more), TTFT a median. */
export function summarize(t: EngineTotals): EngineRow {
  return {
    decodeTokPerS: t.decodeMs > 0 ? +((t.decodeTokens / t.decodeMs) * 1000).toFixed(1) : NaN,
    ttftMsMedian: +median(t.ttftMs).toFixed(1),
    tokensPerCall: t.modelCalls > 0 ? +(t.tokens / t.modelCalls).toFixed(2) : NaN,
    identicalShare: t.compared > 0 ? +(t.identical / t.compared).toFixed(2) : null,
    medianDivergeAt: t.divergeAt.length > 0 ? median(t.divergeAt) : null,
    samples: t.samples,
    meanTokens: t.samples > 0 ? +(t.tokens / t.samples).toFixed(1) : NaN,
  };
}

/** The order engines run in for prompt `i`: rotated so none always runs first (drift, caches). */
export function rotation<T>(items: readonly T[], i: number): T[] {
  const n = items.length;
  return items.map((_, j) => items[(j + i) % n]!);
}
