/**
 * The device path (src/runtime/device-decoder.ts, native/device.c) without a GPU: deviceRun
 * 'emulate' runs the same code — device buffers, fixed-row forwards, in-place KV sets, the logits
 * read back by row — on ORT's CPU provider with host memory standing in for the device. On a GPU
 * the same path runs on CUDA with graphs (bench/gpu/h200-run.sh; docs/gpu.md), which CI cannot do.
 * Also the float16 graph (--dtype float16, what CUDA runs) and the engine keeping drafts within
 * the runtime's exact forward size.
 */
import { readFileSync } from 'node:fs';
import test, { type ExecutionContext } from 'ava';
import { createEngine } from '../src/engine/create-engine.js';
import { DEFAULT_SPECULATION, NO_SPECULATION, type SpeculationOptions } from '../src/contract.js';
import type { Engine } from '../src/engine/engine.js';
import type { BatchExecutor } from '../src/runtime/types.js';
import { toHalfBits } from '../src/convert/decoder-graph.js';
import { loadDecoderModel } from '../src/runtime/load-model.js';
import { DeviceSession, nativeAddon } from '../src/runtime/native-run.js';
import { DeviceDecoderModel, PREFILL_SHAPES, prefillShape } from '../src/runtime/device-decoder.js';
import type { PagedDecoderModel } from '../src/runtime/device-paged.js';
import { DEVICE_FORWARD_ROWS } from '../src/runtime/runtime-plan.js';
import { StepScheduler } from '../src/schedule/step-scheduler.js';
import { generateOnce } from '../tools/generate-once.js';
import { argmax } from '../src/sampling/sampler.js';
import { convertedVariant, defaultModelDir, TEST_FORWARD_COST } from './support/default-model.js';
import { compareWithReference, NEAR_TIE_GAP, readReference } from './support/greedy-reference.js';
import { exactnessPrompts } from './support/prompt-set.js';

const EMULATE = {
  executionProvider: 'cpu',
  intraOpThreads: 0,
  kvCapacity: 1024,
  experimental: { deviceRun: 'emulate' },
} as const;
/** Reference cases checked here (the full set runs in greedy-reference.test.ts on the default runner). */
const REFERENCE_CASES = 6;

test('toHalfBits rounds to the nearest binary16, ties to even, with subnormals, infinities and NaN', (t) => {
  const cases: [number, number][] = [
    [0, 0x0000],
    [-0, 0x8000],
    [1, 0x3c00],
    [-2, 0xc000],
    [0.1, 0x2e66],
    [65504, 0x7bff],
    [65520, 0x7c00],
    [1e9, 0x7c00],
    [-Infinity, 0xfc00],
    [2 ** -24, 0x0001],
    [2 ** -25, 0x0000],
    [3 * 2 ** -26, 0x0001],
    [2 ** -14, 0x0400],
    [1 + 2 ** -11, 0x3c00],
    [1 + 3 * 2 ** -11, 0x3c02],
    [1 + 2 ** -10, 0x3c01],
    [0.333251953125, 0x3555],
  ];
  for (const [x, bits] of cases) t.is(toHalfBits(x), bits, `toHalfBits(${x})`);
  t.is(toHalfBits(NaN) & 0x7e00, 0x7e00);
});

