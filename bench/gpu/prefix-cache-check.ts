/**
 * The prefix cache on a GPU (issue 34): long prompts (two bench documents and a question: past one
 * 512-token prefill chunk) run cold and then from the cache, plain and ANPD; the token ids must be
 * the same, and the time to the first token shows what the cache saves.
 *
 *   node dist/bench/gpu/prefix-cache-check.js --model DIR [--execution-provider cuda] [--questions 4] [--out FILE]
 *
 * Exits 1 when a warm run's tokens differ from its cold run's.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { DEFAULT_SPECULATION, NO_SPECULATION } from '../../src/contract.js';
import { createEngine } from '../../src/engine/create-engine.js';
import type { Engine } from '../../src/engine/engine.js';
import { projectRoot } from '../../src/paths.js';
import { EXECUTION_PROVIDERS, type ExecutionProviderName } from '../../src/runtime/types.js';

const QUESTIONS = [
  'What is the main point?',
  'List two details.',
  'Who is it for?',
  'Summarize it in one line.',
  'What is missing?',
  'Name one risk.',
];

interface Run {
  ids: number[];
  cached: number;
  firstTokenMs: number;
}

async function run(
  engine: Engine,
  system: string,
  question: string,
  mode: 'none' | 'anpd',
  scope?: string,
): Promise<Run> {
  const out: Run = { ids: [], cached: 0, firstTokenMs: 0 };
  const started = performance.now();
  for await (const event of engine.generate({
    prompt: {
      kind: 'messages',
      messages: [
        { role: 'system', content: system },
        { role: 'user', content: question },
      ],
    },
    maxNewTokens: 48,
    speculation: mode === 'none' ? NO_SPECULATION : DEFAULT_SPECULATION,
    ...(scope !== undefined ? { cacheScope: scope } : {}),
  })) {
    if (event.type === 'delta') {
      if (out.ids.length === 0 && event.tokenIds.length > 0) out.firstTokenMs = performance.now() - started;
      out.ids.push(...event.tokenIds);
    } else out.cached = event.cachedPromptTokens ?? 0;
  }
  return out;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      model: { type: 'string' },
      'execution-provider': { type: 'string', default: 'cuda' },
      questions: { type: 'string', default: '4' },
      out: { type: 'string' },
    },
  });
  if (values.model === undefined) throw new Error('--model DIR is required');
  const provider = values['execution-provider'] as ExecutionProviderName;
  if (!EXECUTION_PROVIDERS.includes(provider))
    throw new Error(`--execution-provider must be one of ${EXECUTION_PROVIDERS.join(', ')}`);
  const doc = (name: string, i: number) =>
    (JSON.parse(readFileSync(join(projectRoot(), `bench/prompts/${name}.json`), 'utf8')) as { prompt: string }[])[i]!
      .prompt;
  const systems = [
    `${doc('document-qa', 0)}\n\n${doc('summarization', 0)}`,
    `${doc('summarization', 1)}\n\n${doc('code-editing', 0)}`,
  ];
  const engine = await createEngine(values.model, { executionProvider: provider, intraOpThreads: 4, kvCapacity: 4096 });
  const rows: Record<string, unknown>[] = [];
  let differing = 0;
  try {
    for (const [s, system] of systems.entries()) {
      for (const mode of ['none', 'anpd'] as const) {
        const scope = `check-${s}-${mode}`;
        await run(engine, system, 'Hello.', mode, scope);
        for (const question of QUESTIONS.slice(0, Number(values.questions))) {
          const cold = await run(engine, system, question, mode);
          const warm = await run(engine, system, question, mode, scope);
          const same = cold.ids.join() === warm.ids.join();
          if (!same) differing++;
          const row = {
            system: s,
            mode,
            question,
            same,
            cachedTokens: warm.cached,
            coldFirstTokenMs: +cold.firstTokenMs.toFixed(2),
            warmFirstTokenMs: +warm.firstTokenMs.toFixed(2),
          };
          rows.push(row);
          process.stdout.write(`${JSON.stringify(row)}\n`);
        }
      }
    }
  } finally {
    await engine.dispose();
  }
  const report = { model: values.model, provider, info: engine.info.name, runs: rows.length, differing, rows };
  process.stdout.write(`prefix cache: ${rows.length - differing}/${rows.length} warm runs equal their cold run\n`);
  if (values.out !== undefined) writeFileSync(values.out, `${JSON.stringify(report, null, 2)}\n`);
  if (differing > 0) process.exitCode = 1;
}

await main();
