/**
 * GPU peers run, on one machine in one run: our engine on a GPU provider (plain and ANPD) against
 * llama.cpp built with CUDA (llama-simple: plain; llama-lookup: n-gram lookup) on the same GGUF and
 * the same chat-templated prompts, greedy, the same max new tokens, engines rotated per prompt.
 * Made for a GPU machine without network (docs/gpu.md, "Benchmarking on a GPU machine"):
 *
 *   node dist/bench/gpu-peers.js --model DIR --gguf FILE.gguf --llama-bin DIR [--execution-provider cuda]
 *        [--categories code-editing,summarization] [--prompts 10] [--max-new-tokens 128] [--out FILE]
 *
 * Decode speed: ours = completion tokens / (total − prefill) time; llama-simple = its own
 * "eval time" (tokens after the prompt); llama-lookup = its "decoded N tokens in S seconds".
 * Per category: total tokens / total decode seconds over the prompts.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { createEngine } from '../src/engine/create-engine.js';
import { DEFAULT_SPECULATION, NO_SPECULATION } from '../src/contract.js';
import { projectRoot } from '../src/paths.js';
import { EXECUTION_PROVIDERS, type ExecutionProviderName } from '../src/runtime/types.js';
import { generateOnce } from '../tools/generate-once.js';

interface Run {
  tokens: number;
  decodeMs: number;
  text?: string;
  ids?: number[];
  drafted?: number;
  accepted?: number;
}

function num(text: string, pattern: RegExp, what: string): number {
  const m = pattern.exec(text);
  if (m === null) throw new Error(`no ${what} in the output`);
  return Number(m[1]);
}

function runLlama(bin: string, args: readonly string[]): { stdout: string; stderr: string } {
  const r = spawnSync(bin, args, { encoding: 'utf8', maxBuffer: 64 << 20 });
  if (r.status !== 0) throw new Error(`${bin} exited ${r.status}: ${(r.stderr ?? '').slice(-1500)}`);
  return { stdout: r.stdout, stderr: r.stderr };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      model: { type: 'string' },
      gguf: { type: 'string' },
      'llama-bin': { type: 'string' },
      'execution-provider': { type: 'string', default: 'cuda' },
      categories: { type: 'string', default: 'code-editing,summarization' },
      prompts: { type: 'string', default: '10' },
      'max-new-tokens': { type: 'string', default: '128' },
      'draft-n-max': { type: 'string', default: '10' },
      'rows-min': { type: 'string' },
      'greedy-on-device': { type: 'string', default: 'on' },
      'weight-gemm': { type: 'string' },
      out: { type: 'string' },
    },
  });
  const provider = values['execution-provider'] as ExecutionProviderName;
  if (!EXECUTION_PROVIDERS.includes(provider))
    throw new Error(`--execution-provider must be one of ${EXECUTION_PROVIDERS.join(', ')}`);
  if (values.model === undefined || values.gguf === undefined || values['llama-bin'] === undefined)
    throw new Error('--model, --gguf and --llama-bin are required');
  const maxNew = Number(values['max-new-tokens']);
  const promptsMax = Number(values.prompts);
  const simple = join(values['llama-bin'], 'llama-simple');
  const lookup = join(values['llama-bin'], 'llama-lookup');
  const log = (line: string): void => void process.stderr.write(`[gpu-peers] ${line}\n`);

  const rows = values['rows-min'] !== undefined ? { forwardRowsMin: Number(values['rows-min']) } : {};
  const greedyOnDevice = values['greedy-on-device'] !== 'off';
  const engine = await createEngine(values.model, {
    executionProvider: provider,
    intraOpThreads: 4,
    kvCapacity: 2048,
    experimental: { greedyOnDevice, weightOnlyGemm: values['weight-gemm'] === 'on' },
    ...rows,
  });
  log(
    `ours: ${engine.info.executionProvider}, runner ${engine.info.runner}, ${engine.info.forwardRowsMin} rows per forward, greedy on device ${greedyOnDevice}`,
  );
  const bosText =
    engine.info.bosTokenId === undefined
      ? ''
      : engine.tokenizer.decode([engine.info.bosTokenId], { skipSpecialTokens: false });
  for (let i = 0; i < 3; i++) {
    await generateOnce(engine, 'Hello there', NO_SPECULATION, 16);
    await generateOnce(engine, 'Hello there', DEFAULT_SPECULATION, 16);
  }
  const engines = [
    'ours plain',
    'ours ANPD',
    'llama.cpp plain (llama-simple)',
    `llama.cpp lookup (llama-lookup --spec-draft-n-max ${values['draft-n-max']})`,
  ] as const;
  type Name = (typeof engines)[number];
  const results: Record<string, unknown>[] = [];
  for (const category of values.categories!.split(',')) {
    const prompts = (
      JSON.parse(readFileSync(join(projectRoot(), 'bench', 'prompts', `${category}.json`), 'utf8')) as {
        id: string;
        prompt: string;
      }[]
    ).slice(0, promptsMax);
    const totals: Partial<Record<Name, { tokens: number; ms: number; drafted: number; accepted: number }>> =
      Object.fromEntries(engines.map((e) => [e, { tokens: 0, ms: 0, drafted: 0, accepted: 0 }]));
    let identical = 0;
    let lookupSameAsSimple = 0;
    for (const [i, p] of prompts.entries()) {
      // llama.cpp's examples add the BOS token themselves: a template that writes it (Gemma's) would give two.
      const rendered = engine.tokenizer.applyChatTemplate([{ role: 'user', content: p.prompt }]);
      const text = bosText !== '' && rendered.startsWith(bosText) ? rendered.slice(bosText.length) : rendered;
      const runs: Partial<Record<Name, Run>> = {};
      const order = [...engines.slice(i % engines.length), ...engines.slice(0, i % engines.length)];
      for (const name of order) {
        if (name === 'ours plain' || name === 'ours ANPD') {
          const s = await generateOnce(
            engine,
            p.prompt,
            name === 'ours plain' ? NO_SPECULATION : DEFAULT_SPECULATION,
            maxNew,
          );
          runs[name] = {
            tokens: s.final.completionTokens,
            decodeMs: s.final.totalMs - s.final.prefillMs,
            ids: s.tokens,
            drafted: s.final.stats.draftTokensProposed,
            accepted: s.final.stats.draftTokensAccepted,
          };
        } else if (name === 'llama.cpp plain (llama-simple)') {
          const { stdout, stderr } = runLlama(simple, ['-m', values.gguf, '-n', String(maxNew), '-ngl', '99', text]);
          // llama_perf_context_print: eval time = X ms / N runs: the tokens after the prompt.
          // (Not "prompt eval time", the line before it.)
          const evalMs = num(stderr, /(?<!prompt )\beval time\s*=\s*([\d.]+) ms/, 'eval time');
          const evalRuns = num(stderr, /(?<!prompt )\beval time\s*=\s*[\d.]+ ms\s*\/\s*(\d+) runs/, 'eval runs');
          runs[name] = { tokens: evalRuns, decodeMs: evalMs, text: stdout };
        } else {
          const { stdout, stderr } = runLlama(lookup, [
            '-m',
            values.gguf,
            '-p',
            text,
            '-n',
            String(maxNew - 1),
            '-ngl',
            '99',
            '-c',
            '2048',
            '--temp',
            '0',
            '-s',
            '1',
            '--spec-draft-n-max',
            values['draft-n-max']!,
          ]);
          runs[name] = {
            tokens: num(stderr, /decoded\s+(\d+) tokens in/, 'decoded line'),
            decodeMs: num(stderr, /decoded\s+\d+ tokens in\s+([\d.]+) seconds/, 'decode time') * 1000,
            drafted: num(stderr, /n_drafted\s+=\s+(\d+)/, 'n_drafted'),
            accepted: num(stderr, /n_accept\s+=\s+(\d+)/, 'n_accept'),
            text: stdout,
          };
        }
      }
      for (const name of engines) {
        const r = runs[name]!;
        const t = totals[name]!;
        t.tokens += r.tokens;
        t.ms += r.decodeMs;
        t.drafted += r.drafted ?? 0;
        t.accepted += r.accepted ?? 0;
      }
      if (runs['ours plain']!.ids!.join() === runs['ours ANPD']!.ids!.join()) identical++;
      else log(`MISMATCH plain vs ANPD on ${p.id}`);
      const simpleText = runs['llama.cpp plain (llama-simple)']?.text ?? '';
      const lookupText = runs[engines[3]]?.text ?? '';
      // Both print the prompt, then the continuation: compare the first 200 characters after it.
      const marker = text.trimEnd().slice(-10);
      const tail = (s: string): string =>
        s
          .slice(s.lastIndexOf(marker) + marker.length)
          .trim()
          .slice(0, 200);
      if (tail(simpleText) === tail(lookupText)) lookupSameAsSimple++;
      else if (i === 0)
        log(
          `llama-simple: ${JSON.stringify(tail(simpleText).slice(0, 120))} | llama-lookup: ${JSON.stringify(tail(lookupText).slice(0, 120))}`,
        );
    }
    const tokS = (name: Name): number => +((totals[name]!.tokens / totals[name]!.ms) * 1000).toFixed(1);
    const row = {
      category,
      prompts: prompts.length,
      tokPerS: Object.fromEntries(engines.map((e) => [e, tokS(e)])),
      oursPlainVsLlamaPlain: +(tokS('ours plain') / tokS('llama.cpp plain (llama-simple)')).toFixed(2),
      oursAnpdVsLlamaPlain: +(tokS('ours ANPD') / tokS('llama.cpp plain (llama-simple)')).toFixed(2),
      oursAnpdVsLlamaLookup: +(tokS('ours ANPD') / tokS(engines[3])).toFixed(2),
      oursAcceptance: +(totals['ours ANPD']!.accepted / Math.max(1, totals['ours ANPD']!.drafted)).toFixed(3),
      llamaLookupAcceptance: +(totals[engines[3]]!.accepted / Math.max(1, totals[engines[3]]!.drafted)).toFixed(3),
      oursPlainEqualsAnpd: `${identical}/${prompts.length}`,
      llamaLookupTextStartsLikeSimple: `${lookupSameAsSimple}/${prompts.length}`,
    };
    results.push(row);
    log(JSON.stringify(row));
  }
  await engine.dispose();
  const bench = spawnSync(
    join(values['llama-bin'], 'llama-bench'),
    ['-m', values.gguf, '-ngl', '99', '-p', '512', '-n', '128', '-o', 'json'],
    { encoding: 'utf8' },
  );
  const report = {
    date: new Date().toISOString(),
    provider,
    forwardRows: engine.info.forwardRowsMin,
    greedyOnDevice,
    model: engine.info.name,
    maxNewTokens: maxNew,
    results,
    llamaBench:
      bench.status === 0 ? (JSON.parse(bench.stdout) as unknown) : `failed: ${(bench.stderr ?? '').slice(-500)}`,
  };
  process.stdout.write(`${JSON.stringify(report)}\n`);
  if (values.out !== undefined) writeFileSync(values.out, `${JSON.stringify(report, null, 2)}\n`);
}

await main();
