/**
 * The sampling and stopping flags `anpd generate` and `anpd client` share: declared and parsed
 * once. Each value is undefined when its flag is absent, so each command applies its own default
 * (generate the engine's, client the server's).
 */
import { readFileSync } from 'node:fs';
import type { ResponseFormat } from '../contract.js';
import { AnpdError } from '../errors.js';

/** parseArgs options of the shared flags. */
export const SAMPLING_FLAG_OPTIONS = {
  'max-new-tokens': { type: 'string' },
  temperature: { type: 'string' },
  'top-k': { type: 'string' },
  'top-p': { type: 'string' },
  'repetition-penalty': { type: 'string' },
  seed: { type: 'string' },
  stop: { type: 'string', multiple: true },
  // Structured output (one of them): a JSON Schema file, any JSON, a regex, an EBNF grammar file.
  'json-schema': { type: 'string' },
  json: { type: 'boolean' },
  regex: { type: 'string' },
  grammar: { type: 'string' },
} as const;

type SamplingFlagValues = {
  readonly [K in Exclude<keyof typeof SAMPLING_FLAG_OPTIONS, 'stop' | 'json'>]?: string | undefined;
} & {
  readonly stop?: string[] | undefined;
  readonly json?: boolean | undefined;
};

export interface SamplingFlags {
  readonly maxNewTokens: number | undefined;
  readonly temperature: number | undefined;
  readonly topK: number | undefined;
  readonly topP: number | undefined;
  readonly repetitionPenalty: number | undefined;
  /** As given: the wire carries a uint64 as text, so the client passes it on unparsed. */
  readonly seed: string | undefined;
  readonly stopSequences: string[];
  readonly responseFormat: ResponseFormat | undefined;
}

export function parseSamplingFlags(values: SamplingFlagValues): SamplingFlags {
  return {
    maxNewTokens: numberFlag(values['max-new-tokens'], 'max-new-tokens'),
    temperature: numberFlag(values.temperature, 'temperature'),
    topK: numberFlag(values['top-k'], 'top-k'),
    topP: numberFlag(values['top-p'], 'top-p'),
    repetitionPenalty: numberFlag(values['repetition-penalty'], 'repetition-penalty'),
    seed: values.seed,
    stopSequences: values.stop ?? [],
    responseFormat: responseFormatFlags(values),
  };
}

/** --json-schema FILE | --json | --regex R | --grammar FILE: at most one. */
function responseFormatFlags(values: SamplingFlagValues): ResponseFormat | undefined {
  const given = (['json-schema', 'json', 'regex', 'grammar'] as const).filter(
    (k) => values[k] !== undefined && values[k] !== false,
  );
  if (given.length > 1)
    throw new AnpdError('INVALID_REQUEST', `--${given.join(', --')}: give at most one output constraint`);
  const read = (path: string, flag: string): string => {
    try {
      return readFileSync(path, 'utf8');
    } catch (error) {
      throw new AnpdError('INVALID_REQUEST', `--${flag} ${path}: ${(error as Error).message}`);
    }
  };
  if (values['json-schema'] !== undefined)
    return { type: 'json_schema', schema: read(values['json-schema'], 'json-schema') };
  if (values.json === true) return { type: 'json_object' };
  if (values.regex !== undefined) return { type: 'regex', pattern: values.regex };
  if (values.grammar !== undefined) return { type: 'grammar', ebnf: read(values.grammar, 'grammar') };
  return undefined;
}

/** A numeric flag's value; undefined when the flag is absent. */
export function numberFlag(value: string | undefined, name: string): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isFinite(n)) throw new AnpdError('INVALID_REQUEST', `--${name} must be a number, got "${value}"`);
  return n;
}
