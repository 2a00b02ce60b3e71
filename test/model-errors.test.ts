import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { convertGguf } from '../src/convert/convert-gguf.js';
import { readGguf } from '../src/convert/gguf-reader.js';
import { createEngine } from '../src/engine/create-engine.js';
import { ModelFormatError, ModelNotFoundError } from '../src/errors.js';
import { loadDecoderModel } from '../src/runtime/load-model.js';
import { loadTokenizer } from '../src/tokenizer/tokenizer.js';
import { defaultGguf, defaultModelDir } from './support/default-model.js';
import { type MetaValue, writeGguf } from './support/gguf-writer.js';

const dir = mkdtempSync(join(tmpdir(), 'anpd-errors-'));
test.after.always(() => rmSync(dir, { recursive: true, force: true }));

function file(name: string, data: Uint8Array | string): string {
  const path = join(dir, name);
  writeFileSync(path, data);
  return path;
}

const LLAMA_META: Record<string, MetaValue> = {
  'general.architecture': { str: 'llama' },
  'llama.block_count': { u32: 1 },
  'llama.context_length': { u32: 64 },
  'llama.embedding_length': { u32: 32 },
  'llama.feed_forward_length': { u32: 64 },
  'llama.attention.head_count': { u32: 2 },
  'tokenizer.ggml.model': { str: 'gpt2' },
  'tokenizer.ggml.tokens': { strs: ['a', 'b'] },
  'tokenizer.ggml.merges': { strs: [] },
};

test('a missing GGUF file is reported with its path', (t) => {
  const path = join(dir, 'nope.gguf');
  const e = t.throws(() => readGguf(path), { instanceOf: ModelNotFoundError });
  t.true(e!.message.includes(path));
});

test('a file with the wrong magic is named and called not GGUF', (t) => {
  const path = file('wrong-magic.gguf', Buffer.concat([Buffer.from('GGML'), Buffer.alloc(100)]));
  const e = t.throws(() => readGguf(path), { instanceOf: ModelFormatError });
  t.regex(e!.message, /wrong-magic\.gguf: wrong magic .*not a GGUF file/);
});

test('a truncated GGUF is reported as truncated, naming the file', async (t) => {
  const real = readFileSync(await defaultGguf());
  const headerCut = file('cut-header.gguf', real.subarray(0, 5000));
  t.throws(() => readGguf(headerCut), { instanceOf: ModelFormatError, message: /cut-header\.gguf: truncated/ });
  const dataCut = file('cut-data.gguf', real.subarray(0, real.length - 1000));
  t.throws(() => readGguf(dataCut), {
    instanceOf: ModelFormatError,
    message: /cut-data\.gguf: truncated: tensor \S+ needs bytes/,
  });
});

test('a GGUF read in ranges (as files past 512 MiB are) gives the same header and tensor bytes as one read whole', async (t) => {
  const path = await defaultGguf();
  const whole = readGguf(path);
  // A 4 KiB first header read: the header (the tokenizer's ~49k strings) needs several larger reads.
  const ranged = readGguf(path, { wholeReadBytesMax: 0, headerReadBytes: 4096 });
  t.is(ranged.size, whole.size);
  t.deepEqual([...ranged.metadata.keys()], [...whole.metadata.keys()]);
  t.deepEqual(ranged.metadata.get('tokenizer.ggml.tokens'), whole.metadata.get('tokenizer.ggml.tokens'));
  t.deepEqual([...ranged.tensors.values()], [...whole.tensors.values()]);
  for (const info of [...whole.tensors.values()].filter((_, i) => i % 17 === 0))
    t.true(ranged.tensorBytes(info).equals(whole.tensorBytes(info)), info.name);
  // Cut files are still named truncated on this path.
  const real = readFileSync(path);
  const dataCut = file('cut-data-ranged.gguf', real.subarray(0, real.length - 1000));
  t.throws(() => readGguf(dataCut, { wholeReadBytesMax: 0, headerReadBytes: 4096 }), {
    instanceOf: ModelFormatError,
    message: /cut-data-ranged\.gguf: truncated: tensor \S+ needs bytes/,
  });
  const headerCut = file('cut-header-ranged.gguf', real.subarray(0, 5000));
  t.throws(() => readGguf(headerCut, { wholeReadBytesMax: 0, headerReadBytes: 4096 }), {
    instanceOf: ModelFormatError,
    message: /cut-header-ranged\.gguf: truncated/,
  });
});

