/**
 * Structured output (issue 31) on the real default model: every constrained output parses and
 * validates against its schema (ajv), plain and ANPD, greedy and seeded sampling, with the grammar's
 * forced text drafted and without; constrained ANPD equals constrained plain token for token, with
 * drafts both accepted and rejected; the grammar's rollback is load-bearing (a matcher that forgets
 * to roll back is caught); bad formats get INVALID_ARGUMENT naming what is wrong, over gRPC.
 */
import { status as GrpcStatus } from '@grpc/grpc-js';
import { Ajv } from 'ajv';
import test from 'ava';
import { GrammarMatcher } from '../src/constrain/grammar.js';
import {
  DEFAULT_SPECULATION,
  type GenerationFinal,
  NO_SPECULATION,
  type ResponseFormat,
  type SpeculationOptions,
} from '../src/contract.js';
import { createEngine } from '../src/engine/create-engine.js';
import type { Engine } from '../src/engine/engine.js';
import { GREEDY, type SamplingParams } from '../src/sampling/sampler.js';
import { convertedVariant, defaultEngine, TEST_FORWARD_COST } from './support/default-model.js';
import { collectStream, grpcError, joinChunks, lazyTestServer } from './support/grpc-server.js';

interface Case {
  readonly name: string;
  readonly prompt: string;
  readonly schema: Record<string, unknown>;
}

const CASES: readonly Case[] = [
  {
    name: 'person',
    prompt:
      'Extract the person as JSON: Marie is a 34 year old chemist from Paris who loves climbing, chess and cooking.',
    schema: {
      type: 'object',
      properties: {
        name: { type: 'string', maxLength: 40 },
        age: { type: 'integer', minimum: 0, maximum: 150 },
        city: { type: 'string', enum: ['Paris', 'Berlin', 'Tokyo'] },
        hobbies: { type: 'array', items: { type: 'string', maxLength: 30 }, maxItems: 3 },
      },
      required: ['name', 'age', 'city', 'hobbies'],
    },
  },
  {
    name: 'nested-anyof',
    prompt: 'Describe the order as JSON: two coffees at 3.50 each, paid by card, for table 7.',
    schema: {
      type: 'object',
      properties: {
        table: { type: 'integer' },
        items: {
          type: 'array',
          minItems: 1,
          maxItems: 3,
          items: {
            type: 'object',
            properties: {
              product: { type: 'string', maxLength: 30 },
              quantity: { type: 'integer' },
              price: { type: 'number' },
            },
            required: ['product', 'quantity', 'price'],
          },
        },
        payment: { anyOf: [{ type: 'string', enum: ['card', 'cash'] }, { type: 'null' }] },
      },
      required: ['table', 'items', 'payment'],
    },
  },
  {
    name: 'classification',
    prompt:
      'Classify the sentiment of this review as JSON: "The battery died after two days and support never answered."',
    schema: {
      type: 'object',
      properties: {
        sentiment: { enum: ['positive', 'neutral', 'negative'] },
        confidence: { type: 'number', minimum: 0, maximum: 1 },
      },
      required: ['sentiment', 'confidence'],
    },
  },
  {
    name: 'pattern',
    prompt: 'Give the meeting as JSON: the design review is on March 3rd 2025, call +1 555 0100 to join.',
    schema: {
      type: 'object',
      properties: {
        title: { type: 'string', maxLength: 40 },
        date: { type: 'string', pattern: '^[0-9]{4}-[0-9]{2}-[0-9]{2}$' },
        phone: { type: 'string', pattern: '^\\+[0-9 ]{6,15}$' },
      },
      required: ['title', 'date', 'phone'],
    },
  },
];

const MAX_NEW_TOKENS = 200;
const SAMPLED: SamplingParams = { ...GREEDY, temperature: 0.8, topP: 0.95, seed: 11 };

async function generate(
  engine: Engine,
  prompt: string,
  responseFormat: ResponseFormat,
  speculation: SpeculationOptions,
  sampling: SamplingParams = GREEDY,
) {
  const tokens: number[] = [];
  let text = '';
  let final: GenerationFinal | undefined;
  for await (const e of engine.generate({
    prompt: { kind: 'text', text: prompt, chat: true },
    maxNewTokens: MAX_NEW_TOKENS,
    speculation,
    sampling,
    responseFormat,
  })) {
    if (e.type === 'delta') {
      tokens.push(...e.tokenIds);
      text += e.text;
    } else final = e;
  }
  return { tokens, text, final: final! };
}

