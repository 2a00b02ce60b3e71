/** What the gRPC and HTTP soaks share: a seeded PRNG, the prompts they send, a sleep. */

/** Small deterministic PRNG (mulberry32): a soak is repeatable for a given seed. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export const SOAK_PROMPTS = [
  'List the planets of the solar system with one fact about each.',
  'Write a Python function that reverses a linked list, then explain it.',
  'Count from one to forty in words, separated by commas.',
  'Explain how a hash map works, step by step.',
  'Repeat after me three times: the quick brown fox jumps over the lazy dog.',
  'Describe the water cycle for a ten-year-old.',
];

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Each tenant's documents (its system prompts, its files): prompts of one tenant share heads. */
const VARIED_DOCUMENTS_PER_TENANT = 3;

/** Tenants of the varied soak: more than the engine's draft-pool scopes, so whole scopes are evicted too. */
export const VARIED_SOAK_TENANTS = 24;

/**
 * A varied prompt for the cache soak (issue 34): a tenant's salt (of VARIED_SOAK_TENANTS), one of
 * its VARIED_DOCUMENTS_PER_TENANT `documents` as a shared head (prefix-cache hits within a tenant, and pool text), then a question
 * with random numbers and words, so no two prompts are the same and the caches keep filling,
 * hitting and evicting.
 */
export function variedSoakPrompt(
  random: () => number,
  documents: readonly string[],
): { readonly content: string; readonly salt: string } {
  const pick = <T>(items: readonly T[]): T => items[Math.floor(random() * items.length)]!;
  const tenant = Math.floor(random() * VARIED_SOAK_TENANTS);
  const words = Array.from({ length: 3 + Math.floor(random() * 12) }, () => pick(VARIED_WORDS)).join(' ');
  const n = Math.floor(random() * 1_000_000);
  return {
    salt: `tenant-${tenant}`,
    content: `${documents[(tenant * VARIED_DOCUMENTS_PER_TENANT + Math.floor(random() * VARIED_DOCUMENTS_PER_TENANT)) % documents.length]}\n\nQuestion ${n}: ${pick(VARIED_QUESTIONS)} Keywords: ${words}.`,
  };
}

const VARIED_QUESTIONS = [
  'Summarize the text above in two sentences.',
  'What is the main point of the text above?',
  'List three facts from the text above.',
  'Rewrite the first paragraph above more simply.',
  'Which names appear in the text above?',
];
const VARIED_WORDS = ['river', 'cache', 'orbit', 'lattice', 'amber', 'signal', 'harbor', 'vector', 'meadow', 'quartz'];
