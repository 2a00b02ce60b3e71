import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { ensureGhz } from '../../tools/go-tools.js';

export interface GhzReport {
  count: number;
  rps: number;
  average: number;
  statusCodeDistribution: Record<string, number>;
  errorDistribution?: Record<string, number>;
}

/** Asynchronous: the server under test may live in this process's event loop. */
export async function runGhz(args: readonly string[]): Promise<GhzReport> {
  const { stdout } = await promisify(execFile)(ensureGhz(), ['--insecure', '-O', 'json', ...args], {
    encoding: 'utf8',
    timeout: 300_000,
    maxBuffer: 64 << 20,
  });
  return JSON.parse(stdout) as GhzReport;
}
