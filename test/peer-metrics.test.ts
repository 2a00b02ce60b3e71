import test from 'ava';
import {
  addSample,
  decodeTokPerS,
  emptyTotals,
  firstDivergence,
  lookupSample,
  parseLlamaLookup,
  rotation,
  sameText,
  sameTokens,
  summarize,
} from '../tools/peer-metrics.js';

test('decode rate counts only the tokens and time after the first chunk', (t) => {
  t.is(decodeTokPerS({ tokenCount: 11, firstChunkTokens: 1, ttftMs: 100, totalMs: 600 }), 20);
  t.is(decodeTokPerS({ tokenCount: 13, firstChunkTokens: 3, ttftMs: 100, totalMs: 600 }), 20);
  t.true(Number.isNaN(decodeTokPerS({ tokenCount: 1, firstChunkTokens: 1, ttftMs: 100, totalMs: 100 })));
});

test('first divergence is the first differing index, or the shorter length for a prefix', (t) => {
  t.is(firstDivergence([1, 2, 3], [1, 2, 3]), 3);
  t.is(firstDivergence([1, 2, 3], [1, 9, 3]), 1);
  t.is(firstDivergence([1, 2, 3], [1, 2]), 2);
  t.true(sameTokens([1, 2], [1, 2]));
  t.false(sameTokens([1, 2], [1, 2, 3]));
});

test('text that overshoots a length-cut reference still counts as identical, not when the reference ended on EOS', (t) => {
  t.true(sameText('abc', true, 'abcdef'));
  t.false(sameText('abc', false, 'abcdef'));
  t.true(sameText('abc', false, 'abc'));
  t.false(sameText('abc', true, 'abx'));
});

const LOOKUP_STDERR = `
main: llama threadpool init
encoded  412 tokens in    0.512 seconds, speed:  804.688 t/s
decoded  129 tokens in    2.580 seconds, speed:   50.000 t/s

n_draft      = 16
n_predict    = 129
n_drafted    = 240
t_draft_flat = 0.10 ms
t_draft      = 1.20 ms, 9.30 us per token, 107500.00 tokens per second
n_accept     = 60
accept       = 25.000%
`;

test('llama-lookup output parses into text, counts and timings', (t) => {
  const prompt = '<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n';
  const run = parseLlamaLookup(`\n\n${prompt}Hello there.<|im_end|>\n\n\n\n`, LOOKUP_STDERR, prompt, [
    '<|im_end|>',
    '<|endoftext|>',
  ]);
  t.is(run.text, 'Hello there.');
  t.true(run.endedOnEog);
  t.is(run.promptTokens, 412);
  t.is(run.predicted, 129);
  t.is(run.drafted, 240);
  t.is(run.accepted, 60);
  t.is(run.encodeMs, 512);
  t.is(run.decodeMs, 2580);
  const s = lookupSample(run);
  t.is(s.tokenCount, 128); // the sampled EOS is not a generated token
  t.is(s.modelCalls, 69); // each call yields its accepted drafts plus one
  t.is(s.ttftMs, 512);
  t.is(s.totalMs, 512 + 2580);
});

test('a lookup run cut by the limit keeps every token and its text', (t) => {
  const run = parseLlamaLookup('\n\nPROMPTabc\n\n', LOOKUP_STDERR, 'PROMPT', ['<|im_end|>']);
  t.is(run.text, 'abc');
  t.false(run.endedOnEog);
  t.is(lookupSample(run).tokenCount, 129);
});

test('category summaries divide totals by totals and report the identical share', (t) => {
  const totals = emptyTotals();
  addSample(
    totals,
    { tokens: [], tokenCount: 11, ttftMs: 100, totalMs: 600, firstChunkTokens: 1, modelCalls: 11 },
    true,
  );
  addSample(
    totals,
    { tokens: [], tokenCount: 21, ttftMs: 300, totalMs: 800, firstChunkTokens: 1, modelCalls: 10 },
    false,
    7,
  );
  const row = summarize(totals);
  t.is(row.decodeTokPerS, 30); // (10 + 20) tokens / (0.5 + 0.5) s
  t.is(row.ttftMsMedian, 200);
  t.is(row.tokensPerCall, 1.52); // 32 / 21
  t.is(row.identicalShare, 0.5);
  t.is(row.medianDivergeAt, 7);
  t.is(row.samples, 2);
});

test('rotation starts each prompt at a different engine and keeps every engine', (t) => {
  t.deepEqual(rotation(['a', 'b', 'c'], 0), ['a', 'b', 'c']);
  t.deepEqual(rotation(['a', 'b', 'c'], 1), ['b', 'c', 'a']);
  t.deepEqual(rotation(['a', 'b', 'c'], 4), ['b', 'c', 'a']);
});