test.serial(
  'the addon: device buffers are zeroed, bounds-checked, owned by their session, and refuse use after free or after their session is released',
  (t) => {
    const addon = nativeAddon();
    if (addon === null) return t.fail('the native addon is not built (the CI builds it: npm run build)');
    return defaultModelDir().then((dir) => {
      const session = new DeviceSession(addon, `${dir}/model.onnx`, { target: 'host', intraOpThreads: 1 });
      const other = new DeviceSession(addon, `${dir}/model.onnx`, { target: 'host', intraOpThreads: 1 });
      try {
        const buffer = session.alloc(32);
        const back = new Int32Array(8);
        session.read(buffer, 0, back);
        t.deepEqual([...back], [0, 0, 0, 0, 0, 0, 0, 0]);
        session.write(buffer, 8, new Int32Array([7, 8]));
        session.read(buffer, 0, back);
        t.deepEqual([...back], [0, 0, 7, 8, 0, 0, 0, 0]);
        t.throws(() => session.write(buffer, 28, new Int32Array(2)), { message: /outside the device buffer/ });
        t.throws(() => session.read(buffer, -4, back), { message: /outside the device buffer/ });
        t.throws(() => other.read(buffer, 0, back), { message: /another session/ });
        session.free(buffer);
        t.throws(() => session.read(buffer, 0, back), { message: /freed/ });
        t.throws(() => session.alloc(0), { message: /positive/ });
        // A released session's stream is gone: its buffers no longer copy, and it allocates none.
        const kept = other.alloc(8);
        other.release();
        t.throws(() => other.read(kept, 0, new Int32Array(2)), { message: /released/ });
        t.throws(() => other.alloc(8), { message: /released/ });
      } finally {
        session.release();
        other.release();
      }
    });
  },
);

test.serial(
  'a float32 graph is refused on cuda before anything runs (float16 is what ORT CUDA attention takes), or cuda is missing',
  async (t) => {
    const error = await t.throwsAsync(
      loadDecoderModel(await defaultModelDir(), { executionProvider: 'cuda', intraOpThreads: 1, kvCapacity: 256 }),
    );
    // Here: no CUDA provider or no GPU (named); on a GPU machine: the dtype.
    t.regex(error!.message, /execution provider "cuda"|float32 graph/);
  },
);

test.serial(
  "emulated device path on the float32 graph reproduces the committed greedy reference of ORT's kernel",
  async (t) => {
    const dir = await defaultModelDir();
    const engine = await createEngine(dir, EMULATE, { forwardCost: { mode: 'fixed', table: TEST_FORWARD_COST } });
    try {
      t.is(engine.info.runner, 'native');
      t.is(engine.info.forwardRowsMin, DEVICE_FORWARD_ROWS);
      t.is(engine.info.verifyTokensMax, DEVICE_FORWARD_ROWS);
      const reference = readReference('cpu');
      const prompts = new Map(exactnessPrompts().map((p) => [p.id, p.prompt]));
      const regressions: string[] = [];
      let identical = 0;
      for (const expected of reference.cases.slice(0, REFERENCE_CASES)) {
        const { tokens } = await generateOnce(engine, prompts.get(expected.id)!, NO_SPECULATION, expected.maxNewTokens);
        const result = compareWithReference(expected, tokens);
        if (result.kind === 'identical') identical++;
        else if (result.kind === 'near-tie') t.log(`forgiven (gap < ${NEAR_TIE_GAP}): ${result.message}`);
        else regressions.push(result.message);
      }
      t.log(`${identical}/${REFERENCE_CASES} identical to the reference`);
      t.deepEqual(regressions, []);
      t.true(identical >= REFERENCE_CASES - 1);
    } finally {
      await engine.dispose();
    }
  },
);

test.serial(
  'float16 graph on the emulated device path: plain and speculative decoding give the same tokens; drafts stay within 4 rows',
  async (t) => {
    const dir = await convertedVariant({ dtype: 'float16' });
    t.is((JSON.parse(readFileSync(`${dir}/anpd-model.json`, 'utf8')) as { dtype?: string }).dtype, 'float16');
    const engine = await createEngine(dir, EMULATE, { forwardCost: { mode: 'fixed', table: TEST_FORWARD_COST } });
    try {
      let drafted = 0;
      for (const p of exactnessPrompts().slice(0, 4)) {
        const plain = await generateOnce(engine, p.prompt, NO_SPECULATION, 48);
        const anpd = await generateOnce(engine, p.prompt, { ...DEFAULT_SPECULATION, draftTokensMax: 16 }, 48);
        t.deepEqual(anpd.tokens, plain.tokens, `${p.id}: speculation changed the output`);
        t.true(plain.tokens.length > 0);
        // Asked for up to 16, the engine drafts at most verifyTokensMax − 1 = 3.
        t.is(anpd.final.stats.draftedAtPosition.length, DEVICE_FORWARD_ROWS - 1);
        drafted += anpd.final.stats.draftTokensProposed;
      }
      t.true(drafted > 0, 'no draft was proposed: the exactness check above checked nothing');
    } finally {
      await engine.dispose();
    }
  },
);

