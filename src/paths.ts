/** Where the project and its cache are: a leaf every layer may import (it imports nothing of ours). */
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The project root (where package.json is), found from this file's location. */
export function projectRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 8; i++) {
    if (existsSync(join(dir, 'package.json'))) return dir;
    dir = dirname(dir);
  }
  return process.cwd();
}

/** ANPD_CACHE_DIR, else `.cache/` in the project (ignored by git). */
export function cacheDir(): string {
  return resolve(process.env['ANPD_CACHE_DIR'] ?? join(projectRoot(), '.cache'));
}
