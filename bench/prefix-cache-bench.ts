/**
 * The prefix KV cache (issue 34) on this machine's CPU, default model, greedy, one request at a time:
 *  1. shared system prompt: a ~1,000-token system prompt (bench/prompts/long-context.json) and 16
 *     different questions; time to first token with the cache off and on (the first question fills it);
 *  2. multi-turn chat: 8 turns, the whole history re-sent each turn (as chat clients do); time to
 *     first token per turn and the conversation's total time, off and on.
 * Off and on alternate (A B / B A) over --reps; a fresh cache scope per run; token ids must match.
 *
 *   npm run bench:prefix-cache [-- --reps 3]   → bench/results/prefix-cache.json
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { availableParallelism, cpus } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { DEFAULT_SPECULATION, type GenerateRequest } from '../src/contract.js';
import { createEngine } from '../src/engine/create-engine.js';
import type { Engine } from '../src/engine/engine.js';
import { projectRoot } from '../src/paths.js';
import { ensureDefaultModel } from '../src/registry/model-cache.js';
import type { ChatMessage } from '../src/tokenizer/tokenizer.js';
import { median } from '../tools/peer-metrics.js';

const round = (x: number, digits = 1) => Number(x.toFixed(digits));

const QUESTIONS = [
  'What is the main point?',
  'List three details.',
  'Who would find this useful?',
  'Summarize it in one sentence.',
  'What is a weakness of the argument?',
  'Give a title for it.',
  'What happens first?',
  'What numbers does it mention?',
  'Explain it to a child.',
  'What is the tone?',
  'What would you ask the author?',
  'Name a related topic.',
  'What is missing?',
  'Rewrite the first sentence.',
  'Which part is most important?',
  'What could be cut?',
];

interface Timed {
  readonly ids: number[];
  readonly ttftMs: number;
  readonly totalMs: number;
  readonly text: string;
}

async function timed(engine: Engine, messages: ChatMessage[], maxNewTokens: number, scope: string | undefined) {
  const request: GenerateRequest = {
    prompt: { kind: 'messages', messages },
    maxNewTokens,
    speculation: DEFAULT_SPECULATION,
    ...(scope !== undefined ? { cacheScope: scope } : {}),
  };
  const t0 = performance.now();
  let ttftMs = 0;
  const ids: number[] = [];
  let text = '';
  for await (const event of engine.generate(request)) {
    if (event.type !== 'delta') continue;
    if (ttftMs === 0 && event.tokenIds.length > 0) ttftMs = performance.now() - t0;
    ids.push(...event.tokenIds);
    text += event.text;
  }
  return { ids, ttftMs, totalMs: performance.now() - t0, text } satisfies Timed;
}

/** About `tokens` tokens of the long-context prompts' text. */
function systemPrompt(engine: Engine, tokens: number): string {
  const texts = (
    JSON.parse(readFileSync(join(projectRoot(), 'bench/prompts/long-context.json'), 'utf8')) as { prompt: string }[]
  ).map((p) => p.prompt);
  const ids = engine.tokenizer.encode(texts.join('\n\n'), { addSpecialTokens: false }).slice(0, tokens);
  return engine.tokenizer.decode(ids);
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { reps: { type: 'string' }, out: { type: 'string' } } });
  const reps = Number(values.reps ?? 3);
  const engine = await createEngine(await ensureDefaultModel(), {
    executionProvider: 'cpu',
    intraOpThreads: 0,
    kvCapacity: 4096,
  });
  const system = systemPrompt(engine, 1000);
  const systemTokens = engine.tokenizePrompt({
    kind: 'messages',
    messages: [{ role: 'system', content: system }],
  }).length;
  await timed(engine, [{ role: 'user', content: 'Hi.' }], 4, undefined); // warm-up

  // 1. Shared system prompt.
  const sharedRuns: { cache: string; ttftMsMedian: number; ttftMsFirst: number }[] = [];
  const ttftRatios: number[] = [];
  for (let rep = 0; rep < reps; rep++) {
    const medians: Record<string, number> = {};
    for (const cache of rep % 2 === 0 ? ['off', 'on'] : ['on', 'off']) {
      const scope = cache === 'on' ? `shared-${rep}` : undefined;
      const runs: Timed[] = [];
      for (const q of QUESTIONS)
        runs.push(
          await timed(
            engine,
            [
              { role: 'system', content: system },
              { role: 'user', content: q },
            ],
            8,
            scope,
          ),
        );
      // The first question fills the cache: the hits are the other 15.
      medians[cache] = median(runs.slice(1).map((r) => r.ttftMs));
      sharedRuns.push({ cache, ttftMsMedian: round(medians[cache]!), ttftMsFirst: round(runs[0]!.ttftMs) });
      process.stderr.write(`shared system prompt, cache ${cache}: TTFT median ${medians[cache]!.toFixed(1)} ms\n`);
    }
    ttftRatios.push(medians['off']! / medians['on']!);
  }

  // 2. Multi-turn chat.
  const chatRuns: { cache: string; totalMs: number; ttftMs: number[] }[] = [];
  const chatRatios: number[] = [];
  const outputs: Record<string, string[]> = {};
  for (let rep = 0; rep < reps; rep++) {
    const totals: Record<string, number> = {};
    for (const cache of rep % 2 === 0 ? ['off', 'on'] : ['on', 'off']) {
      const scope = cache === 'on' ? `chat-${rep}` : undefined;
      const history: ChatMessage[] = [{ role: 'system', content: system.slice(0, 1500) }];
      const ttftMs: number[] = [];
      const replies: string[] = [];
      const t0 = performance.now();
      for (let turn = 0; turn < 8; turn++) {
        history.push({ role: 'user', content: QUESTIONS[turn]! });
        const r = await timed(engine, history, 48, scope);
        history.push({ role: 'assistant', content: r.text });
        ttftMs.push(round(r.ttftMs));
        replies.push(r.ids.join());
      }
      totals[cache] = performance.now() - t0;
      const previous = outputs[cache === 'on' ? 'off' : 'on'];
      if (previous !== undefined && previous.join('|') !== replies.join('|'))
        throw new Error('multi-turn chat: the cache changed a reply');
      outputs[cache] = replies;
      chatRuns.push({ cache, totalMs: Math.round(totals[cache]!), ttftMs });
      process.stderr.write(
        `multi-turn chat, cache ${cache}: ${totals[cache]!.toFixed(0)} ms, TTFT ${ttftMs.join(' ')}\n`,
      );
    }
    chatRatios.push(totals['off']! / totals['on']!);
  }

  const cache = engine.prefixCache!;
  const result = {
    date: new Date().toISOString(),
    machine: { cpus: availableParallelism(), model: cpus()[0]?.model ?? 'unknown', node: process.version },
    command: `npm run bench:prefix-cache -- --reps ${reps}`,
    sharedSystemPrompt: {
      systemPromptTokens: systemTokens,
      questions: QUESTIONS.length,
      runs: sharedRuns,
      ttftOffOverOn: {
        median: round(median(ttftRatios), 2),
        range: [round(Math.min(...ttftRatios), 2), round(Math.max(...ttftRatios), 2)],
      },
    },
    multiTurnChat: {
      turns: 8,
      runs: chatRuns,
      totalOffOverOn: {
        median: round(median(chatRatios), 3),
        range: [round(Math.min(...chatRatios), 3), round(Math.max(...chatRatios), 3)],
      },
      repliesIdentical: true,
    },
    cache: { hits: cache.hits, hitTokens: cache.hitTokens, misses: cache.misses, evictions: cache.evictions },
  };
  const out = values.out ?? join(projectRoot(), 'bench', 'results', 'prefix-cache.json');
  mkdirSync(join(out, '..'), { recursive: true });
  writeFileSync(out, `${JSON.stringify(result, null, 2)}\n`);
  process.stdout.write(
    `${out}\n${JSON.stringify({ ttft: result.sharedSystemPrompt.ttftOffOverOn, chat: result.multiTurnChat.totalOffOverOn })}\n`,
  );
  await engine.dispose();
}

await main();