const NO_FORCED: SpeculationOptions = { ...DEFAULT_SPECULATION, forcedDrafts: false };

test.serial(
  'constrained outputs validate against their schemas, and constrained ANPD (with and without forced drafts) equals constrained plain, greedy and sampled, with drafts accepted and rejected',
  async (t) => {
    const engine = await defaultEngine();
    const ajv = new Ajv({ strict: false });
    let accepted = 0;
    let rejected = 0;
    let forcedAccepted = 0;
    for (const c of CASES) {
      const format: ResponseFormat = { type: 'json_schema', schema: JSON.stringify(c.schema) };
      const validate = ajv.compile(c.schema);
      for (const [label, sampling] of [
        ['greedy', GREEDY],
        ['sampled', SAMPLED],
      ] as const) {
        const plain = await generate(engine, c.prompt, format, NO_SPECULATION, sampling);
        t.is(
          plain.final.finishReason,
          'eos_token',
          `${c.name} ${label}: the JSON completes within ${MAX_NEW_TOKENS} tokens`,
        );
        let parsed: unknown;
        t.notThrows(() => (parsed = JSON.parse(plain.text)), `${c.name} ${label}: ${plain.text}`);
        t.true(validate(parsed), `${c.name} ${label}: ${plain.text} ${ajv.errorsText(validate.errors)}`);
        for (const [spec, specLabel] of [
          [DEFAULT_SPECULATION, 'anpd'],
          [NO_FORCED, 'anpd without forced drafts'],
        ] as const) {
          const anpd = await generate(engine, c.prompt, format, spec, sampling);
          t.deepEqual(anpd.tokens, plain.tokens, `${c.name} ${label} ${specLabel}`);
          t.is(anpd.final.finishReason, plain.final.finishReason);
          const s = anpd.final.stats;
          accepted += s.draftTokensAccepted;
          rejected += s.draftTokensProposed - s.draftTokensAccepted;
          if (spec === DEFAULT_SPECULATION) forcedAccepted += s.draftTokensAccepted;
          t.true(s.rounds < plain.final.stats.rounds || s.draftTokensAccepted === 0);
        }
      }
    }
    t.true(accepted > 0, 'drafts were accepted');
    t.true(rejected > 0, 'drafts were rejected');
    t.true(forcedAccepted > 0);
    t.log(`draft tokens accepted ${accepted}, rejected ${rejected}`);
  },
);

test.serial('json_object, regex and grammar formats hold, plain and ANPD alike', async (t) => {
  const engine = await defaultEngine();
  const formats: [ResponseFormat, (text: string) => boolean][] = [
    [{ type: 'json_object' }, (s) => typeof JSON.parse(s) === 'object'],
    [{ type: 'regex', pattern: '[A-Z][a-z]+, [0-9]{5}' }, (s) => /^[A-Z][a-z]+, [0-9]{5}$/.test(s)],
    [
      { type: 'grammar', ebnf: 'root ::= ("yes" | "no") ", because " [a-z ]{1,30} "."' },
      (s) => /^(yes|no), because [a-z ]{1,30}\.$/.test(s),
    ],
  ];
  for (const [format, holds] of formats) {
    const prompt = 'Is Paris the capital of France? Answer and give the postcode of a city.';
    const plain = await generate(engine, prompt, format, NO_SPECULATION);
    const anpd = await generate(engine, prompt, format, DEFAULT_SPECULATION);
    t.deepEqual(anpd.tokens, plain.tokens, format.type);
    if (plain.final.finishReason === 'eos_token') t.true(holds(plain.text), `${format.type}: ${plain.text}`);
    else t.is(plain.final.finishReason, 'constraint_incomplete', `${format.type}: ${plain.text}`);
  }
});

test.serial(
  'running out of max_new_tokens before the JSON closes ends with constraint_incomplete, not length',
  async (t) => {
    const engine = await defaultEngine();
    const c = CASES[0]!;
    const tokens: number[] = [];
    let final: GenerationFinal | undefined;
    for await (const e of engine.generate({
      prompt: { kind: 'text', text: c.prompt, chat: true },
      maxNewTokens: 8,
      responseFormat: { type: 'json_schema', schema: JSON.stringify(c.schema) },
    }))
      if (e.type === 'delta') tokens.push(...e.tokenIds);
      else final = e;
    t.is(final!.finishReason, 'constraint_incomplete');
    t.is(tokens.length, 8);
  },
);

