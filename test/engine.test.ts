/**
 * The engine's round on a fake DecoderModel (no model, milliseconds): exactness of speculation
 * against plain decoding, the KV invariant across rewinds, the samples merge, the time limit,
 * cancellation's usage, the forward-cost plans and the validator's messages.
 */
import test from 'ava';
import {
  DEFAULT_SPECULATION,
  DRAFT_TOKENS_LIMIT,
  type GenerateRequest,
  type GenerationEvent,
  type GenerationFinal,
  NO_SPECULATION,
  PAPER_SPECULATION,
  type SpeculationOptions,
} from '../src/contract.js';
import { Engine } from '../src/engine/engine.js';
import { DEFER_MEASUREMENT, ForwardCostTable, MEASURE_NOW } from '../src/engine/forward-cost.js';
import { mergeSamples } from '../src/engine/merge-samples.js';
import { ENGINE_LIMITS, prepareGeneration, type RequestLimits } from '../src/engine/validate.js';
import { CancelledError, ContextOverflowError, InvalidRequestError } from '../src/errors.js';
import type { TokenLogprob } from '../src/sampling/logprobs.js';
import { GREEDY, type SamplingParams } from '../src/sampling/sampler.js';
import { FAKE_EOS, FakeDecoderModel, type FakeModelOptions, FakeTokenizer } from './support/fake-decoder-model.js';

/** A CPU-like table (index T = cost of a T-token forward relative to T = 1). */
const COST = [0, 1, 1.02, 1.15, 1.3, 1.42, 1.55, 1.68, 1.8, 1.93, 2.05, 2.2, 2.35, 2.5, 2.65, 2.8, 2.95, 3.1];
const PROMPT = { kind: 'text', text: 'w3 w9 w27 w4 w3 w9 w11' } as const;

function engine(options: FakeModelOptions = {}): { engine: Engine; model: FakeDecoderModel } {
  const model = new FakeDecoderModel(options);
  return { engine: new Engine(model, new FakeTokenizer(model.info.vocabSize), { mode: 'fixed', table: COST }), model };
}

interface Run {
  readonly text: string;
  readonly tokens: number[];
  readonly logprobs: TokenLogprob[];
  readonly byIndex: Map<number | undefined, number[]>;
  readonly deltas: number;
  readonly final: GenerationFinal;
}

async function collect(events: AsyncGenerator<GenerationEvent>): Promise<Run> {
  let text = '';
  const tokens: number[] = [];
  const logprobs: TokenLogprob[] = [];
  const byIndex = new Map<number | undefined, number[]>();
  let deltas = 0;
  let final: GenerationFinal | undefined;
  for await (const e of events) {
    if (e.type === 'final') {
      final = e;
      continue;
    }
    deltas++;
    text += e.text;
    tokens.push(...e.tokenIds);
    logprobs.push(...(e.logprobs ?? []));
    byIndex.set(e.index, [...(byIndex.get(e.index) ?? []), ...e.tokenIds]);
  }
  return { text, tokens, logprobs, byIndex, deltas, final: final! };
}

function request(speculation: SpeculationOptions, extra: Partial<GenerateRequest> = {}): GenerateRequest {
  return { prompt: PROMPT, maxNewTokens: 120, ignoreEos: true, speculation, ...extra };
}

const SAMPLED: SamplingParams = { temperature: 0.9, topK: 0, topP: 0.95, repetitionPenalty: 1, seed: 7 };

for (const [name, sampling] of [
  ['greedy', GREEDY],
  ['seeded sampling', SAMPLED],
  ['penalties and bias', { ...SAMPLED, repetitionPenalty: 1.3, presencePenalty: 0.4, logitBias: [[5, 2]] }],
] as const) {
  test(`speculative output equals plain output token for token (${name})`, async (t) => {
    const { engine: e } = engine();
    const plain = await collect(e.generate(request(NO_SPECULATION, { sampling })));
    t.is(plain.final.stats.draftRounds, 0);
    for (const speculation of [
      DEFAULT_SPECULATION,
      PAPER_SPECULATION,
      { ...PAPER_SPECULATION, draftTokensMax: DRAFT_TOKENS_LIMIT },
    ]) {
      const fast = await collect(e.generate(request(speculation, { sampling })));
      t.deepEqual(fast.tokens, plain.tokens, JSON.stringify(speculation));
      t.is(fast.text, plain.text);
      t.is(fast.final.completionTokens, 120);
    }
    // Not a tautology: the paper's fixed drafts were both accepted and rejected along the way.
    const paper = await collect(e.generate(request(PAPER_SPECULATION, { sampling })));
    t.true(paper.final.stats.draftTokensAccepted > 0, 'some drafts accepted');
    t.true(paper.final.stats.draftTokensAccepted < paper.final.stats.draftTokensProposed, 'some drafts rejected');
    t.true(paper.final.stats.rounds < 120, 'fewer forwards than tokens');
  });
}

