/**
 * Users' own ONNX exports: a tiny decoder written here in the Hugging Face Optimum layout
 * (config.json, tokenizer files, onnx/model.onnx with past_key_values.* inputs and present.*
 * outputs, attention_mask, position_ids). Its "attention" is a causal cumulative sum over the KV
 * cache, so every logit depends on the whole past and a plain JS reference is a few lines.
 */
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { encodeModel, type Initializer, OnnxDataType } from '../src/convert/onnx-writer.js';
import { createEngine } from '../src/engine/create-engine.js';
import { loadDecoderModel } from '../src/runtime/load-model.js';
import { defaultModelDir } from './support/default-model.js';

const VOCAB = 49152;
const HIDDEN = 8;
const POSITION_SCALE = 0.01;

function table(n: number, seed: number): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = Math.sin(i * 0.7311 + seed) * Math.cos(i * 0.1131 + seed * 3);
  return a;
}
const E = table(VOCAB * HIDDEN, 1); // [VOCAB, HIDDEN]
const W = table(HIDDEN * VOCAB, 2); // [HIDDEN, VOCAB]

function f32(name: string, dims: number[], data: Float32Array): Initializer {
  return { name, type: OnnxDataType.FLOAT, dims, data: new Uint8Array(data.buffer, data.byteOffset, data.byteLength) };
}
function i64(name: string, values: number[]): Initializer {
  return {
    name,
    type: OnnxDataType.INT64,
    dims: [values.length],
    data: new Uint8Array(BigInt64Array.from(values.map(BigInt)).buffer),
  };
}

function tinyDecoder(): Uint8Array {
  const kv = [1, 1, 'past_plus_new', HIDDEN];
  const chunks = encodeModel({
    producerName: 'test',
    producerVersion: '1',
    opsets: [{ domain: '', version: 17 }],
    graph: {
      name: 'tiny-cumsum',
      initializers: [
        f32('E', [VOCAB, HIDDEN], E),
        f32('W', [HIDDEN, VOCAB], W),
        f32('scale', [], new Float32Array([POSITION_SCALE])),
        i64('axis1', [1]),
        i64('end', [Number.MAX_SAFE_INTEGER]),
        i64('axis2', [2]),
        i64('axis_last', [-1]),
      ],
      inputs: [
        { name: 'input_ids', type: OnnxDataType.INT64, shape: [1, 'T'] },
        { name: 'attention_mask', type: OnnxDataType.INT64, shape: [1, 'total'] },
        { name: 'position_ids', type: OnnxDataType.INT64, shape: [1, 'T'] },
        { name: 'past_key_values.0.key', type: OnnxDataType.FLOAT, shape: [1, 1, 'past', HIDDEN] },
        { name: 'past_key_values.0.value', type: OnnxDataType.FLOAT, shape: [1, 1, 'past', HIDDEN] },
      ],
      outputs: [
        { name: 'logits', type: OnnxDataType.FLOAT, shape: [1, 'T', VOCAB] },
        { name: 'present.0.key', type: OnnxDataType.FLOAT, shape: kv },
        { name: 'present.0.value', type: OnnxDataType.FLOAT, shape: kv },
      ],
      nodes: [
        { op: 'Gather', inputs: ['E', 'input_ids'], outputs: ['emb'], attributes: { axis: 0 } },
        { op: 'Cast', inputs: ['position_ids'], outputs: ['posf'], attributes: { to: OnnxDataType.FLOAT } },
        { op: 'Mul', inputs: ['posf', 'scale'], outputs: ['pos_scaled'] },
        { op: 'Unsqueeze', inputs: ['pos_scaled', 'axis_last'], outputs: ['pos3'] },
        { op: 'Add', inputs: ['emb', 'pos3'], outputs: ['x'] },
        { op: 'Unsqueeze', inputs: ['x', 'axis1'], outputs: ['k'] },
        { op: 'Concat', inputs: ['past_key_values.0.key', 'k'], outputs: ['present.0.key'], attributes: { axis: 2 } },
        {
          op: 'Concat',
          inputs: ['past_key_values.0.value', 'k'],
          outputs: ['present.0.value'],
          attributes: { axis: 2 },
        },
        { op: 'CumSum', inputs: ['present.0.key', 'axis2'], outputs: ['cs'] },
        { op: 'Shape', inputs: ['input_ids'], outputs: ['t_len'], attributes: { start: 1 } },
        { op: 'Neg', inputs: ['t_len'], outputs: ['neg_t'] },
        { op: 'Slice', inputs: ['cs', 'neg_t', 'end', 'axis2'], outputs: ['last'] },
        { op: 'Squeeze', inputs: ['last', 'axis1'], outputs: ['h'] },
        { op: 'MatMul', inputs: ['h', 'W'], outputs: ['logits'] },
      ],
    },
  });
  return Buffer.concat(chunks);
}

/** logits at position p = Wᵀ · Σ_{j ≤ p} (E[token_j] + 0.01·j) */
function referenceLogits(tokens: readonly number[]): Float32Array[] {
  const acc = new Float64Array(HIDDEN);
  return tokens.map((tok, p) => {
    for (let h = 0; h < HIDDEN; h++)
      acc[h] = acc[h]! + Math.fround(E[tok * HIDDEN + h]! + Math.fround(p * POSITION_SCALE));
    const row = new Float32Array(VOCAB);
    for (let v = 0; v < VOCAB; v++) {
      let s = 0;
      for (let h = 0; h < HIDDEN; h++) s += acc[h]! * W[h * VOCAB + v]!;
      row[v] = s;
    }
    return row;
  });
}

