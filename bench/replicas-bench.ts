/**
 * Concurrent sequences on one device: aggregate decode tok/s for S streams in flight over R model
 * replicas (EnginePool: one worker thread and ORT session each), batched forwards off and on
 * (--batch-model DIR, a K-slot graph), speculation off and on, with every output checked against
 * the same prompt's first output.
 *   node dist/bench/replicas-bench.js --execution-provider webgpu --model DIR --replicas 1,2,4 --streams 1,4,16 --out r.json
 *   node dist/bench/replicas-bench.js --model DIR --batch-model DIR2,DIR4,DIR8,DIR16 --streams 1,4,16,64 --threads 2
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { EnginePool } from '../src/engine/engine-pool.js';
import {
  DEFAULT_SPECULATION,
  type GenerateRequest,
  type GenerationFinal,
  NO_SPECULATION,
  type SpeculationOptions,
} from '../src/contract.js';
import { projectRoot } from '../src/paths.js';
import { type DeviceRunMode, EXECUTION_PROVIDERS, type ExecutionProviderName } from '../src/runtime/types.js';

interface Outcome {
  tokens: number[];
  final: GenerationFinal;
}

async function generate(
  pool: EnginePool,
  prompt: string,
  speculation: SpeculationOptions,
  maxNewTokens: number,
  onTokens?: (count: number) => void,
): Promise<Outcome> {
  const request: GenerateRequest = { prompt: { kind: 'text', text: prompt, chat: true }, maxNewTokens, speculation };
  const tokens: number[] = [];
  let final: GenerationFinal | undefined;
  for await (const e of pool.run(pool.prepare(request))) {
    if (e.type === 'delta') {
      tokens.push(...e.tokenIds);
      onTokens?.(e.tokenIds.length);
    } else final = e;
  }
  return { tokens, final: final! };
}

function percentile(xs: readonly number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))]!;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      'execution-provider': { type: 'string', default: 'cpu' },
      model: { type: 'string' },
      threads: { type: 'string', default: '0' },
      replicas: { type: 'string', default: '1,2' },
      streams: { type: 'string', default: '1,4' },
      category: { type: 'string', default: 'code-editing' },
      'max-new-tokens': { type: 'string', default: '96' },
      'draft-max': { type: 'string' },
      'batch-model': { type: 'string' },
      'prefill-chunks': { type: 'string', default: '512' },
      generations: { type: 'string' },
      'rows-min': { type: 'string' },
      'device-run': { type: 'string' },
      'paged-model': { type: 'string' },
      'batch-slots': { type: 'string', default: '64' },
      'batch-invariant': { type: 'string', default: 'off' },
      // Paged pools once per value (token rows of each step's packed prefill forward).
      'prefill-tokens-per-step': { type: 'string', default: '1024' },
      // Stream counts the one-sequence-per-forward pool runs (default: all of --streams).
      'unbatched-streams': { type: 'string' },
      'cuda-graphs': { type: 'string', default: 'on' },
      'kv-capacity': { type: 'string', default: '1024' },
      out: { type: 'string' },
    },
  });
  const provider = values['execution-provider'] as ExecutionProviderName;
  if (!EXECUTION_PROVIDERS.includes(provider))
    throw new Error(`--execution-provider must be one of ${EXECUTION_PROVIDERS.join(', ')}`);
  if (values.model === undefined) throw new Error('--model DIR (a converted model directory) is required');
  const log = (line: string) => process.stderr.write(`[replicas ${provider}] ${line}\n`);
  const maxNewTokens = Number(values['max-new-tokens']);
  const anpd: SpeculationOptions =
    values['draft-max'] !== undefined
      ? { ...DEFAULT_SPECULATION, draftTokensMax: Number(values['draft-max']) }
      : DEFAULT_SPECULATION;
  const prompts = (
    JSON.parse(readFileSync(join(projectRoot(), 'bench', 'prompts', `${values.category}.json`), 'utf8')) as {
      prompt: string;
    }[]
  ).map((p) => p.prompt);
  const streamCounts = values.streams!.split(',').map(Number);
  const rows: Record<string, unknown>[] = [];
  // Each engine's outputs against its own first output of the prompt (batch invariance: every
  // concurrency, plain and ANPD), and the paged graph's against the one-sequence graph's (other
  // attention kernels: near-ties may go either way; counted apart).
  const reference = new Map<string, string>();
  let mismatches = 0;
  let pagedVsGqa = 0;
  // Per paged generation: the share of its tokens before the first one that differs from the GQA graph's.
  const pagedVsGqaAgreeing: number[] = [];
  let generationsChecked = 0;
  // One table per graph: a batching engine's runs to 128 rows (its draft lengths are chosen for the batch).
  const forwardCosts = new Map<string, readonly number[]>();
  // Unbatched, then batched once per prefill chunk size.
  // 'paged' pools run --paged-model (continuous batching on CUDA), once per --batch-invariant value.
  const batchModes: {
    batch: string | undefined;
    chunk: number | undefined;
    invariant?: boolean;
    prefillTokens?: number;
  }[] = [{ batch: undefined, chunk: undefined }];
  if (values['batch-model'] !== undefined)
    for (const chunk of values['prefill-chunks']!.split(',').map(Number))
      batchModes.push({ batch: values['batch-model'], chunk });
  if (values['paged-model'] !== undefined)
    for (const invariant of values['batch-invariant']!.split(','))
      for (const prefillTokens of values['prefill-tokens-per-step']!.split(',').map(Number))
        batchModes.push({ batch: 'paged', chunk: undefined, invariant: invariant === 'on', prefillTokens });
  const unbatchedStreams =
    values['unbatched-streams'] === undefined ? undefined : values['unbatched-streams'].split(',').map(Number);
  const pools: {
    replicas: number;
    batch: string | undefined;
    chunk: number | undefined;
    invariant?: boolean;
    prefillTokens?: number;
    pool: EnginePool;
  }[] = [];
  for (const replicas of values.replicas!.split(',').map(Number)) {
    for (const { batch, chunk, invariant, prefillTokens } of batchModes) {
      const paged = batch === 'paged';
      const started = performance.now();
      const runtime = {
        executionProvider: provider,
        intraOpThreads: Number(values.threads),
        kvCapacity: Number(values['kv-capacity']),
        ...(values['rows-min'] !== undefined ? { forwardRowsMin: Number(values['rows-min']) } : {}),
        ...(batch !== undefined && !paged ? { batchModelDir: batch.split(',') } : {}),
        ...(paged
          ? {
              batchSlots: Number(values['batch-slots']),
              batchInvariant: invariant === true,
              prefillTokensPerStep: prefillTokens!,
            }
          : {}),
        // 'emulate': the device path on the CPU (how its batching is checked without a GPU).
        experimental: {
          ...(batch !== undefined && !paged ? { batchPrefillChunkTokens: chunk! } : {}),
          ...(values['cuda-graphs'] === 'off' ? { cudaGraphs: false } : {}),
          ...(values['device-run'] !== undefined ? { deviceRun: values['device-run'] as DeviceRunMode } : {}),
        },
      };
      const known = forwardCosts.get(batch ?? '');
      const pool = await EnginePool.create(
        paged ? values['paged-model']! : values.model,
        runtime,
        known === undefined ? { replicas } : { replicas, forwardCost: { mode: 'fixed', table: known } },
      );
      if (known === undefined && pool.forwardCost !== undefined) forwardCosts.set(batch ?? '', pool.forwardCost);
      log(
        `${replicas} replica(s)${paged ? ` paged${invariant ? ', batch-invariant' : ''}, prefill ${prefillTokens} tokens/step` : batch !== undefined ? ` with batched forwards (prefill chunks of ${chunk})` : ''} loaded in ${((performance.now() - started) / 1000).toFixed(1)} s`,
      );
      for (let r = 0; r < replicas; r++) await generate(pool, 'Hello', anpd, 4); // warm every replica (least-loaded picks in turn)
      await Promise.all(Array.from({ length: replicas }, () => generate(pool, 'Hello', NO_SPECULATION, 4)));
      pools.push({
        replicas,
        batch,
        chunk,
        ...(invariant !== undefined ? { invariant, prefillTokens: prefillTokens! } : {}),
        pool,
      });
    }
  }
  // Streams outermost, batched and unbatched pools interleaved under them: machine drift hits both alike.
  for (const streams of streamCounts) {
    for (const { replicas, batch, chunk, invariant, prefillTokens, pool } of pools) {
      if (batch === undefined && unbatchedStreams !== undefined && !unbatchedStreams.includes(streams)) continue;
      for (const [mode, speculation] of [
        ['plain', NO_SPECULATION],
        ['anpd', anpd],
      ] as const) {
        // `streams` workers each take prompts in turn until the generations (default: max(prompt set, 2 × streams)) are done.
        const total =
          values.generations !== undefined
            ? Math.max(Number(values.generations), streams)
            : Math.max(prompts.length, 2 * streams);
        let next = 0;
        let tokens = 0;
        const tpot: number[] = [];
        const ttft: number[] = [];
        // The first wave starts at once (a burst: every prompt's prefill at the same moment); later ones arrive as streams finish.
        const ttftBurst: number[] = [];
        let started = 0;
        // Steady state: tokens while every stream has work, i.e. until the first finds no prompt left
        // (a server under continuous load; after that the last generations run down with fewer streams).
        let drainAt = Infinity;
        let steadyTokens = 0;
        const countSteady = (count: number) => {
          if (performance.now() < drainAt) steadyTokens += count;
        };
        let rounds = 0;
        let drafted = 0;
        let accepted = 0;
        const t0 = performance.now();
        await Promise.all(
          Array.from({ length: streams }, async () => {
            while (next < total) {
              const i = next++ % prompts.length;
              const burst = started++ < streams;
              const out = await generate(pool, prompts[i]!, speculation, maxNewTokens, countSteady);
              if (burst) ttftBurst.push(out.final.firstTokenMs);
              tokens += out.tokens.length;
              rounds += out.final.stats.rounds;
              drafted += out.final.stats.draftTokensProposed;
              accepted += out.final.stats.draftTokensAccepted;
              ttft.push(out.final.firstTokenMs);
              tpot.push((out.final.totalMs - out.final.firstTokenMs) / Math.max(1, out.tokens.length - 1));
              const key = out.tokens.join(',');
              // (A paged engine's outputs are checked against its own configuration's: another prefill shape may round differently.)
              const family = batch === 'paged' ? `paged${invariant ? '-invariant' : ''}-p${prefillTokens}` : 'gqa';
              generationsChecked++;
              if (family !== 'gqa' && reference.has(`gqa:${i}`)) {
                const gqa = reference.get(`gqa:${i}`)!.split(',');
                let same = 0;
                while (same < out.tokens.length && String(out.tokens[same]) === gqa[same]) same++;
                // Another attention kernel flips near-ties late; a wrong mask or window diverges early.
                pagedVsGqaAgreeing.push(same / Math.max(1, Math.min(gqa.length, out.tokens.length)));
                if (reference.get(`gqa:${i}`) !== key) pagedVsGqa++;
              }
              if (!reference.has(`${family}:${i}`)) reference.set(`${family}:${i}`, key);
              else if (reference.get(`${family}:${i}`) !== key) {
                mismatches++;
                log(
                  `MISMATCH prompt ${i} (${mode}, ${streams} streams, ${replicas} replicas, batched ${batch === 'paged' ? `paged${invariant ? '-invariant' : ''}` : batch !== undefined})`,
                );
              }
            }
            if (drainAt === Infinity) drainAt = performance.now();
          }),
        );
        const seconds = (performance.now() - t0) / 1000;
        const row = {
          replicas,
          batched: batch === 'paged' ? (invariant === true ? 'paged-invariant' : 'paged') : batch !== undefined,
          prefillChunkTokens: chunk ?? null,
          prefillTokensPerStep: prefillTokens ?? null,
          streams,
          mode,
          generations: total,
          aggregateTokPerS: +(tokens / seconds).toFixed(1),
          steadyTokPerS: +(steadyTokens / ((drainAt - t0) / 1000)).toFixed(1),
          ttftMsP50: +percentile(ttft, 0.5).toFixed(1),
          ttftMsP99: +percentile(ttft, 0.99).toFixed(1),
          ttftBurstMsP50: +percentile(ttftBurst, 0.5).toFixed(1),
          ttftBurstMsP99: +percentile(ttftBurst, 0.99).toFixed(1),
          tpotMsP50: +percentile(tpot, 0.5).toFixed(2),
          tpotMsP99: +percentile(tpot, 0.99).toFixed(2),
          // Batch-aware drafting shows here: drafts shrink as streams grow where the forward is compute-bound.
          draftTokensPerRound: +(drafted / Math.max(1, rounds)).toFixed(2),
          acceptedPerDraftToken: +(accepted / Math.max(1, drafted)).toFixed(2),
        };
        rows.push(row);
        log(JSON.stringify(row));
      }
    }
  }
  for (const { pool } of pools) await pool.dispose();
  const report = {
    date: new Date().toISOString(),
    provider,
    cpu: `${cpus().length} × ${cpus()[0]?.model ?? 'unknown'}`,
    category: values.category,
    maxNewTokens,
    draftTokensMax: anpd.draftTokensMax,
    threads: Number(values.threads),
    batchModel: values['batch-model'] ?? null,
    forwardCost: Object.fromEntries(
      [...forwardCosts].map(([k, v]) => [k === '' ? 'unbatched' : 'batched', v.map((c) => +c.toFixed(3))]),
    ),
    rows,
    outputsIdentical: mismatches === 0,
    mismatches,
    generationsChecked,
    pagedGenerationsDifferingFromGqa: pagedVsGqa,
    pagedTokensAgreeingWithGqaMedian: pagedVsGqaAgreeing.length === 0 ? null : percentile(pagedVsGqaAgreeing, 0.5),
    pagedTokensAgreeingWithGqaP10: pagedVsGqaAgreeing.length === 0 ? null : percentile(pagedVsGqaAgreeing, 0.1),
  };
  process.stdout.write(`${JSON.stringify(report)}\n`);
  if (values.out !== undefined) writeFileSync(values.out, `${JSON.stringify(report, null, 2)}\n`);
}

await main();
