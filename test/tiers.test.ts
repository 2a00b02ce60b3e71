/** Every test file is in exactly one tier of test/tiers.json, so `npm run test:unit|model|e2e` together run them all. */
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import test from 'ava';

const TEST_DIR = fileURLToPath(new URL('../../test/', import.meta.url));

test('each test/*.test.ts file is named in exactly one tier', (t) => {
  const manifest = JSON.parse(readFileSync(join(TEST_DIR, 'tiers.json'), 'utf8')) as Record<string, unknown>;
  const tierOf = new Map<string, string[]>();
  for (const [tier, names] of Object.entries(manifest)) {
    if (tier.startsWith('$')) continue;
    t.true(Array.isArray(names), `tier ${tier} is a list of names`);
    for (const name of names as string[]) tierOf.set(name, [...(tierOf.get(name) ?? []), tier]);
  }
  const files = readdirSync(TEST_DIR)
    .filter((f) => f.endsWith('.test.ts'))
    .map((f) => f.slice(0, -'.test.ts'.length));
  t.true(files.length > 0);
  t.deepEqual(
    files.filter((f) => !tierOf.has(f)),
    [],
    'in no tier',
  );
  t.deepEqual(
    files.filter((f) => (tierOf.get(f)?.length ?? 0) > 1),
    [],
    'in more than one tier',
  );
});