test.serial(
  "float16 graphs output each row's argmax: greedy steps read ids, not logits rows, and they match the logits",
  async (t) => {
    const dir = await convertedVariant({ dtype: 'float16' });
    t.true((JSON.parse(readFileSync(`${dir}/anpd-model.json`, 'utf8')) as { greedyOutput?: boolean }).greedyOutput);
    const model = (await loadDecoderModel(dir, EMULATE)) as DeviceDecoderModel;
    try {
      const viaLogits = model.createSequence();
      const viaIds = model.createSequence();
      t.truthy(viaIds.forwardGreedy);
      const steps: [number[], number][] = [
        [[1, 9690, 198, 2683, 359, 253, 5356], 1],
        [[28, 29, 30], 3],
        [[31], 1],
        [[17, 18], 2],
      ];
      for (const [ids, rows] of steps) {
        const logits = await viaLogits.forward(ids, rows);
        const expected = Array.from({ length: rows }, (_, r) => argmax(logits, r * model.vocab, model.vocab));
        t.deepEqual([...(await viaIds.forwardGreedy!(ids, rows))], expected, `forward of ${ids.length}, ${rows} rows`);
      }
      viaLogits.dispose();
      viaIds.dispose();
    } finally {
      await model.dispose();
    }
    // float32 graphs have no such output: their sequences read logits.
    const f32 = (await loadDecoderModel(await defaultModelDir(), EMULATE)) as DeviceDecoderModel;
    try {
      const seq = f32.createSequence();
      t.is(seq.forwardGreedy, undefined);
      seq.dispose();
    } finally {
      await f32.dispose();
    }
  },
);

test.serial(
  'a sequence gives its KV set back: the next sequence reuses it (and on CUDA its captured graph); positions are rewound for free',
  async (t) => {
    const model = (await loadDecoderModel(await defaultModelDir(), EMULATE)) as DeviceDecoderModel;
    try {
      const first = model.createSequence();
      const ids = [1, 9690, 198, 2683, 359, 253, 5356];
      const a = Float32Array.from(await first.forward(ids, 1));
      await first.forward([28, 29], 2);
      first.rewind(ids.length);
      const again = Float32Array.from(await first.forward([28], 1));
      first.dispose();
      t.is(model.kvSetCount, 1);
      const second = model.createSequence();
      t.is(model.kvSetCount, 1, "the disposed sequence's KV set is reused");
      const b = await second.forward(ids, 1);
      t.deepEqual([...b], [...a], 'a reused KV set gives the same logits');
      const third = model.createSequence();
      t.is(model.kvSetCount, 2, 'a live sequence keeps its own');
      t.is(again.length, model.info.vocabSize);
      second.dispose();
      third.dispose();
      await t.throwsAsync(second.forward([1], 1), { message: /disposed/ });
    } finally {
      await model.dispose();
    }
  },
);

