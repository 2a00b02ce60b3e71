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
