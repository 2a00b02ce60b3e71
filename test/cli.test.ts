/** The CLI's answer to flags it does not know: one line naming the flag, the command's usage, exit 2 — no stack trace. */
import { spawnSync } from 'node:child_process';
import test from 'ava';

const CLI = new URL('../src/cli/main.js', import.meta.url).pathname;

function run(...args: string[]) {
  return spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 60_000 });
}

for (const [command, usage] of [
  ['client', /^anpd client "PROMPT"/m],
  ['health', /^anpd health/m],
  ['generate', /^generate options:/m],
] as const) {
  test(`anpd ${command} with an unknown flag prints one line and the usage, exit 2`, (t) => {
    const r = run(command, '--port-bogus', '1');
    t.is(r.status, 2);
    const [first] = r.stderr.split('\n');
    t.is(first, `anpd ${command}: unknown option --port-bogus`);
    t.regex(r.stderr, usage);
    t.notRegex(r.stderr, /TypeError|    at /, 'no stack trace');
  });
}

test('a flag given without its value is named too', (t) => {
  const r = run('client', 'hi', '--max-new-tokens');
  t.is(r.status, 2);
  t.regex(r.stderr.split('\n')[0]!, /^anpd client: option --max-new-tokens needs a value/);
});
