/**
 * The texts of log-probability entries for the wire (gRPC and HTTP alike): every chosen token and
 * every alternative decoded in one tokenizer call, in order.
 */
import type { TokenLogprob } from '../sampling/logprobs.js';

/** Texts of token ids, one per id (the service decodes them with the model's tokenizer). */
export type TokenTexts = (ids: readonly number[]) => string[];

export interface LogprobTexts {
  readonly text: string;
  /** One per `top` entry, in order. */
  readonly topTexts: readonly string[];
}

export function logprobTexts(entries: readonly TokenLogprob[], texts: TokenTexts): LogprobTexts[] {
  const ids: number[] = [];
  for (const e of entries) {
    ids.push(e.tokenId);
    for (const t of e.top) ids.push(t.tokenId);
  }
  const decoded = texts(ids);
  let k = 0;
  return entries.map((e) => ({ text: decoded[k++]!, topTexts: e.top.map(() => decoded[k++]!) }));
}
