#!/usr/bin/env node
/**
 * Runs the compiled tests of one or more tiers named in test/tiers.json:
 *   node scripts/test-tier.mjs unit [model e2e] [ava flags…]
 * Run after `tsc` (the files are dist/test/<name>.test.js). Which file is in which tier is
 * test/tiers.json's; test/tiers.test.ts fails when a test file is in no tier or in two.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const tiers = JSON.parse(readFileSync(join(root, 'test', 'tiers.json'), 'utf8'));
const args = process.argv.slice(2);
const names = args.filter((a) => !a.startsWith('-'));
const avaFlags = args.filter((a) => a.startsWith('-'));
if (names.length === 0) {
  console.error(`usage: node scripts/test-tier.mjs TIER… [ava flags]; tiers: ${tierNames().join(', ')}`);
  process.exit(2);
}
const files = [];
for (const tier of names) {
  const list = tiers[tier];
  if (!Array.isArray(list)) {
    console.error(`test-tier: no tier "${tier}" in test/tiers.json (tiers: ${tierNames().join(', ')})`);
    process.exit(2);
  }
  for (const name of list) {
    const file = join('dist', 'test', `${name}.test.js`);
    // A name listed before its file lands (another branch adds it) is skipped, not an error.
    if (existsSync(join(root, file))) files.push(file);
    else
      console.warn(
        `test-tier: ${tier} lists ${name}, but ${file} does not exist (not built, or no test/${name}.test.ts)`,
      );
  }
}
const ava = join(root, 'node_modules', 'ava', 'entrypoints', 'cli.mjs');
const r = spawnSync(process.execPath, [ava, ...avaFlags, ...files], { cwd: root, stdio: 'inherit' });
process.exit(r.status ?? 1);

function tierNames() {
  return Object.keys(tiers).filter((k) => !k.startsWith('$'));
}