test.serial(
  'a matcher that forgets to roll back rejected drafts is caught (the rollback is load-bearing)',
  async (t) => {
    const engine = await defaultEngine();
    const original = GrammarMatcher.prototype.rollback;
    const c = CASES[1]!;
    const format: ResponseFormat = { type: 'json_schema', schema: JSON.stringify(c.schema) };
    const plain = await generate(engine, c.prompt, format, NO_SPECULATION);
    GrammarMatcher.prototype.rollback = (): void => {};
    try {
      const outcome = await generate(engine, c.prompt, format, DEFAULT_SPECULATION).then(
        (r) => r.tokens.join(','),
        (error: unknown) => `threw ${(error as Error).message}`,
      );
      t.not(outcome, plain.tokens.join(','));
    } finally {
      GrammarMatcher.prototype.rollback = original;
    }
    const again = await generate(engine, c.prompt, format, DEFAULT_SPECULATION);
    t.deepEqual(again.tokens, plain.tokens);
  },
);

const server = lazyTestServer({ maxActive: 4, maxQueued: 8 });

test.serial(
  'over gRPC: response_format.json_schema gives schema-valid JSON; bad formats get INVALID_ARGUMENT naming what is wrong',
  async (t) => {
    const client = (await server()).client();
    const c = CASES[2]!;
    const ok = joinChunks(
      await collectStream(
        client.generateStream({
          request_id: 'j',
          messages: { messages: [{ role: 'user', content: c.prompt }] },
          stopping: { max_new_tokens: 60 },
          response_format: { json_schema: { schema: JSON.stringify(c.schema) } },
        }),
      ),
    );
    t.true(new Ajv({ strict: false }).validate(c.schema, JSON.parse(ok.text)), ok.text);
    const bad: [object, RegExp][] = [
      [
        { json_schema: { schema: '{"type": "object", "properties": ' } },
        /response_format\.json_schema\.schema is not JSON/,
      ],
      [{ json_schema: { schema: '{"type": "foo"}' } }, /response_format\.json_schema\.schema: .*foo/],
      [{ grammar: 'root ::= missing_rule' }, /response_format\.grammar: .*missing_rule/],
      [{ regex: '' }, /response_format\.regex is empty/],
    ];
    for (const [response_format, message] of bad) {
      const error = await grpcError(
        client.generate(
          { request_id: 'b', text: 'x', stopping: { max_new_tokens: 4 }, response_format },
          { deadlineMs: 30_000 },
        ),
      );
      t.is(error.code, GrpcStatus.INVALID_ARGUMENT, JSON.stringify(response_format));
      t.regex(error.details, message);
    }
    const combined = await grpcError(
      client.generate({
        request_id: 'c',
        text: 'x',
        stopping: { max_new_tokens: 4, ignore_eos: true },
        response_format: { json_object: {} },
      }),
    );
    t.is(combined.code, GrpcStatus.INVALID_ARGUMENT);
    t.regex(combined.details, /ignore_eos/);
  },
);

test.serial(
  'on the emulated device path (float16 graph, the argmax on the device for unconstrained greedy), constrained requests bring the logits rows back and hold the same guarantees',
  async (t) => {
    const dir = await convertedVariant({ dtype: 'float16' });
    const engine = await createEngine(
      dir,
      { executionProvider: 'cpu', intraOpThreads: 0, kvCapacity: 1024, experimental: { deviceRun: 'emulate' } },
      { forwardCost: { mode: 'fixed', table: TEST_FORWARD_COST } },
    );
    try {
      const ajv = new Ajv({ strict: false });
      for (const c of [CASES[0]!, CASES[2]!]) {
        const format: ResponseFormat = { type: 'json_schema', schema: JSON.stringify(c.schema) };
        const plain = await generate(engine, c.prompt, format, NO_SPECULATION);
        const anpd = await generate(engine, c.prompt, format, DEFAULT_SPECULATION);
        t.deepEqual(anpd.tokens, plain.tokens, c.name);
        t.is(plain.final.finishReason, 'eos_token', plain.text);
        t.true(ajv.validate(c.schema, JSON.parse(plain.text)), plain.text);
      }
    } finally {
      await engine.dispose();
    }
  },
);
