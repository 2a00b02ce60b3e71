/**
 * The headline guarantee: n-gram speculative decoding gives token-for-token the output of plain
 * decoding on the real default model, over varied prompts, while actually speculating.
 */
import test from 'ava';
import {
  DEFAULT_SPECULATION,
  type GenerateRequest,
  type GenerationFinal,
  NO_SPECULATION,
  PAPER_SPECULATION,
  type SpeculationOptions,
} from '../src/contract.js';
import type { Engine } from '../src/engine/engine.js';
import { defaultEngine } from './support/default-model.js';
import { categoryOf, exactnessPrompts } from './support/prompt-set.js';

const PROMPTS = exactnessPrompts();
const MAX_NEW_TOKENS = 96;

async function generate(
  engine: Engine,
  prompt: string,
  speculation: SpeculationOptions,
  extra: Partial<GenerateRequest> = {},
) {
  const tokens: number[] = [];
  let text = '';
  let final: GenerationFinal | undefined;
  for await (const e of engine.generate({
    prompt: { kind: 'text', text: prompt, chat: true },
    maxNewTokens: MAX_NEW_TOKENS,
    speculation,
    ...extra,
  })) {
    if (e.type === 'delta') {
      tokens.push(...e.tokenIds);
      text += e.text;
    } else final = e;
  }
  return { tokens, text, final: final! };
}

function firstDivergence(a: readonly number[], b: readonly number[]): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? -1 : n;
}

test('there are at least 30 varied exactness prompts', (t) => {
  t.true(PROMPTS.length >= 30, `${PROMPTS.length} prompts`);
  t.is(new Set(PROMPTS.map((p) => p.id)).size, PROMPTS.length);
});

test.serial(
  'adaptive n-gram speculation reproduces plain greedy decoding token for token, and speculates on copy-heavy prompts',
  async (t) => {
    const engine = await defaultEngine();
    const byCategory = new Map<string, { tokens: number; rounds: number; accepted: number; rejected: number }>();
    let mismatches = 0;
    for (const p of PROMPTS) {
      const plain = await generate(engine, p.prompt, NO_SPECULATION);
      const fast = await generate(engine, p.prompt, DEFAULT_SPECULATION);
      t.true(plain.tokens.length > 0, `${p.id}: plain decoding produced no tokens`);
      const at = firstDivergence(plain.tokens, fast.tokens);
      if (at !== -1) mismatches++;
      t.is(at, -1, `${p.id}: first divergence at token ${at}`);
      t.is(fast.text, plain.text, p.id);
      t.is(fast.final.finishReason, plain.final.finishReason, p.id);
      t.is(plain.final.stats.draftTokensProposed, 0);
      const c = byCategory.get(categoryOf(p.id)) ?? { tokens: 0, rounds: 0, accepted: 0, rejected: 0 };
      c.tokens += fast.final.completionTokens;
      c.rounds += fast.final.stats.rounds;
      c.accepted += fast.final.stats.draftTokensAccepted;
      c.rejected += fast.final.stats.draftTokensProposed - fast.final.stats.draftTokensAccepted;
      byCategory.set(categoryOf(p.id), c);
    }
    const tau = (c: string) => byCategory.get(c)!.tokens / byCategory.get(c)!.rounds;
    t.log(
      Object.fromEntries(
        [...byCategory].map(([c, s]) => [c, { tau: +tau(c).toFixed(2), accepted: s.accepted, rejected: s.rejected }]),
      ),
    );
    t.is(mismatches, 0);
    // Every category both keeps and throws away drafted tokens on the real model: the multi-row
    // verify and the KV rollback are each exercised, not only the happy path.
    for (const [category, c] of byCategory) {
      t.true(c.accepted > 0, `${category}: no draft token was accepted`);
      t.true(c.rejected > 0, `${category}: no draft token was rejected, so the rollback path never ran`);
    }
    // A drafter that never drafts gives τ ≤ 1; copy-heavy prompts must do much better.
    t.true(tau('code-editing') > 1.5, `code-editing τ = ${tau('code-editing')}`);
    t.true(tau('summarization') > 1.5, `summarization τ = ${tau('summarization')}`);
  },
);

