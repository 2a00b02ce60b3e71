/**
 * `anpd serve --help` (SERVE_HELP), docs/configuration.md and the parser (SERVER_SETTINGS,
 * parseServerConfig) name the same settings, the same variables and the same defaults. The parser
 * is the truth: where the others disagree with it, they are wrong.
 */
import { readFileSync } from 'node:fs';
import test from 'ava';
import { parseServerConfig, SERVE_HELP, SERVER_SETTINGS, type ServerConfig } from '../src/config/server-config.js';

type Key = keyof ServerConfig;
interface Documented {
  readonly env: readonly string[];
  /** The default as written, up to its first remark (parenthesised or after a semicolon), without backticks. */
  readonly defaultValue: string;
}

const DOCS = readFileSync(new URL('../../docs/configuration.md', import.meta.url), 'utf8');
const ENV_NAME = /\b(?:ANPD_[A-Z_]+|PORT)\b/g;

/** Defaults the parser computes (from the cores, another setting or the model): help and docs must write them alike. */
const COMPUTED: readonly Key[] = ['modelDir', 'modelName', 'maxActiveSequences', 'maxQueuedRequests', 'engineReplicas'];

function defaultHead(text: string): string {
  const head = text.replace(/`/g, '').split(/ \(|;/)[0]!.trim();
  return head === '—' || head === '-' ? 'none' : head;
}

/** SERVE_HELP's option lines: `--flag ARGS   ENV [or ENV]   default…`, defaults continued on indented lines. */
function helpSettings(): Map<string, Documented> {
  const rows = new Map<string, { env: string[]; text: string }>();
  let last: { env: string[]; text: string } | undefined;
  for (const line of SERVE_HELP.split('\n')) {
    const option = /^ {2}--([a-z-]+)\s/.exec(line);
    if (option !== null) {
      const env = [...line.matchAll(ENV_NAME)].map((m) => m[0]);
      const lastEnv = [...line.matchAll(ENV_NAME)].at(-1);
      const text =
        lastEnv === undefined
          ? ''
          : line
              .slice(lastEnv.index + lastEnv[0].length)
              .replace(/^\)/, '')
              .trim();
      last = { env, text };
      if (rows.has(option[1]!)) throw new Error(`--${option[1]} is in SERVE_HELP twice`);
      rows.set(option[1]!, last);
    } else if (last !== undefined && /^ {20,}\S/.test(line)) {
      last.text += ` ${line.trim()}`;
    } else {
      last = undefined;
    }
  }
  return new Map([...rows].map(([flag, r]) => [flag, { env: r.env, defaultValue: defaultHead(r.text) }]));
}

/** docs/configuration.md's settings table: `| \`--flag\` | \`ENV\` … | default | meaning |`. */
function docsSettings(): Map<string, Documented> {
  const rows = new Map<string, Documented>();
  for (const line of DOCS.split('\n')) {
    const cells = line.split('|').map((c) => c.trim());
    const flag = /^`--([a-z-]+)`$/.exec(cells[1] ?? '');
    if (flag === null) continue;
    if (rows.has(flag[1]!)) throw new Error(`--${flag[1]} is in docs/configuration.md twice`);
    rows.set(flag[1]!, {
      env: [...(cells[2] ?? '').matchAll(ENV_NAME)].map((m) => m[0]),
      defaultValue: defaultHead(cells[3] ?? ''),
    });
  }
  return rows;
}

/** What the parser gives with nothing set, as the help and the docs should write it; undefined for COMPUTED. */
function parserDefault(key: Key): string | undefined {
  if (COMPUTED.includes(key)) return undefined;
  // A probe that finds webgpu shows that the default is auto (no probe: cpu).
  const value = parseServerConfig([], {}, () => ({ provider: 'webgpu', reason: 'test' }))[key];
  if (key === 'executionProvider') return value === 'webgpu' ? 'auto' : String(value);
  return value === undefined ? 'none' : String(value);
}

const settings = Object.entries(SERVER_SETTINGS) as [Key, (typeof SERVER_SETTINGS)[Key]][];

test('the help, the docs and the parser name the same flags', (t) => {
  const flags = settings.map(([, s]) => s.flag).sort();
  t.deepEqual([...helpSettings().keys()].sort(), flags, 'SERVE_HELP');
  t.deepEqual([...docsSettings().keys()].sort(), flags, 'docs/configuration.md');
});

test('the help and the docs name each setting by the variables the parser reads', (t) => {
  const help = helpSettings();
  const docs = docsSettings();
  for (const [, s] of settings) {
    t.deepEqual(help.get(s.flag)?.env, [...s.env], `SERVE_HELP --${s.flag}`);
    t.deepEqual(docs.get(s.flag)?.env, [...s.env], `docs/configuration.md --${s.flag}`);
  }
});

test("the help and the docs give the parser's defaults", (t) => {
  const help = helpSettings();
  const docs = docsSettings();
  const wrong: string[] = [];
  for (const [key, s] of settings) {
    const helpDefault = help.get(s.flag)?.defaultValue;
    const docsDefault = docs.get(s.flag)?.defaultValue;
    const expected = parserDefault(key);
    if (expected === undefined) {
      // Computed: the help and the docs write the same rule (server-config.test.ts checks the parser's).
      if (docsDefault?.toLowerCase() !== helpDefault?.toLowerCase())
        wrong.push(`--${s.flag}: docs "${docsDefault}", help "${helpDefault}"`);
    } else {
      if (helpDefault !== expected) wrong.push(`--${s.flag}: help "${helpDefault}", parser "${expected}"`);
      if (docsDefault !== expected) wrong.push(`--${s.flag}: docs "${docsDefault}", parser "${expected}"`);
    }
  }
  t.deepEqual(wrong, []);
});
