import { execFile, execFileSync } from 'node:child_process';
import { promisify } from 'node:util';
import { existsSync } from 'node:fs';
import { join } from 'node:path';

export const GHZ_MODULE = 'github.com/bojand/ghz/cmd/ghz@v0.121.0';

/** Path of the ghz binary: on PATH, in GOPATH/bin, or installed there now with `go install`. */
export function ensureGhz(): string {
  try {
    return execFileSync('sh', ['-c', 'command -v ghz'], { encoding: 'utf8' }).trim();
  } catch {
    // not on PATH
  }
  const gopath = execFileSync('go', ['env', 'GOPATH'], { encoding: 'utf8' }).trim();
  const binary = join(gopath, 'bin', 'ghz');
  if (!existsSync(binary)) execFileSync('go', ['install', GHZ_MODULE], { stdio: 'inherit', timeout: 600_000 });
  return binary;
}

export interface GhzReport {
  count: number;
  rps: number;
  average: number;
  statusCodeDistribution: Record<string, number>;
  errorDistribution?: Record<string, number>;
}

/** Asynchronous: the server under test may live in this process's event loop. */
export async function runGhz(args: readonly string[]): Promise<GhzReport> {
  const { stdout } = await promisify(execFile)(ensureGhz(), ['--insecure', '-O', 'json', ...args], { encoding: 'utf8', timeout: 300_000, maxBuffer: 64 << 20 });
  return JSON.parse(stdout) as GhzReport;
}
