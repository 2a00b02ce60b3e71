/**
 * "Never slower" with the caches on and cold (issue 34): the single-request bench prompts through
 * one engine, each request either without a cache scope (neither cache on its path: today's
 * in-process path) or under a fresh scope of its own (the prefix cache looked up and filled, a new
 * draft pool consulted every round and filled at the end — what every request over the transports
 * does the first time). Alternated per prompt, A B / B A; outputs must match token for token.
 *
 *   npm run bench:caches-cold [-- --reps 2 --max-new-tokens 96]   → bench/results/caches-cold.json
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { availableParallelism, cpus } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { DEFAULT_SPECULATION, type GenerateRequest, NO_SPECULATION } from '../src/contract.js';
import { createEngine } from '../src/engine/create-engine.js';
import type { Engine } from '../src/engine/engine.js';
import { projectRoot } from '../src/paths.js';
import { ensureDefaultModel } from '../src/registry/model-cache.js';
import { median } from '../tools/peer-metrics.js';

const CATEGORIES = ['code-editing', 'summarization', 'open-chat', 'document-qa'] as const;
const PROMPTS_PER_CATEGORY = 3;

async function timed(engine: Engine, request: GenerateRequest): Promise<{ ms: number; ids: number[] }> {
  const ids: number[] = [];
  const t0 = performance.now();
  for await (const event of engine.generate(request)) if (event.type === 'delta') ids.push(...event.tokenIds);
  return { ms: performance.now() - t0, ids };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: { reps: { type: 'string' }, 'max-new-tokens': { type: 'string' }, out: { type: 'string' } },
  });
  const reps = Number(values.reps ?? 2);
  const maxNewTokens = Number(values['max-new-tokens'] ?? 96);
  const prompts = CATEGORIES.flatMap((category) =>
    (JSON.parse(readFileSync(join(projectRoot(), `bench/prompts/${category}.json`), 'utf8')) as { prompt: string }[])
      .slice(0, PROMPTS_PER_CATEGORY)
      .map((p) => ({ category, prompt: p.prompt })),
  );
  const engine = await createEngine(await ensureDefaultModel(), {
    executionProvider: 'cpu',
    intraOpThreads: 0,
    kvCapacity: 4096,
  });
  let scopes = 0;
  const request = (prompt: string, speculate: boolean, cold: boolean): GenerateRequest => ({
    prompt: { kind: 'messages', messages: [{ role: 'user', content: prompt }] },
    maxNewTokens,
    speculation: speculate ? DEFAULT_SPECULATION : NO_SPECULATION,
    ...(cold ? { cacheScope: `cold-${scopes++}` } : {}),
  });
  await timed(engine, request(prompts[0]!.prompt, true, false)); // warm-up

  const rows: { category: string; mode: string; offMs: number[]; coldMs: number[] }[] = [];
  const ratios: Record<string, number[]> = { plain: [], anpd: [] };
  for (const { category, prompt } of prompts) {
    for (const mode of ['plain', 'anpd'] as const) {
      const row = { category, mode, offMs: [] as number[], coldMs: [] as number[] };
      for (let rep = 0; rep < reps; rep++) {
        const order = rep % 2 === 0 ? [false, true] : [true, false];
        const out: Record<string, number[]> = {};
        for (const cold of order) {
          const r = await timed(engine, request(prompt, mode === 'anpd', cold));
          (cold ? row.coldMs : row.offMs).push(Math.round(r.ms));
          out[String(cold)] = r.ids;
        }
        if (out['true']!.join() !== out['false']!.join())
          throw new Error(`${category} ${mode}: caches changed the output`);
      }
      const ratio = median(row.offMs) / median(row.coldMs);
      ratios[mode]!.push(ratio);
      rows.push(row);
      process.stderr.write(`${JSON.stringify({ ...row, coldOverOff: Number(ratio.toFixed(3)) })}\n`);
    }
  }
  const summary = Object.fromEntries(
    Object.entries(ratios).map(([mode, r]) => [
      mode,
      {
        medianSpeed: Number(median(r).toFixed(3)),
        range: [Number(Math.min(...r).toFixed(3)), Number(Math.max(...r).toFixed(3))],
      },
    ]),
  );
  const stats = engine.cacheStats();
  const result = {
    date: new Date().toISOString(),
    machine: { cpus: availableParallelism(), model: cpus()[0]?.model ?? 'unknown', node: process.version },
    command: `npm run bench:caches-cold -- --reps ${reps} --max-new-tokens ${maxNewTokens}`,
    what: 'speed with the caches on and cold (a fresh scope per request) over speed with no scope; > 1 = faster',
    outputsIdentical: true,
    rows,
    coldOverOff: summary,
    cachesAtEnd: stats,
  };
  const file = values.out ?? join(projectRoot(), 'bench', 'results', 'caches-cold.json');
  mkdirSync(join(file, '..'), { recursive: true });
  writeFileSync(file, `${JSON.stringify(result, null, 2)}\n`);
  process.stdout.write(`${file}\n${JSON.stringify(summary)}\n`);
  await engine.dispose();
}

await main();