test('logprobs and min_new_tokens do not change under speculation', async (t) => {
  const { engine: e } = engine();
  const extra = {
    sampling: { ...SAMPLED, repetitionPenalty: 1.2 },
    logprobs: { top: 3 },
    minNewTokens: 10,
    ignoreEos: false,
    maxNewTokens: 60,
  };
  const plain = await collect(e.generate(request(NO_SPECULATION, extra)));
  const fast = await collect(e.generate(request(PAPER_SPECULATION, extra)));
  t.deepEqual(fast.tokens, plain.tokens);
  t.deepEqual(fast.logprobs, plain.logprobs);
  t.is(plain.logprobs.length, plain.tokens.length);
  t.false(plain.tokens.slice(0, 10).includes(FAKE_EOS), 'EOS is suppressed before min_new_tokens');
});

test('rewinds leave the cache as a clean run would: each forward starts on exactly the committed tokens', async (t) => {
  const { engine: e, model } = engine();
  const prompt = new FakeTokenizer().encode(PROMPT.text);
  const r = await collect(e.generate(request(PAPER_SPECULATION)));
  t.true(
    r.final.stats.zeroAcceptRounds > 0 || r.final.stats.draftTokensAccepted < r.final.stats.draftTokensProposed,
    'some drafts were rewound',
  );
  const committed = [...prompt, ...r.tokens];
  const decode = model.forwards.filter((f) => f.kvBefore.length >= prompt.length - 1);
  t.is(decode.length, r.final.stats.rounds);
  for (const f of decode) {
    // KV = committed − 1 tokens, then [last committed, drafts].
    t.deepEqual(f.kvBefore, committed.slice(0, f.kvBefore.length));
    t.is(f.tokens[0], committed[f.kvBefore.length]);
  }
  // Resuming after a rewind equals a clean run: the same prefix on a fresh sequence gives the same output.
  const again = await collect(
    engine().engine.generate({
      ...request(NO_SPECULATION),
      prompt: { kind: 'tokens', tokenIds: committed.slice(0, prompt.length + 50) },
      maxNewTokens: 70,
    }),
  );
  t.deepEqual(again.tokens, r.tokens.slice(50));
});

test('samples: one final, deltas tagged by index, usage summed; sample i equals a single run with seed + i', async (t) => {
  for (const copyPrefix of [false, true]) {
    const { engine: e, model } = engine({ copyPrefix });
    const n = 3;
    const merged = await collect(e.generate(request(DEFAULT_SPECULATION, { sampling: SAMPLED, n, maxNewTokens: 40 })));
    t.deepEqual([...merged.byIndex.keys()].sort(), [0, 1, 2]);
    const final = merged.final;
    t.is(final.samples?.length, n);
    t.is(
      final.completionTokens,
      final.samples!.reduce((a, s) => a + s.completionTokens, 0),
    );
    t.is(final.completionTokens, merged.tokens.length);
    t.is(
      final.stats.rounds,
      final.samples!.reduce((a, s) => a + s.stats.rounds, 0),
    );
    t.deepEqual(
      final.samples!.map((s) => s.index),
      [0, 1, 2],
    );
    for (let i = 0; i < n; i++) {
      const single = await collect(
        e.generate(
          request(DEFAULT_SPECULATION, { sampling: { ...SAMPLED, seed: SAMPLED.seed + i }, maxNewTokens: 40 }),
        ),
      );
      t.deepEqual(merged.byIndex.get(i), single.tokens, `sample ${i}`);
      t.is(final.samples![i]!.completionTokens, single.final.completionTokens);
    }
    t.notDeepEqual(merged.byIndex.get(0), merged.byIndex.get(1), 'samples differ');
    // One prefill per sample, or one copied to the others.
    const prefills = model.forwards.filter((f) => f.kvBefore.length === 0).length;
    t.is(prefills, copyPrefix ? 1 + n : 2 * n);
  }
});

test('the samples merge: a cancelled sample ends all with the usage of every sample so far', async (t) => {
  async function* sample(tokens: number, fail: boolean): AsyncGenerator<GenerationEvent> {
    for (let i = 0; i < tokens; i++) yield { type: 'delta', text: 'x', tokenIds: [i] };
    if (fail) throw new CancelledError(new Error('stop'), { promptTokens: 4, completionTokens: tokens });
    // Still running when the other fails: the merge must stop it (return() at its next yield).
    for (;;) {
      await new Promise((resolve) => setTimeout(resolve, 5));
      yield { type: 'delta', text: 'y', tokenIds: [99] };
    }
  }
  const error = await t.throwsAsync(
    collect(mergeSamples([sample(3, false), sample(2, true)], 4, performance.now(), 1)),
    { instanceOf: CancelledError },
  );
  t.deepEqual(error.progress, { promptTokens: 4, completionTokens: 5 });
  t.is(error.message, 'stop');
});

