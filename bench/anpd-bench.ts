/**
 * ANPD benchmark by task category: plain greedy vs adaptive n-gram speculation vs the paper's fixed
 * setting (N = 5, K = 7), same process, runs interleaved per prompt. Also checks that all three
 * produced identical tokens. A table on stdout, JSON under bench/results/.
 *
 *   npm run bench [-- --runs 2 --max-new-tokens 128 --categories summarization,code-editing]
 */
import { execSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { availableParallelism, cpus } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { createEngine } from '../src/engine/create-engine.js';
import { DEFAULT_SPECULATION, NO_SPECULATION, PAPER_SPECULATION, type SpeculationOptions } from '../src/contract.js';
import { projectRoot } from '../src/paths.js';
import { ensureDefaultModel } from '../src/registry/model-cache.js';
import { generateOnce, type Sample } from '../tools/generate-once.js';

const MODES = { plain: NO_SPECULATION, adaptive: DEFAULT_SPECULATION, paper: PAPER_SPECULATION } satisfies Record<
  string,
  SpeculationOptions
>;
type Mode = keyof typeof MODES;

interface Totals {
  tokens: number;
  decodeMs: number;
  rounds: number;
  drafted: number;
  accepted: number;
  draftMs: number;
  speedups: number[];
}

function median(a: number[]): number {
  const s = [...a].sort((x, y) => x - y);
  return s.length === 0 ? NaN : s.length % 2 ? s[s.length >> 1]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      runs: { type: 'string', default: '2' },
      'max-new-tokens': { type: 'string', default: '128' },
      categories: { type: 'string', default: 'summarization,code-editing,document-qa,open-chat' },
      out: { type: 'string', default: 'bench/results/anpd.json' },
    },
  });
  const runs = Number(values.runs);
  const maxNewTokens = Number(values['max-new-tokens']);
  const categories = values.categories!.split(',');
  const root = projectRoot();
  const threads = availableParallelism();
  const engine = await createEngine(await ensureDefaultModel(), {
    executionProvider: 'cpu',
    intraOpThreads: threads,
    kvCapacity: 4096,
  });
  const forwardCost = await engine.forwardCost(9);
  process.stderr.write(
    `forward cost T=1..9 relative to T=1: ${forwardCost
      .slice(1)
      .map((c) => c.toFixed(2))
      .join(' ')}\n`,
  );
  // Warm-up so the first measured prompt does not pay for lazy allocations.
  await generateOnce(engine, 'Hello', NO_SPECULATION, 8);
  await generateOnce(engine, 'Hello', DEFAULT_SPECULATION, 8);

  const results: Record<string, Record<Mode, Totals>> = {};
  let mismatches = 0;
  for (const category of categories) {
    const prompts = JSON.parse(readFileSync(join(root, 'bench', 'prompts', `${category}.json`), 'utf8')) as {
      id: string;
      prompt: string;
    }[];
    const totals = Object.fromEntries(
      Object.keys(MODES).map((m) => [
        m,
        { tokens: 0, decodeMs: 0, rounds: 0, drafted: 0, accepted: 0, draftMs: 0, speedups: [] },
      ]),
    ) as unknown as Record<Mode, Totals>;
    for (const [pi, p] of prompts.entries()) {
      for (let r = 0; r < runs; r++) {
        // Rotate the order so no mode always runs first (cache and frequency effects).
        const order = (Object.keys(MODES) as Mode[]).map((_, i, a) => a[(i + pi + r) % a.length]!);
        const samples = {} as Record<Mode, Sample>;
        for (const m of order) samples[m] = await generateOnce(engine, p.prompt, MODES[m], maxNewTokens);
        for (const m of order) {
          const s = samples[m];
          if (s.tokens.join() !== samples.plain.tokens.join()) {
            mismatches++;
            process.stderr.write(`MISMATCH ${p.id} ${m}\n`);
          }
          const t = totals[m];
          const decodeMs = s.final.totalMs - s.final.prefillMs;
          t.tokens += s.final.completionTokens;
          t.decodeMs += decodeMs;
          t.rounds += s.final.stats.rounds;
          t.drafted += s.final.stats.draftTokensProposed;
          t.accepted += s.final.stats.draftTokensAccepted;
          t.draftMs += s.final.stats.draftMs;
          const plainMs = samples.plain.final.totalMs - samples.plain.final.prefillMs;
          t.speedups.push(plainMs / decodeMs);
        }
      }
      process.stderr.write(`${category} ${pi + 1}/${prompts.length}\n`);
    }
    results[category] = totals;
  }

  const rows = [];
  for (const [category, totals] of Object.entries(results)) {
    const plainTokS = (totals.plain.tokens / totals.plain.decodeMs) * 1000;
    for (const mode of ['adaptive', 'paper'] as Mode[]) {
      const t = totals[mode];
      const tokS = (t.tokens / t.decodeMs) * 1000;
      rows.push({
        category,
        mode,
        prompts: t.speedups.length / runs,
        plainTokPerS: +plainTokS.toFixed(1),
        anpdTokPerS: +tokS.toFixed(1),
        speedup: +(tokS / plainTokS).toFixed(2),
        medianPromptSpeedup: +median(t.speedups).toFixed(2),
        tau: +(t.tokens / t.rounds).toFixed(2),
        acceptance: t.drafted > 0 ? +(t.accepted / t.drafted).toFixed(3) : 0,
        draftTokensPerRound: +(t.drafted / t.rounds).toFixed(2),
        draftUsPerRound: +((t.draftMs / t.rounds) * 1000).toFixed(1),
      });
    }
  }
  const header =
    '| category | mode | plain tok/s | ANPD tok/s | speedup | median prompt speedup | τ | acceptance | drafted/round | drafting µs/round |';
  const lines = [header, '|---|---|---|---|---|---|---|---|---|---|'];
  for (const r of rows) {
    lines.push(
      `| ${r.category} | ${r.mode} | ${r.plainTokPerS} | ${r.anpdTokPerS} | ${r.speedup}× | ${r.medianPromptSpeedup}× | ${r.tau} | ${r.acceptance} | ${r.draftTokensPerRound} | ${r.draftUsPerRound} |`,
    );
  }
  process.stdout.write(
    `${lines.join('\n')}\n\noutputs identical across modes: ${mismatches === 0 ? 'yes' : `NO (${mismatches} mismatches)`}\n`,
  );
  let revision = 'unknown';
  try {
    revision = execSync('git rev-parse --short HEAD', { cwd: root }).toString().trim();
  } catch {}
  mkdirSync(join(root, 'bench', 'results'), { recursive: true });
  writeFileSync(
    join(root, values.out!),
    `${JSON.stringify(
      {
        benchmark: 'anpd',
        model: engine.model.info.name,
        date: new Date().toISOString(),
        machine: { cpu: cpus()[0]?.model, cores: threads, node: process.version },
        revision,
        settings: { runs, maxNewTokens, modes: MODES, forwardCost },
        mismatches,
        rows,
      },
      null,
      2,
    )}\n`,
  );
  await engine.model.dispose();
}

main().catch((e: unknown) => {
  process.stderr.write(`${(e as Error).stack ?? String(e)}\n`);
  process.exitCode = 1;
});
