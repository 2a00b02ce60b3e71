/**
 * The sampling and stopping flags `anpd generate` and `anpd client` share: declared and parsed
 * once. Each value is undefined when its flag is absent, so each command applies its own default
 * (generate the engine's, client the server's).
 */
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
} as const;

type SamplingFlagValues = {
  readonly [K in Exclude<keyof typeof SAMPLING_FLAG_OPTIONS, 'stop'>]?: string | undefined;
} & {
  readonly stop?: string[] | undefined;
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
  };
}

/** A numeric flag's value; undefined when the flag is absent. */
export function numberFlag(value: string | undefined, name: string): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isFinite(n)) throw new AnpdError('INVALID_REQUEST', `--${name} must be a number, got "${value}"`);
  return n;
}