// Serial (ava runs serial tests first, alone): the clock must not count the other tests' work.
test.serial('a time limit ends decoding with finish reason time_limit', async (t) => {
  const { engine: e } = engine({ forwardDelayMs: 10 });
  const r = await collect(e.generate(request(NO_SPECULATION, { timeLimitMs: 150, maxNewTokens: 1000 })));
  t.is(r.final.finishReason, 'time_limit');
  t.true(r.final.completionTokens > 0 && r.final.completionTokens < 100, String(r.final.completionTokens));
  t.is(r.final.completionTokens, r.tokens.length);
});

test('a cancelled generation reports its usage so far', async (t) => {
  const { engine: e } = engine({ forwardDelayMs: 1 });
  const controller = new AbortController();
  let received = 0;
  const error = await t.throwsAsync(
    (async () => {
      for await (const event of e.generate(request(PAPER_SPECULATION, { maxNewTokens: 500 }), controller.signal)) {
        if (event.type === 'delta') received += event.tokenIds.length;
        if (received >= 10) controller.abort(new Error('client went away'));
      }
    })(),
    { instanceOf: CancelledError },
  );
  t.is(error.message, 'client went away');
  t.deepEqual(error.progress, { promptTokens: 7, completionTokens: received });
  t.true(received >= 10 && received < 500);
});

test('EOS, a stop token and a stop sequence end the output; max_new_tokens cuts inside a round', async (t) => {
  const { engine: e } = engine();
  const free = await collect(e.generate(request(PAPER_SPECULATION, { maxNewTokens: 200 })));
  const stopToken = free.tokens[30]!;
  const first = free.tokens.indexOf(stopToken);
  const byToken = await collect(
    e.generate(request(PAPER_SPECULATION, { maxNewTokens: 200, stopTokenIds: [stopToken] })),
  );
  t.is(byToken.final.finishReason, 'eos_token');
  t.deepEqual(byToken.tokens, free.tokens.slice(0, first));
  const word = `w${free.tokens[40]} w${free.tokens[41]}`;
  const bySequence = await collect(
    e.generate(request(PAPER_SPECULATION, { maxNewTokens: 200, stopSequences: [word] })),
  );
  t.is(bySequence.final.finishReason, 'stop_sequence');
  t.is(bySequence.text, free.text.slice(0, free.text.indexOf(word)));
  const cut = await collect(e.generate(request(PAPER_SPECULATION, { maxNewTokens: 13 })));
  t.deepEqual(cut.tokens, free.tokens.slice(0, 13));
  t.is(cut.final.finishReason, 'length');
});

test('forward-cost plans: fixed is checked and known, defer waits for the first need, measuring happens once', async (t) => {
  const model = new FakeDecoderModel();
  t.throws(() => new ForwardCostTable(model, { mode: 'fixed', table: [0, 2, 3] }), {
    instanceOf: InvalidRequestError,
    message: /T = 1\.\.17 with cost\[1\] = 1/,
  });
  t.deepEqual(new ForwardCostTable(model, { mode: 'fixed', table: COST }).known, COST);
  const deferred = new ForwardCostTable(model, DEFER_MEASUREMENT);
  t.is(await deferred.settle(), undefined);
  t.is(model.forwards.length, 0, 'nothing measured');
  const [a, b] = await Promise.all([deferred.get(), deferred.get()]);
  t.is(a, b, 'one measurement');
  t.is(a.length, DRAFT_TOKENS_LIMIT + 2);
  t.is(a[1], 1);
  for (let i = 2; i < a.length; i++) t.true(a[i]! >= a[i - 1]!, 'monotone');
  t.is(deferred.known, a);
  const now = new ForwardCostTable(new FakeDecoderModel(), MEASURE_NOW);
  t.is((await now.settle())?.length, DRAFT_TOKENS_LIMIT + 2);
});

