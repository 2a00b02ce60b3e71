/** One chat generation collected into its token ids and final statistics (the benches' unit of work). */
import type { Engine } from '../src/engine/engine.js';
import type { GenerationFinal, SpeculationOptions } from '../src/contract.js';

export interface Sample {
  tokens: number[];
  final: GenerationFinal;
}

export async function generateOnce(
  engine: Engine,
  prompt: string,
  speculation: SpeculationOptions,
  maxNewTokens: number,
): Promise<Sample> {
  const tokens: number[] = [];
  let final: GenerationFinal | undefined;
  for await (const e of engine.generate({
    prompt: { kind: 'text', text: prompt, chat: true },
    maxNewTokens,
    speculation,
  })) {
    if (e.type === 'delta') tokens.push(...e.tokenIds);
    else final = e;
  }
  return { tokens, final: final! };
}