test.serial(
  "decode steps after the first forward run a binding made once: the same logits as unbound runs, released with the sequence, and before the model's session when a sequence outlives it",
  async (t) => {
    const model = (await loadDecoderModel(await defaultModelDir(), EMULATE)) as DeviceDecoderModel;
    const ids = [1, 9690, 198, 2683, 359, 253, 5356, 28];
    // Unbound: the whole prompt in one forward, each position's logits kept.
    const whole = model.createSequence();
    const expected = Float32Array.from(await whole.forward(ids, 3));
    whole.dispose();
    t.is(model.boundSequences.size, 0, 'a first forward binds nothing');
    // Bound: the same positions one short step at a time after the first forward.
    const stepped = model.createSequence();
    await stepped.forward(ids.slice(0, 5), 1);
    const vocab = model.info.vocabSize;
    for (let i = 5; i < ids.length; i++) {
      const row = await stepped.forward([ids[i]!], 1);
      t.deepEqual([...row], [...expected.subarray((i - 5) * vocab, (i - 4) * vocab)], `position ${i}`);
    }
    t.is(model.boundSequences.size, 1, 'the steps share one binding');
    stepped.dispose();
    t.is(model.boundSequences.size, 0, 'released with the sequence');
    const outliving = model.createSequence();
    await outliving.forward(ids.slice(0, 5), 1);
    await outliving.forward([ids[5]!], 1);
    t.is(model.boundSequences.size, 1);
    await model.dispose();
    t.is(model.boundSequences.size, 0, "released before the model's session");
    t.notThrows(() => outliving.dispose());
  },
);

test('prefill chunks are padded to a few shapes, where the KV set has room', (t) => {
  t.is(prefillShape(5, 1000), 16);
  t.is(prefillShape(17, 1000), 32);
  t.is(prefillShape(100, 1000), 128);
  t.is(prefillShape(512, 1000), 512);
  t.is(prefillShape(100, 120), 100, 'no room for the padded shape: the exact length');
  t.is(prefillShape(600, 1000), 600);
  t.deepEqual([...PREFILL_SHAPES], [16, 32, 64, 128, 256, 512]);
});

test.serial(
  'batched device forwards (slot graphs over the KV slab), emulated: 4 streams at once give each prompt its lone output — plain and speculative, greedy and seeded sampling — and the steps ran batched',
  async (t) => {
    const single = await convertedVariant({ dtype: 'float16' });
    const batch2 = await convertedVariant({ dtype: 'float16', slots: 2 });
    const batch4 = await convertedVariant({ dtype: 'float16', slots: 4 });
    const engine = await createEngine(
      single,
      { ...EMULATE, kvCapacity: 512, batchModelDir: [batch2, batch4] },
      { forwardCost: { mode: 'fixed', table: TEST_FORWARD_COST } },
    );
    try {
      const model = engine.model as unknown as DeviceDecoderModel;
      t.is(engine.info.batchSlots, 4);
      await expectLoneOutputsTogether(t, engine, exactnessPrompts().slice(0, 4), model.batchExecutor!);
    } finally {
      await engine.dispose();
    }
  },
);

test.serial(
  "a batched step leaves a place's sequence alone when it sits the step out: its KV is intact, its tokens those of a lone run",
  async (t) => {
    const single = await convertedVariant({ dtype: 'float16' });
    const batch2 = await convertedVariant({ dtype: 'float16', slots: 2 });
    const model = (await loadDecoderModel(single, {
      ...EMULATE,
      kvCapacity: 256,
      batchModelDir: [batch2],
    })) as DeviceDecoderModel;
    try {
      const executor = model.batchExecutor!;
      const prompt = [1, 9690, 198, 2683, 359, 253, 5356];
      const greedyRun = async (sequence: ReturnType<typeof model.createSequence>, steps: number, next: number) => {
        const out: number[] = [];
        for (let i = 0; i < steps; i++) {
          out.push(next);
          next = (await sequence.forwardGreedy!([next], 1))[0]!;
        }
        return out;
      };
      const lone = model.createSequence();
      const expected = await greedyRun(lone, 8, (await lone.forwardGreedy!(prompt, 1))[0]!);
      lone.dispose();
      const a = model.createSequence() as unknown as { slot: number } & ReturnType<typeof model.createSequence>;
      const b = model.createSequence() as unknown as { slot: number } & ReturnType<typeof model.createSequence>;
      t.deepEqual([a.slot, b.slot], [0, 1], 'slots are handed out lowest first');
      const firstA = (await a.forwardGreedy!(prompt, 1))[0]!;
      const firstB = (await b.forwardGreedy!(prompt, 1))[0]!;
      // Three steps of A alone on the 2-slot graph: B's place is padded.
      let nextA = firstA;
      for (let i = 0; i < 3; i++) {
        const [ids] = await executor.run(2, [
          { sequence: a, tokens: [nextA], start: 0, count: 1, padded: model.rows, rows: 1, argmax: true },
        ]);
        nextA = (ids as Int32Array)[0]!;
      }
      t.deepEqual(await greedyRun(b, 8, firstB), expected, "B's output changed while it sat out A's steps");
      t.is(executor.counts.batched, 3);
      a.dispose();
      b.dispose();
    } finally {
      await model.dispose();
    }
  },
);

