/**
 * Go programs the tests and the load script use, installed from the Go module proxy on first use
 * (a fresh machine has Go but not these).
 */
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';

export const GHZ_MODULE = 'github.com/bojand/ghz/cmd/ghz@v0.121.0';
/** The newest kustomize that builds with this machine's Go (1.26). */
export const KUSTOMIZE_MODULE = 'sigs.k8s.io/kustomize/kustomize/v5@v5.8.2';

/** Path of `binary`: on PATH, in GOPATH/bin, or installed there now with `go install module`. */
export function ensureGoTool(binary: string, module: string): string {
  try {
    return execFileSync('sh', ['-c', `command -v ${binary}`], { encoding: 'utf8' }).trim();
  } catch {
    // not on PATH
  }
  const gopath = execFileSync('go', ['env', 'GOPATH'], { encoding: 'utf8' }).trim();
  const path = join(gopath, 'bin', binary);
  if (!existsSync(path)) execFileSync('go', ['install', module], { stdio: 'inherit', timeout: 900_000 });
  return path;
}

export function ensureGhz(): string {
  return ensureGoTool('ghz', GHZ_MODULE);
}

export function ensureKustomize(): string {
  return ensureGoTool('kustomize', KUSTOMIZE_MODULE);
}
