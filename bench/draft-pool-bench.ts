/**
 * Shared draft pools on an agent-like loop (issue 34): 20 requests that re-read the same four
 * files (the code of bench/prompts/code-editing.json) and answer with the same kinds of JSON tool
 * calls, in turns, greedy, one after another on the default model. Pools off (each request drafts
 * from its own prompt and output) against on (a fresh scope per run, filled as the loop goes),
 * alternated A B / B A; token ids must match request for request.
 *
 *   npm run bench:draft-pool [-- --reps 3 --max-new-tokens 160]   → bench/results/draft-pool.json
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
import { median } from '../tools/peer-metrics.js';

const round = (x: number, digits = 2) => Number(x.toFixed(digits));

/** The loop's requests: file f = i mod 4, tool t = ⌊i / 4⌋ mod 2 (each file and tool met 2–3 times). */
function agentTrace(): string[] {
  const prompts = JSON.parse(readFileSync(join(projectRoot(), 'bench/prompts/code-editing.json'), 'utf8')) as {
    prompt: string;
  }[];
  const files = prompts.slice(0, 4).map((p, i) => ({
    path: `src/module_${i}.py`,
    code: /```\w*\n([\s\S]*?)```/.exec(p.prompt)![1]!,
  }));
  const tools = [
    (path: string) =>
      `Reply with only a JSON tool call that writes this file back unchanged: {"tool": "write_file", "path": "${path}", "content": "<the file>"}.`,
    (path: string) =>
      `Reply with only a JSON tool call that reports on this file: {"tool": "report", "path": "${path}", "functions": [<each function name>], "summary": "<one sentence>"}.`,
  ];
  return Array.from({ length: 20 }, (_, i) => {
    const file = files[i % files.length]!;
    const tool = tools[Math.floor(i / files.length) % tools.length]!;
    return `You are a coding agent. Turn ${i + 1}. Here is ${file.path}:\n\n\`\`\`python\n${file.code}\`\`\`\n\n${tool(file.path)}`;
  });
}

interface RunResult {
  readonly ms: number;
  readonly tokens: number;
  readonly rounds: number;
  readonly accepted: number;
  readonly poolAccepted: number;
  readonly ids: number[][];
  /** Per request: verify steps, pool-accepted tokens, milliseconds. */
  readonly perRequest: { rounds: number; poolAccepted: number; ms: number; decodeMs: number }[];
  /** After each request's first token: the decode phase alone (its prefill is the same either way). */
  readonly decodeMs: number;
  readonly decodeTokens: number;
}