test.serial(
  'the paged graph on the emulated device path: 4 streams in one forward per step give each prompt its lone output — plain and speculative, greedy and seeded sampling; prompts prefilled in packs; places come back',
  async (t) => {
    const paged = await convertedVariant({ dtype: 'float16', attention: 'paged' });
    const engine = await createEngine(
      paged,
      { ...EMULATE, kvCapacity: 512, batchSlots: 4, prefillTokensPerStep: 512 },
      { forwardCost: { mode: 'fixed', table: TEST_FORWARD_COST } },
    );
    try {
      t.is(engine.info.batchSlots, 4);
      t.is(engine.info.verifyTokensMax, DEVICE_FORWARD_ROWS);
      const executor = engine.model.batchExecutor!;
      t.deepEqual([...executor.widths], [2, 4]);
      // Shortened: the CPU stand-in for PagedAttention is a plain reference kernel.
      const prompts = exactnessPrompts()
        .slice(0, 4)
        .map((p) => ({ ...p, prompt: p.prompt.slice(0, 600) }));
      const model = engine.model as unknown as PagedDecoderModel;
      const prefill = { ...model.counts.prefill };
      await expectLoneOutputsTogether(t, engine, prompts, executor);
      // The prompts arriving together shared prefill forwards (each prompt is one chunk here).
      const forwards = model.counts.prefill.forwards - prefill.forwards;
      const chunks = model.counts.prefill.chunks - prefill.chunks;
      t.true(forwards > 0 && chunks > forwards, `${chunks} prompt chunks in ${forwards} prefill forwards`);
      // Every place came back: four more sequences fit.
      const again = Array.from({ length: 4 }, () => model.createSequence());
      t.throws(() => model.createSequence(), { message: /all 4 sequence places are taken/ });
      for (const s of again) s.dispose();
    } finally {
      await engine.dispose();
    }
  },
);

test.serial('the paged graph is refused off the device path, naming the file and what runs it', async (t) => {
  const paged = await convertedVariant({ dtype: 'float16', attention: 'paged' });
  const error = await t.throwsAsync(
    loadDecoderModel(paged, { executionProvider: 'cpu', intraOpThreads: 1, kvCapacity: 256 }),
  );
  t.regex(error!.message, /paged graph \(PagedAttention\), which ONNX Runtime runs on CUDA only/);
  t.regex(error!.message, /model\.onnx/);
});