test.serial('the paper setting (N = 5, K = 7, ungated tables) is exact as well', async (t) => {
  const engine = await defaultEngine();
  for (const p of PROMPTS.filter((_, i) => i % 4 === 0)) {
    const plain = await generate(engine, p.prompt, NO_SPECULATION);
    const paper = await generate(engine, p.prompt, PAPER_SPECULATION);
    t.is(firstDivergence(plain.tokens, paper.tokens), -1, p.id);
    t.true(paper.final.stats.draftTokensProposed > 0 || paper.final.completionTokens < 8, `${p.id} drafted nothing`);
  }
});

/** Drafted tokens the verifier kept and threw away, summed over a setting's prompts. */
function draftOutcome(final: GenerationFinal): { accepted: number; rejected: number } {
  return {
    accepted: final.stats.draftTokensAccepted,
    rejected: final.stats.draftTokensProposed - final.stats.draftTokensAccepted,
  };
}

test.serial('speculative sampling gives the same tokens as plain sampling for the same seed', async (t) => {
  const engine = await defaultEngine();
  const settings = [
    { temperature: 0.7, topK: 0, topP: 1, repetitionPenalty: 1 },
    { temperature: 1.0, topK: 40, topP: 0.9, repetitionPenalty: 1.1 },
  ];
  for (const [s, setting] of settings.entries()) {
    let accepted = 0;
    let rejected = 0;
    for (const [i, p] of PROMPTS.filter((_, i) => i % 5 === 1).entries()) {
      const sampling = { ...setting, seed: (s === 0 ? 11 : 99) + i };
      const plain = await generate(engine, p.prompt, NO_SPECULATION, { sampling });
      const fast = await generate(engine, p.prompt, DEFAULT_SPECULATION, { sampling });
      t.true(plain.tokens.length > 0, `${p.id}: no tokens`);
      t.is(firstDivergence(plain.tokens, fast.tokens), -1, `${p.id} ${JSON.stringify(sampling)}`);
      const outcome = draftOutcome(fast.final);
      accepted += outcome.accepted;
      rejected += outcome.rejected;
    }
    // Without these the test would pass with drafting switched off under sampling.
    t.log(`${JSON.stringify(setting)}: ${accepted} draft tokens accepted, ${rejected} rejected`);
    t.true(accepted > 0, `${JSON.stringify(setting)}: no draft token was accepted`);
    t.true(rejected > 0, `${JSON.stringify(setting)}: no draft token was rejected`);
  }
});

/**
 * Mild penalties on copy-heavy prompts: there drafts are still accepted, so the rows after an
 * accepted draft prefix are verified under the penalty (at 1.3 the model stops copying: 1–2 draft
 * tokens accepted in all, and a verifier that skipped the penalty on those rows passed).
 */
const PENALTY_PROMPTS = PROMPTS.filter((p) => ['code-editing', 'summarization'].includes(categoryOf(p.id))).filter(
  (_, i) => i % 2 === 0,
);
const PENALTY_ACCEPTED_MIN = 20;

test.serial(
  'a repetition penalty applies to every verified row and sees the accepted draft prefix, so greedy output with a penalty stays exact',
  async (t) => {
    const engine = await defaultEngine();
    for (const repetitionPenalty of [1.05, 1.15]) {
      const sampling = { temperature: 0, topK: 0, topP: 1, repetitionPenalty, seed: 0 };
      let accepted = 0;
      let rejected = 0;
      for (const p of PENALTY_PROMPTS) {
        const plain = await generate(engine, p.prompt, NO_SPECULATION, { sampling });
        const fast = await generate(engine, p.prompt, { ...DEFAULT_SPECULATION, draftLength: 'fixed' }, { sampling });
        t.true(plain.tokens.length > 0, `${p.id}: no tokens`);
        t.is(firstDivergence(plain.tokens, fast.tokens), -1, `${p.id} (repetition penalty ${repetitionPenalty})`);
        const outcome = draftOutcome(fast.final);
        accepted += outcome.accepted;
        rejected += outcome.rejected;
      }
      t.log(`repetition penalty ${repetitionPenalty}: ${accepted} draft tokens accepted, ${rejected} rejected`);
      t.true(
        accepted >= PENALTY_ACCEPTED_MIN,
        `repetition penalty ${repetitionPenalty}: only ${accepted} draft tokens accepted, too few to exercise the penalty on verified rows`,
      );
      t.true(rejected > 0, `repetition penalty ${repetitionPenalty}: no draft token was rejected`);
    }
  },
);