test('the validator: messages as clients see them, in the order they meet them', (t) => {
  const model = new FakeDecoderModel();
  const tokenizer = new FakeTokenizer();
  const base: GenerateRequest = { prompt: PROMPT, maxNewTokens: 10 };
  const limits = { maxNewTokensDefault: 32, maxNewTokensLimit: 64, sequenceSlots: 2 };
  const check = (r: Partial<GenerateRequest>, l: RequestLimits = limits) =>
    prepareGeneration(tokenizer, model.info, { ...base, ...r }, l);
  const cases: [Partial<GenerateRequest>, RegExp][] = [
    [{ sampling: { ...GREEDY, temperature: -0.5 } }, /^sampling\.temperature must be ≥ 0, got -0\.5$/],
    [{ sampling: { ...GREEDY, temperature: Number.NaN } }, /^sampling\.temperature/],
    [{ sampling: { ...GREEDY, topP: 0 } }, /^sampling\.top_p must be in \(0, 1\], got 0$/],
    [{ sampling: { ...GREEDY, topP: 1.5 } }, /^sampling\.top_p.*1\.5/],
    [{ sampling: { ...GREEDY, repetitionPenalty: 0 } }, /^sampling\.repetition_penalty must be > 0, got 0$/],
    [{ sampling: { ...GREEDY, repetitionPenalty: Number.POSITIVE_INFINITY } }, /^sampling\.repetition_penalty/],
    [{ maxNewTokens: 65 }, /^max_new_tokens must be an integer in \[1, 64\], got 65$/],
    [{ truncateInputTokens: -1 }, /^truncate_input_tokens must be a non-negative integer, got -1$/],
    [{ prompt: { kind: 'tokens', tokenIds: [1, 48] } }, /^prompt token id 48 is outside the vocabulary \[0, 48\)$/],
    [{ prompt: { kind: 'messages', messages: [] } }, /^chat prompt has no messages$/],
    [{ stopSequences: Array.from({ length: 17 }, (_, i) => `s${i}`) }, /^at most 16 stop sequences, got 17$/],
    [{ stopSequences: [''] }, /^stop sequences must be 1\.\.256 characters$/],
    [{ speculation: { ...DEFAULT_SPECULATION, ngramN: 1 } }, /^speculation n must be an integer in \[2, \d+\], got 1$/],
    [
      { speculation: { ...DEFAULT_SPECULATION, draftTokensMax: 17 } },
      /^speculation max draft tokens must be an integer in \[0, 16\], got 17$/,
    ],
    [{ logprobs: { top: 21 } }, /^logprobs\.top_logprobs must be an integer in \[0, 20\], got 21$/],
    [{ minNewTokens: 11 }, /^min_new_tokens must be an integer in \[0, max_new_tokens = 10\], got 11$/],
    [{ n: 9 }, /^n must be an integer in \[1, 8\], got 9$/],
    [{ timeLimitMs: 90_000_000 }, /^time_limit_ms must be an integer in \[0, 86400000\], got 90000000$/],
    [{ sampling: { ...GREEDY, minP: 1.5 } }, /^min_p must be in \[0, 1\], got 1\.5$/],
    [{ sampling: { ...GREEDY, presencePenalty: 3 } }, /^presence_penalty must be in \[-2, 2\], got 3$/],
    [
      {
        sampling: {
          ...GREEDY,
          logitBias: [
            [5, 1],
            [5, 2],
          ],
        },
      },
      /^logit_bias names token id 5 twice$/,
    ],
    [{ sampling: { ...GREEDY, logitBias: [[5, 101]] } }, /^logit_bias for token 5 must be in \[-100, 100\], got 101$/],
    [{ n: 3 }, /^n = 3 samples need as many sequence slots; this server has 2 \(ModelInfo\.max_active_sequences\)$/],
    // Order: sampling before max_new_tokens before the prompt.
    [
      { sampling: { ...GREEDY, topP: 2 }, maxNewTokens: 65, prompt: { kind: 'tokens', tokenIds: [99] } },
      /^sampling\.top_p/,
    ],
    [{ maxNewTokens: 65, prompt: { kind: 'tokens', tokenIds: [99] } }, /^max_new_tokens/],
  ];
  for (const [r, message] of cases)
    t.throws(() => check(r), { instanceOf: InvalidRequestError, message }, message.source);
  t.throws(() => check({ prompt: { kind: 'tokens', tokenIds: new Array(4090).fill(3) } }), {
    instanceOf: ContextOverflowError,
    message: /^prompt of 4090 tokens plus max_new_tokens 10 exceeds the context of 4096 tokens$/,
  });
  // Defaults and limits: 0 takes the server's default; without server limits, the engine's own.
  t.is(check({ maxNewTokens: 0 }).request.maxNewTokens, 32);
  t.throws(() => check({ maxNewTokens: 0 }, ENGINE_LIMITS), {
    message: /^max_new_tokens must be an integer in \[1, 8192\], got 0$/,
  });
  const ok = check({ prompt: { kind: 'tokens', tokenIds: [3, 4, 5, 6] }, truncateInputTokens: 2 });
  t.deepEqual(ok.promptTokens, [5, 6], 'left truncation');
  t.is(ok.request.maxNewTokens, 10);
});