test.serial(
  'n samples on the device paths copy the prompt KV on the device (no second prefill): each sample is the lone request seeded seed + i',
  async (t) => {
    const paged = await convertedVariant({ dtype: 'float16', attention: 'paged' });
    const single = await convertedVariant({ dtype: 'float16' });
    for (const [dir, extra] of [
      [paged, { batchSlots: 4, prefillTokensPerStep: 128 }],
      [single, {}],
    ] as const) {
      const engine = await createEngine(
        dir,
        { ...EMULATE, kvCapacity: 256, ...extra },
        { forwardCost: { mode: 'fixed', table: TEST_FORWARD_COST } },
      );
      try {
        const probe = engine.model.createSequence();
        t.truthy(probe.copyPrefixFrom, 'the sequence copies prefixes');
        probe.dispose();
        const sampling = { temperature: 0.9, topK: 0, topP: 1, repetitionPenalty: 1, seed: 11 };
        const prompt = { kind: 'text' as const, text: 'Write one sentence about rivers.', chat: true };
        const together: number[][] = [[], [], []];
        for await (const e of engine.generate({
          prompt,
          maxNewTokens: 12,
          speculation: NO_SPECULATION,
          sampling,
          n: 3,
        }))
          if (e.type === 'delta') together[e.index ?? 0]!.push(...e.tokenIds);
        for (let i = 0; i < 3; i++) {
          const lone: number[] = [];
          for await (const e of engine.generate({
            prompt,
            maxNewTokens: 12,
            speculation: NO_SPECULATION,
            sampling: { ...sampling, seed: sampling.seed + i },
          }))
            if (e.type === 'delta') lone.push(...e.tokenIds);
          t.deepEqual(together[i], lone, `${dir.endsWith('paged') ? 'paged' : 'device'} sample ${i}`);
        }
        t.notDeepEqual(together[0], together[1], 'the samples differ (else the check is weak)');
      } finally {
        await engine.dispose();
      }
    }
  },
);

test.serial(
  'the paged graph picks the bucket per step with --batch-invariant off, the full width with on (the default); the outputs agree on the CPU',
  async (t) => {
    const paged = await convertedVariant({ dtype: 'float16', attention: 'paged' });
    const prompt = [1, 9690, 198, 2683, 359, 253, 5356];
    const outputs: number[][] = [];
    for (const batchInvariant of [false, true]) {
      const model = (await loadDecoderModel(paged, {
        ...EMULATE,
        kvCapacity: 256,
        batchSlots: 4,
        batchInvariant,
      })) as unknown as PagedDecoderModel;
      try {
        const seqs = [model.createSequence(), model.createSequence(), model.createSequence()];
        let next = await Promise.all(seqs.map(async (s) => (await s.forwardGreedy!(prompt, 1))[0]!));
        const out: number[] = [];
        for (let i = 0; i < 4; i++) {
          const live = i < 2 ? seqs : seqs.slice(0, 1);
          const results = model.step(
            live.map((sequence, k) => ({
              sequence,
              tokens: [next[k]!],
              start: 0,
              count: 1,
              padded: model.rows,
              rows: 1,
              argmax: true,
            })),
          );
          next = results.map((r) => r[0]!);
          out.push(...next);
        }
        outputs.push(out);
        // Off: three sequences take the 4-wide bucket, one the 1-wide; on: every step is 4 wide.
        t.deepEqual(model.counts.byWidth, batchInvariant ? { 4: 4 } : { 4: 2 });
        t.is(model.counts.alone, batchInvariant ? 0 : 2);
        for (const s of seqs) s.dispose();
      } finally {
        await model.dispose();
      }
    }
    t.deepEqual(outputs[0], outputs[1]);
  },
);

