import test from 'ava';
import { StopSequenceMatcher } from '../src/generate/stop-sequences.js';

/** Pushes each delta, returning what was emitted per push and whether each push reported a stop. */
function run(matcher: StopSequenceMatcher, deltas: readonly string[]): { emitted: string[]; stopped: boolean[] } {
  const emitted: string[] = [];
  const stopped: boolean[] = [];
  for (const delta of deltas) {
    const r = matcher.push(delta);
    emitted.push(r.text);
    stopped.push(r.stopped);
  }
  return { emitted, stopped };
}

test('a stop string split one character per delta is never partially emitted, and nothing after it is', (t) => {
  const text = 'Hello <world> <|end|> and more <|end|> text';
  const matcher = new StopSequenceMatcher(['<|end|>']);
  const { emitted, stopped } = run(matcher, [...text]);
  const expected = 'Hello <world> ';
  let soFar = '';
  for (let i = 0; i < emitted.length; i++) {
    soFar += emitted[i]!;
    t.true(expected.startsWith(soFar), `after delta ${i} emitted ${JSON.stringify(soFar)}`);
  }
  t.is(soFar, expected);
  const stopAt = text.indexOf('<|end|>') + '<|end|>'.length - 1;
  t.deepEqual(
    stopped,
    [...text].map((_, i) => i >= stopAt),
  );
  t.true(matcher.done);
  t.is(matcher.flush(), '');
});

test('a stop string split across deltas of uneven sizes is cut exactly', (t) => {
  const matcher = new StopSequenceMatcher(['STOP']);
  const { emitted, stopped } = run(matcher, ['abc S', 'T', 'OP tail', 'more']);
  t.deepEqual(emitted, ['abc ', '', '', '']);
  t.deepEqual(stopped, [false, false, true, true]);
});

test('a self-overlapping stop string is found when streamed one character at a time', (t) => {
  const matcher = new StopSequenceMatcher(['aab']);
  const { emitted } = run(matcher, [...'xaaab!']);
  t.is(emitted.join(''), 'xa');
  t.true(matcher.done);
});

test('text that only looks like the start of a stop string is held, then released once disambiguated', (t) => {
  const matcher = new StopSequenceMatcher(['</s>']);
  t.deepEqual(matcher.push('a <'), { text: 'a ', stopped: false });
  t.deepEqual(matcher.push('/'), { text: '', stopped: false });
  t.deepEqual(matcher.push('x'), { text: '</x', stopped: false });
  t.deepEqual(matcher.push('</'), { text: '', stopped: false });
  t.deepEqual(matcher.push('s!'), { text: '</s!', stopped: false });
  t.false(matcher.done);
});

test('a released near-match that starts a new candidate keeps holding only the candidate', (t) => {
  const matcher = new StopSequenceMatcher(['abc']);
  t.deepEqual(matcher.push('ab'), { text: '', stopped: false });
  // 'aba' is not a stop prefix but its suffix 'a' is.
  t.deepEqual(matcher.push('a'), { text: 'ab', stopped: false });
  t.deepEqual(matcher.push('bc'), { text: '', stopped: true, stop: 'abc' });
});

test('flush releases held text when generation ends for another reason', (t) => {
  const matcher = new StopSequenceMatcher(['<|im_end|>']);
  t.deepEqual(matcher.push('answer <|im'), { text: 'answer ', stopped: false });
  t.is(matcher.flush(), '<|im');
  t.is(matcher.flush(), '');
  t.false(matcher.done);
});

test('with several stop strings the earliest occurrence wins, whatever their order in the list', (t) => {
  for (const stops of [
    ['STOP', 'END'],
    ['END', 'STOP'],
  ]) {
    const whole = new StopSequenceMatcher(stops);
    t.deepEqual(whole.push('one END two STOP three'), { text: 'one ', stopped: true, stop: 'END' });

    const streamed = new StopSequenceMatcher(stops);
    const { emitted } = run(streamed, [...'one STO END two STOP three']);
    t.is(emitted.join(''), 'one STO ', `stops ${stops.join(',')}`);
  }
});

test('stop strings sharing a prefix hold text until one of them completes', (t) => {
  const matcher = new StopSequenceMatcher(['<end>', '<eos>']);
  t.deepEqual(matcher.push('x<e'), { text: 'x', stopped: false });
  t.deepEqual(matcher.push('o'), { text: '', stopped: false });
  t.deepEqual(matcher.push('s> after'), { text: '', stopped: true, stop: '<eos>' });
});

test('without stop strings every delta passes straight through', (t) => {
  for (const stops of [[], ['']]) {
    const matcher = new StopSequenceMatcher(stops);
    const deltas = ['abc<', '|end', '|>', ''];
    const { emitted, stopped } = run(matcher, deltas);
    t.deepEqual(emitted, deltas);
    t.deepEqual(stopped, [false, false, false, false]);
    t.is(matcher.flush(), '');
  }
});

test('the emitted text plus flush reconstructs the input when no stop string occurs', (t) => {
  const text = 'a <|e b <| c <|en';
  const matcher = new StopSequenceMatcher(['<|end|>']);
  const { emitted } = run(matcher, [...text]);
  t.is(emitted.join('') + matcher.flush(), text);
});