async function runLoop(engine: Engine, trace: readonly string[], maxNewTokens: number, scope: string | undefined) {
  const ids: number[][] = [];
  let tokens = 0;
  let rounds = 0;
  let accepted = 0;
  let poolAccepted = 0;
  let decodeMs = 0;
  let decodeTokens = 0;
  const perRequest: RunResult['perRequest'] = [];
  const t0 = performance.now();
  for (const prompt of trace) {
    const r0 = performance.now();
    const request: GenerateRequest = {
      prompt: { kind: 'messages', messages: [{ role: 'user', content: prompt }] },
      maxNewTokens,
      speculation: DEFAULT_SPECULATION,
      ...(scope !== undefined ? { cacheScope: scope } : {}),
    };
    const out: number[] = [];
    // The first delta's tokens came with the first token's time (a first round may commit a whole
    // draft): the decode phase is what follows it.
    let firstDeltaTokens = -1;
    for await (const event of engine.generate(request)) {
      if (event.type === 'delta') {
        if (firstDeltaTokens < 0 && event.tokenIds.length > 0) firstDeltaTokens = event.tokenIds.length;
        out.push(...event.tokenIds);
      } else {
        tokens += event.completionTokens;
        rounds += event.stats.rounds;
        accepted += event.stats.draftTokensAccepted;
        poolAccepted += event.stats.poolAcceptedTokens;
        decodeMs += event.totalMs - event.firstTokenMs;
        decodeTokens += event.completionTokens - Math.max(1, firstDeltaTokens);
        perRequest.push({
          rounds: event.stats.rounds,
          poolAccepted: event.stats.poolAcceptedTokens,
          ms: Math.round(performance.now() - r0),
          decodeMs: Math.round(event.totalMs - event.firstTokenMs),
        });
      }
    }
    ids.push(out);
  }
  return {
    ms: performance.now() - t0,
    tokens,
    rounds,
    accepted,
    poolAccepted,
    ids,
    perRequest,
    decodeMs,
    decodeTokens,
  } satisfies RunResult;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: { reps: { type: 'string' }, 'max-new-tokens': { type: 'string' }, out: { type: 'string' } },
  });
  const reps = Number(values.reps ?? 3);
  const maxNewTokens = Number(values['max-new-tokens'] ?? 160);
  const trace = agentTrace();
  const engine = await createEngine(await ensureDefaultModel(), {
    executionProvider: 'cpu',
    intraOpThreads: 0,
    kvCapacity: 4096,
  });
  await runLoop(engine, trace.slice(0, 2), 16, undefined); // warm-up

  const runs: {
    pools: 'off' | 'on';
    tokPerS: number;
    decodeTokPerS: number;
    tokensPerStep: number;
    poolAccepted: number;
    ms: number;
  }[] = [];
  const ratios: number[] = [];
  const decodeRatios: number[] = [];
  let lastPair: Record<'off' | 'on', RunResult> | undefined;
  for (let rep = 0; rep < reps; rep++) {
    const order: ('off' | 'on')[] = rep % 2 === 0 ? ['off', 'on'] : ['on', 'off'];
    const pair: Partial<Record<'off' | 'on', RunResult>> = {};
    for (const pools of order) {
      const r = await runLoop(engine, trace, maxNewTokens, pools === 'on' ? `bench-${rep}` : undefined);
      pair[pools] = r;
      const row = {
        pools,
        ms: Math.round(r.ms),
        tokPerS: round((r.tokens / r.ms) * 1000, 1),
        decodeTokPerS: round((r.decodeTokens / r.decodeMs) * 1000, 1),
        tokensPerStep: round(r.tokens / r.rounds, 3),
        poolAccepted: r.poolAccepted,
      };
      runs.push(row);
      process.stderr.write(`${JSON.stringify({ rep, ...row, tokens: r.tokens, rounds: r.rounds })}\n`);
    }
    const { off, on } = pair as Record<'off' | 'on', RunResult>;
    off.ids.forEach((ids, i) => {
      if (ids.join() !== on.ids[i]!.join()) throw new Error(`request ${i}: pools on changed the output`);
    });
    ratios.push(off.ms / on.ms);
    decodeRatios.push(off.decodeMs / on.decodeMs);
    lastPair = { off, on };
  }
  const result = {
    date: new Date().toISOString(),
    machine: { cpus: availableParallelism(), model: cpus()[0]?.model ?? 'unknown', node: process.version },
    command: `npm run bench:draft-pool -- --reps ${reps} --max-new-tokens ${maxNewTokens}`,
    requests: trace.length,
    maxNewTokens,
    outputsIdentical: true,
    runs,
    lastRepPerRequest: { off: lastPair?.off.perRequest, on: lastPair?.on.perRequest },
    /** Whole requests (prefill included: the same work either way) and the decode phase alone (the decode tok/s). */
    onOverOff: {
      medianSpeedup: round(median(ratios), 3),
      range: [round(Math.min(...ratios), 3), round(Math.max(...ratios), 3)],
      decodeMedianSpeedup: round(median(decodeRatios), 3),
      decodeRange: [round(Math.min(...decodeRatios), 3), round(Math.max(...decodeRatios), 3)],
    },
  };
  const out = values.out ?? join(projectRoot(), 'bench', 'results', 'draft-pool.json');
  mkdirSync(join(out, '..'), { recursive: true });
  writeFileSync(out, `${JSON.stringify(result, null, 2)}\n`);
  process.stdout.write(`${out}\n${JSON.stringify(result.onOverOff)}\n`);
  await engine.dispose();
}

await main();