test.serial(
  "the paged graph packs several prompts' prefill into one forward per step, a long prompt in chunks over several steps; each stream's greedy tokens are its lone ones, with --batch-invariant on (one shape) and off (a ladder)",
  async (t) => {
    const paged = await convertedVariant({ dtype: 'float16', attention: 'paged' });
    // Token ids of the prompts (any ids the vocabulary has): 300, 40 and 7 tokens.
    const ids = (n: number, from: number) => Array.from({ length: n }, (_, i) => 200 + ((from + i * 37) % 9000));
    const prompts = [ids(300, 1), ids(40, 2), ids(7, 3)];
    for (const batchInvariant of [true, false]) {
      const model = (await loadDecoderModel(paged, {
        ...EMULATE,
        kvCapacity: 512,
        batchSlots: 4,
        batchInvariant,
        prefillTokensPerStep: 128,
      })) as unknown as PagedDecoderModel;
      try {
        // 128 token rows: 4 chunk entries and 1 pad entry keep one token each.
        t.deepEqual(model.prefillPack, { tokens: 123, entries: 4 });
        const generate = async (prompt: number[]) => {
          const sequence = model.createSequence();
          try {
            let next = (await sequence.forwardGreedy!(prompt, 1))[0]!;
            const out = [next];
            for (let i = 0; i < 6; i++) out.push((next = (await sequence.forwardGreedy!([next], 1))[0]!));
            return out;
          } finally {
            sequence.dispose();
          }
        };
        // Before a scheduler attaches, a prompt is one unpacked forward of its own (the reference).
        const unpacked: number[][] = [];
        for (const p of prompts) unpacked.push(await generate(p));
        t.is(model.counts.prefill.forwards, 0);
        new StepScheduler(model.info.batchSlots, model);
        const lone: number[][] = [];
        for (const p of prompts) lone.push(await generate(p));
        t.deepEqual(lone, unpacked, 'a packed prefill gives the tokens of an unpacked one');
        const before = { ...model.counts.prefill };
        const together = await Promise.all(prompts.map((p) => generate(p)));
        together.forEach((tokens, i) => t.deepEqual(tokens, lone[i], `prompt ${i} (batchInvariant ${batchInvariant})`));
        // Heads of 299 (chunks 123 + 123 + 53), 39 and 6 tokens: 5 chunks in fewer than 5 forwards.
        const forwards = model.counts.prefill.forwards - before.forwards;
        t.is(model.counts.prefill.chunks - before.chunks, 5);
        t.is(model.counts.prefill.tokens - before.tokens, 299 + 39 + 6);
        t.true(forwards < 5, `${forwards} prefill forwards for 5 chunks`);
      } finally {
        await model.dispose();
      }
    }
  },
);

/**
 * Each prompt alone, then all of them at once (plain, then speculative), greedy and seeded
 * sampling: the concurrent outputs must be the lone ones, and must have shared forwards.
 */
async function expectLoneOutputsTogether(
  t: ExecutionContext,
  engine: Engine,
  prompts: readonly { readonly id: string; readonly prompt: string }[],
  executor: BatchExecutor,
): Promise<void> {
  const sampled = { temperature: 0.8, topK: 40, topP: 0.95, repetitionPenalty: 1, seed: 7 };
  const run = async (text: string, speculation: SpeculationOptions, sampling?: typeof sampled) => {
    const tokens: number[] = [];
    for await (const e of engine.generate({
      prompt: { kind: 'text', text, chat: true },
      maxNewTokens: 32,
      speculation,
      ...(sampling !== undefined ? { sampling } : {}),
    }))
      if (e.type === 'delta') tokens.push(...e.tokenIds);
    return tokens;
  };
  const speculative = { ...DEFAULT_SPECULATION, draftTokensMax: 16 };
  for (const sampling of [undefined, sampled]) {
    const lone: number[][] = [];
    for (const p of prompts) lone.push(await run(p.prompt, NO_SPECULATION, sampling));
    const before = executor.counts.batchedSequences;
    for (const speculation of [NO_SPECULATION, speculative]) {
      const together = await Promise.all(prompts.map((p) => run(p.prompt, speculation, sampling)));
      together.forEach((tokens, i) =>
        t.deepEqual(tokens, lone[i], `${prompts[i]!.id} (${speculation.mode}, ${sampling ? 'sampled' : 'greedy'})`),
      );
    }
    t.true(
      executor.counts.batchedSequences - before > 100,
      'the concurrent generations did not share forwards: the comparison checked nothing',
    );
  }
}