test.serial(
  'stop sequences and max_new_tokens cut inside a verified chunk exactly where plain decoding stops',
  async (t) => {
    const engine = await defaultEngine();
    const p = PROMPTS.find((x) => x.id.startsWith('code-editing'))!;
    const plain = await generate(engine, p.prompt, NO_SPECULATION);
    // Pick a stop string from the middle of the plain output and token limits at every length.
    const stop = plain.text.slice(Math.floor(plain.text.length / 2), Math.floor(plain.text.length / 2) + 6);
    const a = await generate(engine, p.prompt, NO_SPECULATION, { stopSequences: [stop] });
    const b = await generate(
      engine,
      p.prompt,
      { ...DEFAULT_SPECULATION, draftLength: 'fixed' },
      { stopSequences: [stop] },
    );
    t.is(b.text, a.text);
    t.deepEqual(b.tokens, a.tokens);
    t.is(b.final.finishReason, 'stop_sequence');
    for (const limit of [1, 2, 3, 5, 8, 13, 21]) {
      const x = await generate(
        engine,
        p.prompt,
        { ...DEFAULT_SPECULATION, draftLength: 'fixed' },
        { maxNewTokens: limit },
      );
      t.deepEqual(x.tokens, plain.tokens.slice(0, limit), `max_new_tokens ${limit}`);
    }
  },
);

test.serial(
  'speculative sampling draws next tokens from the same distribution as plain sampling (two-sample chi-square)',
  async (t) => {
    const engine = await defaultEngine();
    // A repetitive prompt makes the n-gram drafter propose tokens the sampler sometimes picks.
    const prompt = engine.tokenizer.encode(
      'one, two, three, four, one, two, three, four, one, two, three, four, one, two,',
      { addSpecialTokens: false },
    );
    const samples = 300;
    const positions = 3;
    const collect = async (mode: 'off' | 'ngram', seedBase: number) => {
      const counts = Array.from({ length: positions }, () => new Map<number, number>());
      let drafted = 0;
      let accepted = 0;
      for (let s = 0; s < samples; s++) {
        const tokens: number[] = [];
        for await (const e of engine.generate({
          prompt: { kind: 'tokens', tokenIds: prompt },
          maxNewTokens: positions,
          ignoreEos: true,
          sampling: { temperature: 0.8, topK: 0, topP: 1, repetitionPenalty: 1, seed: seedBase + s },
          speculation: { mode, ngramN: 5, draftTokensMax: 3, draftLength: 'fixed', drafter: 'paper' },
        })) {
          if (e.type === 'delta') tokens.push(...e.tokenIds);
          else {
            drafted += e.stats.draftTokensProposed;
            accepted += e.stats.draftTokensAccepted;
          }
        }
        tokens.forEach((tok, p) => counts[p]!.set(tok, (counts[p]!.get(tok) ?? 0) + 1));
      }
      return { counts, drafted, accepted };
    };
    const plain = await collect('off', 1);
    const fast = await collect('ngram', 100_000); // different seeds: a real distributional comparison
    t.true(fast.drafted > 0 && fast.accepted > 0, `drafted ${fast.drafted}, accepted ${fast.accepted}`);
    for (let p = 0; p < positions; p++) {
      // Categories with enough mass; the rest pooled.
      const keys = new Set([...plain.counts[p]!.keys(), ...fast.counts[p]!.keys()]);
      let stat = 0;
      let categories = 0;
      let restA = 0;
      let restB = 0;
      for (const k of keys) {
        const a = plain.counts[p]!.get(k) ?? 0;
        const b = fast.counts[p]!.get(k) ?? 0;
        if (a + b >= 10) {
          stat += (a - b) ** 2 / (a + b);
          categories++;
        } else {
          restA += a;
          restB += b;
        }
      }
      if (restA + restB > 0) {
        stat += (restA - restB) ** 2 / (restA + restB);
        categories++;
      }
      const dof = Math.max(1, categories - 1);
      // Wilson–Hilferty approximation of the chi-square quantile at p = 0.001 (z = 3.09).
      const critical = dof * (1 - 2 / (9 * dof) + 3.09 * Math.sqrt(2 / (9 * dof))) ** 3;
      t.true(categories >= 2, `position ${p}: the distribution should not be degenerate`);
      t.true(stat < critical, `position ${p}: chi-square ${stat.toFixed(1)} ≥ ${critical.toFixed(1)} (dof ${dof})`);
    }
  },
);