test('an unsupported GGUF version is refused', (t) => {
  const path = file('v9.gguf', writeGguf(LLAMA_META, [], 9));
  t.throws(() => readGguf(path), { instanceOf: ModelFormatError, message: /unsupported GGUF version 9/ });
});

test('an unsupported architecture is refused by the converter with the architecture named', (t) => {
  const path = file('mamba.gguf', writeGguf({ ...LLAMA_META, 'general.architecture': { str: 'mamba' } }, []));
  t.throws(() => convertGguf(path, join(dir, 'out-mamba')), {
    instanceOf: ModelFormatError,
    message: /mamba\.gguf: unsupported architecture "mamba"/,
  });
});

test('an unsupported tensor quantization type is refused naming the tensor', (t) => {
  // Q2_K (type 10): readable, not converted; the message lists what is.
  const q2_k = { name: 'token_embd.weight', dims: [256, 2], type: 10, data: new Uint8Array(84 * 2) };
  const path = file('q2_k.gguf', writeGguf(LLAMA_META, [q2_k]));
  t.throws(() => convertGguf(path, join(dir, 'out-q2_k')), {
    instanceOf: ModelFormatError,
    message: /token_embd\.weight: ggml type Q2_K cannot be dequantized.*Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K/,
  });
  const unknown = file('type99.gguf', writeGguf(LLAMA_META, [{ ...q2_k, type: 99 }]));
  t.throws(() => readGguf(unknown), {
    instanceOf: ModelFormatError,
    message: /type99\.gguf: tensor token_embd\.weight has ggml type 99/,
  });
});

test('a GGUF whose tokenizer model is neither byte-level BPE nor SentencePiece is refused', (t) => {
  const path = file('t5.gguf', writeGguf({ ...LLAMA_META, 'tokenizer.ggml.model': { str: 't5' } }, []));
  t.throws(() => convertGguf(path, join(dir, 'out-t5')), {
    instanceOf: ModelFormatError,
    message:
      /t5\.gguf: tokenizer model "t5" is not supported \(supported: byte-level BPE "gpt2", SentencePiece "llama"\)/,
  });
});

test('a model directory without tokenizer.json names the missing file', async (t) => {
  const model = join(dir, 'no-tokenizer');
  mkdirSync(model, { recursive: true });
  const e = t.throws(() => loadTokenizer(model), { instanceOf: ModelNotFoundError });
  t.true(e!.message.includes(join(model, 'tokenizer.json')));
  await t.throwsAsync(createEngine(model), { instanceOf: ModelNotFoundError });
});

test('a corrupt model.onnx is reported by path, not as a crash inside ONNX Runtime', async (t) => {
  const source = await defaultModelDir();
  const model = join(dir, 'corrupt-onnx');
  mkdirSync(model, { recursive: true });
  for (const f of ['anpd-model.json', 'tokenizer.json', 'tokenizer_config.json'])
    copyFileSync(join(source, f), join(model, f));
  writeFileSync(join(model, 'model.onnx'), Buffer.from('this is not a protobuf model at all'.repeat(10)));
  const e = await t.throwsAsync(loadDecoderModel(model), { instanceOf: ModelFormatError });
  t.true(e!.message.startsWith(join(model, 'model.onnx')));
  t.regex(e!.message, /ONNX Runtime cannot load it/);
});

test('a directory that is not a model says what it expected', async (t) => {
  const empty = join(dir, 'empty');
  mkdirSync(empty, { recursive: true });
  await t.throwsAsync(loadDecoderModel(empty), {
    instanceOf: ModelNotFoundError,
    message: /expected anpd-model\.json .* or config\.json/,
  });
  await t.throwsAsync(loadDecoderModel(join(dir, 'missing')), {
    instanceOf: ModelNotFoundError,
    message: /model directory not found/,
  });
});

test('an invalid config.json is named', async (t) => {
  const model = join(dir, 'bad-config');
  mkdirSync(model, { recursive: true });
  writeFileSync(join(model, 'config.json'), '{ not json');
  await t.throwsAsync(loadDecoderModel(model), {
    instanceOf: ModelFormatError,
    message: /bad-config\/config\.json: not valid JSON/,
  });
});