function argmax(a: Float32Array): number {
  let best = 0;
  for (let i = 1; i < a.length; i++) if (a[i]! > a[best]!) best = i;
  return best;
}

function maxDiff(a: Float32Array, b: Float32Array): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

const root = mkdtempSync(join(tmpdir(), 'anpd-optimum-'));
test.after.always(() => rmSync(root, { recursive: true, force: true }));

async function writeModelDir(): Promise<string> {
  const dir = join(root, 'tiny');
  mkdirSync(join(dir, 'onnx'), { recursive: true });
  writeFileSync(join(dir, 'onnx', 'model.onnx'), tinyDecoder());
  writeFileSync(
    join(dir, 'config.json'),
    JSON.stringify({
      model_type: 'tiny-cumsum',
      num_hidden_layers: 1,
      num_attention_heads: 1,
      num_key_value_heads: 1,
      hidden_size: HIDDEN,
      vocab_size: VOCAB,
      max_position_embeddings: 128,
      bos_token_id: 1,
      eos_token_id: 2,
    }),
  );
  const source = await defaultModelDir();
  for (const f of ['tokenizer.json', 'tokenizer_config.json']) copyFileSync(join(source, f), join(dir, f));
  return dir;
}

const TOKENS = [5, 17, 300, 4000, 12, 49151, 7, 8];

test('an Optimum-layout export loads and its logits match the reference for a multi-token forward', async (t) => {
  const model = await loadDecoderModel(await writeModelDir());
  t.is(model.info.kind, 'optimum');
  t.deepEqual(model.info.eosTokenIds, [2]);
  const ref = referenceLogits(TOKENS);
  const seq = model.createSequence();
  const logits = await seq.forward(TOKENS.slice(0, 5), 5);
  for (let p = 0; p < 5; p++)
    t.true(maxDiff(logits.subarray(p * VOCAB, (p + 1) * VOCAB), ref[p]!) < 1e-3, `position ${p}`);
  for (let p = 5; p < TOKENS.length; p++) {
    const row = await seq.forward([TOKENS[p]!], 1);
    t.true(maxDiff(row, ref[p]!) < 1e-3, `position ${p} (one at a time, positions and mask from the runtime)`);
  }
  t.is(seq.length, TOKENS.length);
  await model.dispose();
});

test('rewinding an Optimum-layout sequence drops the rejected positions', async (t) => {
  const model = await loadDecoderModel(await writeModelDir());
  const ref = referenceLogits(TOKENS);
  const seq = model.createSequence();
  await seq.forward(TOKENS.slice(0, 4), 1);
  await seq.forward([999, 998, 997], 3); // rejected draft
  seq.rewind(4);
  const logits = await seq.forward(TOKENS.slice(4), TOKENS.length - 4);
  for (let p = 4; p < TOKENS.length; p++)
    t.true(maxDiff(logits.subarray((p - 4) * VOCAB, (p - 3) * VOCAB), ref[p]!) < 1e-3, `position ${p}`);
  await model.dispose();
});

test('the engine generates from an Optimum-layout export exactly as the reference greedy loop does', async (t) => {
  const engine = await createEngine(await writeModelDir());
  const prompt = [5, 17, 300];
  const expected = [...prompt];
  for (let i = 0; i < 6; i++) expected.push(argmax(referenceLogits(expected)[expected.length - 1]!));
  const got: number[] = [];
  for await (const e of engine.generate({
    prompt: { kind: 'tokens', tokenIds: prompt },
    maxNewTokens: 6,
    ignoreEos: true,
  })) {
    if (e.type === 'delta') got.push(...e.tokenIds);
  }
  t.deepEqual(got, expected.slice(prompt.length));
  await engine.model.dispose();
});

test('an export without past_key_values inputs is refused with the reason', async (t) => {
  const dir = join(root, 'no-past');
  mkdirSync(join(dir, 'onnx'), { recursive: true });
  const chunks = encodeModel({
    producerName: 'test',
    producerVersion: '1',
    opsets: [{ domain: '', version: 17 }],
    graph: {
      name: 'no-past',
      initializers: [f32('E', [VOCAB, HIDDEN], E), f32('W', [HIDDEN, VOCAB], W)],
      inputs: [{ name: 'input_ids', type: OnnxDataType.INT64, shape: [1, 'T'] }],
      outputs: [{ name: 'logits', type: OnnxDataType.FLOAT, shape: [1, 'T', VOCAB] }],
      nodes: [
        { op: 'Gather', inputs: ['E', 'input_ids'], outputs: ['emb'], attributes: { axis: 0 } },
        { op: 'MatMul', inputs: ['emb', 'W'], outputs: ['logits'] },
      ],
    },
  });
  writeFileSync(join(dir, 'onnx', 'model.onnx'), Buffer.concat(chunks));
  writeFileSync(
    join(dir, 'config.json'),
    JSON.stringify({ num_attention_heads: 1, hidden_size: HIDDEN, vocab_size: VOCAB }),
  );
  await t.throwsAsync(loadDecoderModel(dir), { message: /model\.onnx: graph has no past_key_values\.\*\.key inputs/ });
});
