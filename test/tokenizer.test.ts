import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import test from 'ava';
import { projectRoot } from '../src/paths.js';
import { DEFAULT_MODEL } from '../src/registry/model-registry.js';
import { loadTokenizer, type TextTokenizer } from '../src/tokenizer/tokenizer.js';
import { defaultModelDir } from './support/default-model.js';

/**
 * Token ids computed by llama.cpp straight from the default GGUF, with none of our code
 * (test/fixtures/gen-tokenizer-ids.py wrote them; its `provenance` says how and when to regenerate).
 * Round trips cannot catch a tokenizer that is lossless but wrong (merge order, pre-tokenizer
 * split, special tokens); exact ids can.
 */
interface IdSample {
  readonly name: string;
  readonly text: string;
  /** encode(text, { addSpecialTokens: false }) */
  readonly ids: number[];
  /** encode(text): the default mode */
  readonly ids_default: number[];
}
const ID_FIXTURE = JSON.parse(readFileSync(join(projectRoot(), 'test', 'fixtures', 'tokenizer-ids.json'), 'utf8')) as {
  provenance: { input: { sha256: string } };
  samples: IdSample[];
};

let tokenizer: TextTokenizer;
test.before(async () => {
  tokenizer = loadTokenizer(await defaultModelDir());
});

const SAMPLES = [
  'Hello, world!',
  'The quick brown fox jumps over the lazy dog.',
  '  leading spaces,   runs of   spaces\tand\ttabs\n\n\nand newlines\r\n',
  'unicode: café naïve Straße Ελληνικά русский 東京 한국어 العربية',
  'emoji: 🎉🚀👩‍👩‍👧‍👦 🇫🇷 ❤️',
  'code:\nfunction add(a, b) {\n    return a + b; // sum\n}\n\tconst x = [1, 2, 3].map((v) => v ** 2);\n',
  'numbers 1234567890 3.14159 -42 1e-9',
  "contractions: don't, it's, we're, they'll, I'd",
  '',
  ' ',
];

for (const [i, text] of SAMPLES.entries()) {
  test(`text round-trips through encode and decode (sample ${i})`, (t) => {
    const ids = tokenizer.encode(text, { addSpecialTokens: false });
    t.is(tokenizer.decode(ids), text);
    for (const id of ids) t.true(id >= 0 && id < tokenizer.vocabSize);
  });
}

test('the token id fixture was computed from the GGUF the default model is converted from', (t) => {
  t.is(
    ID_FIXTURE.provenance.input.sha256,
    DEFAULT_MODEL.ggufSha256,
    'the default model changed: regenerate test/fixtures/tokenizer-ids.json',
  );
  t.is(new Set(ID_FIXTURE.samples.map((s) => s.name)).size, ID_FIXTURE.samples.length);
  t.true(ID_FIXTURE.samples.length >= 30);
});

for (const sample of ID_FIXTURE.samples) {
  test(`encode gives llama.cpp's ids for the GGUF: ${sample.name}`, (t) => {
    t.deepEqual(tokenizer.encode(sample.text, { addSpecialTokens: false }), sample.ids, 'addSpecialTokens: false');
    t.deepEqual(tokenizer.encode(sample.text), sample.ids_default, 'default mode');
    t.is(tokenizer.decode(sample.ids), sample.text, "decoding llama.cpp's ids gives the text back");
  });
}

test('digits are split one per token, as SmolLM2 pre-tokenizes them', (t) => {
  const ids = tokenizer.encode('12345', { addSpecialTokens: false });
  t.is(ids.length, 5);
});

test('special tokens in text encode to their single ids and can be skipped on decode', (t) => {
  const start = tokenizer.tokenToId('<|im_start|>');
  const end = tokenizer.tokenToId('<|im_end|>');
  t.is(start, 1);
  t.is(end, 2);
  const ids = tokenizer.encode('<|im_start|>user\nhi<|im_end|>', { addSpecialTokens: false });
  t.is(ids[0], 1);
  t.is(ids[ids.length - 1], 2);
  t.is(tokenizer.decode(ids, { skipSpecialTokens: true }), 'user\nhi');
  t.true(tokenizer.specialTokenIds.has(1));
  t.false(tokenizer.specialTokenIds.has(ids[1]!));
});

test('the converted tokenizer has the whole 49152-token vocabulary and a chat template', (t) => {
  t.is(tokenizer.vocabSize, 49152);
  t.true(tokenizer.hasChatTemplate);
});

test('a system message replaces the default one in the chat template', (t) => {
  const text = tokenizer.applyChatTemplate([
    { role: 'system', content: 'Be brief.' },
    { role: 'user', content: 'Hi' },
  ]);
  t.is(text, '<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n');
});
