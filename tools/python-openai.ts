/**
 * The official Python `openai` client for the tests (issue 32: a second client nobody here wrote),
 * installed with pip into the ignored cache on first use (a fresh machine has Python and pip; no
 * venv module is needed: `pip install --target`, then PYTHONPATH).
 */
import { execFileSync } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { cacheDir } from '../src/paths.js';

/** The newest release the package index here holds. */
export const PYTHON_OPENAI = 'openai==3.63.0';

/** Python and the environment that imports `openai` from the cache, installing it once. */
export function ensurePythonOpenai(): { python: string; env: NodeJS.ProcessEnv } {
  const python = process.env['ANPD_PYTHON'] ?? 'python3';
  const target = join(cacheDir(), 'python', PYTHON_OPENAI.replace('==', '-'));
  const done = join(target, '.installed');
  if (!existsSync(done)) {
    execFileSync(
      python,
      [
        '-m',
        'pip',
        'install',
        '--quiet',
        '--disable-pip-version-check',
        '--upgrade',
        '--target',
        target,
        PYTHON_OPENAI,
      ],
      { stdio: ['ignore', 'inherit', 'pipe'], timeout: 600_000 },
    );
    writeFileSync(done, `${PYTHON_OPENAI}\n`);
  }
  return { python, env: { ...process.env, PYTHONPATH: target, PYTHONNOUSERSITE: '1' } };
}
