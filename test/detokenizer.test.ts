import test from 'ava';
import { IncrementalDetokenizer } from '../src/tokenizer/incremental-detokenizer.js';
import type { TextTokenizer } from '../src/tokenizer/tokenizer.js';

const REPLACEMENT = '\uFFFD';

/**
 * A byte-level-like tokenizer: token id i stands for the byte sequence pieces[i], and decode
 * concatenates the bytes and runs a (non-fatal) TextDecoder over them, so incomplete UTF-8 turns
 * into U+FFFD just as byte-level BPE decoders do.
 */
class ByteTokenizer implements TextTokenizer {
  readonly hasChatTemplate = false;
  readonly specialTokenIds: ReadonlySet<number> = new Set();
  readonly pieces: Uint8Array[] = [];

  get vocabSize(): number {
    return this.pieces.length;
  }

  /** Registers a token for these bytes and returns its id. */
  add(bytes: readonly number[] | string): number {
    this.pieces.push(typeof bytes === 'string' ? new TextEncoder().encode(bytes) : Uint8Array.from(bytes));
    return this.pieces.length - 1;
  }

  encode(): number[] {
    throw new Error('not needed by these tests');
  }

  grammarVocab(): never {
    throw new Error('not needed by these tests');
  }

  decode(ids: readonly number[]): string {
    const total = ids.reduce((n, id) => n + this.pieces[id]!.length, 0);
    const bytes = new Uint8Array(total);
    let at = 0;
    for (const id of ids) {
      bytes.set(this.pieces[id]!, at);
      at += this.pieces[id]!.length;
    }
    return new TextDecoder().decode(bytes);
  }

  applyChatTemplate(): string {
    throw new Error('not needed by these tests');
  }

  tokenToId(): number | undefined {
    return undefined;
  }
}

/** Splits `text`'s UTF-8 bytes at the given byte offsets into tokens of a fresh ByteTokenizer. */
function tokenize(text: string, cuts: readonly number[]): { tokenizer: ByteTokenizer; ids: number[] } {
  const bytes = Array.from(new TextEncoder().encode(text));
  const tokenizer = new ByteTokenizer();
  const ids: number[] = [];
  let start = 0;
  for (const cut of [...cuts, bytes.length]) {
    if (cut > start) ids.push(tokenizer.add(bytes.slice(start, cut)));
    start = cut;
  }
  return { tokenizer, ids };
}

function pushAll(detok: IncrementalDetokenizer, ids: readonly number[]): string[] {
  return ids.map((id) => detok.push(id));
}

test('the fake tokenizer really produces U+FFFD for a split character, so the tests below are meaningful', (t) => {
  const tokenizer = new ByteTokenizer();
  const a = tokenizer.add([0xf0, 0x9f]);
  const b = tokenizer.add([0x98, 0x80]);
  t.is(tokenizer.decode([a]), REPLACEMENT);
  t.is(tokenizer.decode([a, b]), '😀');
});

test('tokens that split a 4-byte emoji and a 3-byte CJK character never emit U+FFFD and reassemble the text', (t) => {
  const text = 'Hi 😀 中文!';
  // Bytes: 'H' 'i' ' ' | F0 9F 98 80 | ' ' | E4 B8 AD | E6 96 87 | '!'
  //        0   1   2     3  4  5  6     7     8  9  10   11 12 13   14
  const { tokenizer, ids } = tokenize(text, [3, 4, 6, 9, 10, 13]);
  t.is(tokenizer.decode(ids), text);
  const detok = new IncrementalDetokenizer(tokenizer);
  const deltas = pushAll(detok, ids);
  for (const delta of deltas) t.false(delta.includes(REPLACEMENT), `delta ${JSON.stringify(deltas)}`);
  // Pieces that only start a character emit nothing yet.
  t.is(deltas[0], 'Hi ');
  t.is(deltas[1], ''); // F0
  t.is(deltas[2], ''); // 9F 98
  t.is(deltas.join('') + detok.flush(), text);
});

test('every way of cutting a mixed text into byte tokens streams without U+FFFD and reassembles it', (t) => {
  const text = 'a😀b中🎉 文字 ok ñ€𝄞 end';
  const byteLength = new TextEncoder().encode(text).length;
  let x = 12345;
  const random = (): number => {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    return x / 4294967296;
  };
  for (let trial = 0; trial < 300; trial++) {
    const cuts: number[] = [];
    for (let i = 1; i < byteLength; i++) if (random() < 0.5) cuts.push(i);
    const { tokenizer, ids } = tokenize(text, cuts);
    const detok = new IncrementalDetokenizer(tokenizer);
    const deltas = pushAll(detok, ids);
    const joined = deltas.join('');
    t.false(joined.includes(REPLACEMENT), `cuts ${cuts.join(',')}`);
    t.is(joined + detok.flush(), text, `cuts ${cuts.join(',')}`);
  }
});

test('a long stream past the window trim still reassembles exactly', (t) => {
  const unit = 'x😀y中 ';
  const text = unit.repeat(60);
  const bytes = new TextEncoder().encode(text).length;
  // One token per byte: hundreds of tokens, far beyond the 64-token trim threshold.
  const { tokenizer, ids } = tokenize(
    text,
    Array.from({ length: bytes - 1 }, (_, i) => i + 1),
  );
  t.true(ids.length > 500);
  const detok = new IncrementalDetokenizer(tokenizer);
  const deltas = pushAll(detok, ids);
  t.false(deltas.some((d) => d.includes(REPLACEMENT)));
  t.is(deltas.join('') + detok.flush(), text);
});

test('a prompt tail provides context but is never emitted', (t) => {
  // One token per byte: the last 4 prompt tokens are [80] [' '] ['o'] ['k'], so the tail starts
  // with the last continuation byte of the emoji and decodes to '\uFFFD ok' on its own.
  const { tokenizer, ids } = tokenize('pre😀 ok', [1, 2, 3, 4, 5, 6, 7, 8, 9]);
  t.is(tokenizer.decode(ids.slice(-4)), `${REPLACEMENT} ok`);
  const prompt = ids;
  const a = tokenizer.add('Z');
  const b = tokenizer.add([0xe4, 0xb8]);
  const c = tokenizer.add([0xad, 0x21]);
  const detok = new IncrementalDetokenizer(tokenizer, prompt);
  t.is(detok.push(a), 'Z');
  t.is(detok.push(b), '');
  t.is(detok.push(c), '中!');
  t.is(detok.flush(), '');
});

test('ASCII-only tokens are emitted immediately, one token text per push', (t) => {
  const tokenizer = new ByteTokenizer();
  const pieces = ['Hello', ',', ' wor', 'ld', '!', ' ', '42'];
  const ids = pieces.map((p) => tokenizer.add(p));
  const detok = new IncrementalDetokenizer(tokenizer);
  t.deepEqual(pushAll(detok, ids), pieces);
  t.is(detok.flush(), '');
});

test('flush emits an incomplete trailing character as U+FFFD, as a full decode would', (t) => {
  const tokenizer = new ByteTokenizer();
  const a = tokenizer.add('ok ');
  const b = tokenizer.add([0xf0, 0x9f]);
  const detok = new IncrementalDetokenizer(tokenizer);
  t.is(detok.push(a), 'ok ');
  t.is(detok.push(b), '');
  t.is(detok.flush(), REPLACEMENT);
  t.is(detok.flush(), '');
});
