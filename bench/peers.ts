/**
 * Side by side with the peers: the same GGUF weights and the same chat-templated prompts through
 * our engine (plain and ANPD), llama.cpp (plain through llama-cpp-python; n-gram lookup through
 * the llama-lookup example and through llama-cpp-python's LlamaPromptLookupDecoding),
 * node-llama-cpp (plain; its InputLookupTokenPredictor) and Hugging Face transformers (greedy;
 * prompt lookup). Greedy everywhere, the same max new tokens, 2 threads
 * each, engines interleaved per prompt in a rotating order. Peers are installed into .cache/peers
 * on first use (bench/peers/setup.sh) and run as long-lived processes, so model loading is never
 * timed. A table on stdout, JSON under bench/results/.
 *
 *   npm run bench:peers [-- --quick] [-- --prompts 5 --max-new-tokens 128 --categories summarization]
 *   npm run bench:peers -- --model gemma3-270m|FILE.gguf   (another GGUF; the default model otherwise)
 */
import { execFileSync, spawn } from 'node:child_process';
import { readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { cpus, release, totalmem } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { createEngine } from '../src/engine/create-engine.js';
import { DEFAULT_SPECULATION, NO_SPECULATION, type SpeculationOptions } from '../src/contract.js';
import type { Engine } from '../src/engine/engine.js';
import { DEFAULT_GRAPH_OPTIONS } from '../src/convert/decoder-graph.js';
import { projectRoot } from '../src/paths.js';
import { ensureModelArgument, ensureRegistryGguf } from '../src/registry/model-cache.js';
import { classifyModelArgument } from '../src/registry/model-registry.js';
import {
  addSample,
  emptyTotals,
  type EngineRow,
  type EngineTotals,
  firstDivergence,
  lookupSample,
  parseLlamaLookup,
  type PeerSample,
  rotation,
  sameText,
  sameTokens,
  summarize,
} from '../tools/peer-metrics.js';
import { startPeerProcess } from './peer-process.js';

/** Every engine gets the same thread count (issue 8). */
const THREADS = 2;

const ENGINES = [
  'anpd-serve plain',
  'anpd-serve ANPD',
  'llama.cpp plain (llama-cpp-python)',
  'llama.cpp lookup (llama-lookup)',
  'llama.cpp lookup (llama-lookup --spec-draft-n-max 10)',
  'llama.cpp prompt lookup (llama-cpp-python)',
  'node-llama-cpp plain',
  'node-llama-cpp lookup (InputLookupTokenPredictor)',
  'transformers greedy',
  'transformers prompt lookup',
] as const;
type EngineName = (typeof ENGINES)[number];
const REFERENCE: EngineName = 'anpd-serve plain';
/** Second reference: do the peers agree with each other where they differ from us? */
const PEER_REFERENCE: EngineName = 'llama.cpp plain (llama-cpp-python)';
/** Each speculative engine against its own plain decoding: is its speculation lossless? */
const OWN_PLAIN: Partial<Record<EngineName, EngineName>> = {
  'anpd-serve ANPD': 'anpd-serve plain',
  'llama.cpp lookup (llama-lookup)': 'llama.cpp plain (llama-cpp-python)',
  'llama.cpp lookup (llama-lookup --spec-draft-n-max 10)': 'llama.cpp plain (llama-cpp-python)',
  'llama.cpp prompt lookup (llama-cpp-python)': 'llama.cpp plain (llama-cpp-python)',
  'node-llama-cpp lookup (InputLookupTokenPredictor)': 'node-llama-cpp plain',
  'transformers prompt lookup': 'transformers greedy',
};

interface Job {
  promptIds: readonly number[];
  promptText: string;
  maxNewTokens: number;
}

interface Runner {
  readonly name: EngineName;
  run(job: Job): Promise<PeerSample>;
  close(): Promise<void>;
}

/** Our engine in this process. */
function ourRunner(name: EngineName, engine: Engine, speculation: SpeculationOptions): Runner {
  return {
    name,
    async run(job) {
      const tokens: number[] = [];
      let firstChunkTokens = 0;
      let final;
      for await (const e of engine.generate({
        prompt: { kind: 'tokens', tokenIds: job.promptIds },
        maxNewTokens: job.maxNewTokens,
        speculation,
      })) {
        if (e.type === 'delta') {
          if (firstChunkTokens === 0) firstChunkTokens = e.tokenIds.length;
          tokens.push(...e.tokenIds);
        } else final = e;
      }
      if (!final) throw new Error('no final event');
      return {
        tokens,
        tokenCount: tokens.length,
        ttftMs: final.firstTokenMs,
        totalMs: final.totalMs,
        firstChunkTokens,
        modelCalls: final.stats.rounds,
      };
    },
    close: async () => {},
  };
}

/** A long-lived peer process (bench/peer-process.ts). */
async function lineRunner(
  name: EngineName,
  command: string,
  args: string[],
  env: NodeJS.ProcessEnv,
  info: Record<string, unknown>,
): Promise<Runner> {
  const peer = await startPeerProcess(name, command, args, env);
  info[name] = peer.ready;
  return {
    name,
    run: (job) => peer.generate({ promptIds: job.promptIds, maxNewTokens: job.maxNewTokens, eosIds }),
    close: () => peer.close(),
  };
}

let eosIds: readonly number[] = [];

function cpuTimes(): { busy: number; total: number } {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  const idle = (f[3] ?? 0) + (f[4] ?? 0);
  const total = f.reduce((a, b) => a + b, 0);
  return { busy: total - idle, total };
}

/**
 * The machine is shared: before each engine run, wait until other processes leave the CPU
 * (< 25% busy over 0.5 s, our engines being idle then), within a total waiting budget. Contention
 * does not hit every engine alike (spin barriers suffer most), so it is avoided, not averaged.
 * Returns the busy share seen last.
 */
async function waitForQuietCpu(gate: { waitedMs: number; budgetMs: number }, perRunMs = 30_000): Promise<number> {
  for (let waited = 0; ; waited += 500) {
    const a = cpuTimes();
    await new Promise((r) => setTimeout(r, 500));
    const b = cpuTimes();
    const busy = (b.busy - a.busy) / Math.max(1, b.total - a.total);
    if (busy < 0.25 || gate.waitedMs >= gate.budgetMs || waited >= perRunMs) return +busy.toFixed(2);
    gate.waitedMs += 500;
  }
}

/** llama.cpp's llama-lookup example, one process per prompt (it reports its own timings). */
function lookupRunner(
  name: EngineName,
  bin: string,
  gguf: string,
  eogMarkers: readonly string[],
  bosText: string,
  draftMax?: number,
): Runner {
  return {
    name,
    async run(job) {
      // llama-lookup adds the BOS token itself: a chat template that writes it (Gemma's) would give two.
      const promptText =
        bosText !== '' && job.promptText.startsWith(bosText) ? job.promptText.slice(bosText.length) : job.promptText;
      // It stops once n_predict > -n, i.e. after at least -n + 1 tokens (more when a round overshoots).
      const args = [
        '-m',
        gguf,
        '-p',
        promptText,
        '-n',
        String(job.maxNewTokens - 1),
        '-t',
        String(THREADS),
        '-tb',
        String(THREADS),
        '-c',
        '2048',
        '--temp',
        '0',
        '-s',
        '1',
      ];
      if (draftMax !== undefined) args.push('--spec-draft-n-max', String(draftMax));
      const { stdout, stderr } = await new Promise<{ stdout: string; stderr: string }>((resolve, reject) => {
        const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
        let out = '';
        let err = '';
        child.stdout.on('data', (d: Buffer) => (out += d.toString()));
        child.stderr.on('data', (d: Buffer) => (err += d.toString()));
        child.on('error', reject);
        child.on('close', (code) =>
          code === 0
            ? resolve({ stdout: out, stderr: err })
            : reject(new Error(`llama-lookup exited ${code}: ${err.slice(-2000)}`)),
        );
      });
      const run = parseLlamaLookup(stdout, stderr, promptText, eogMarkers);
      if (run.promptTokens !== job.promptIds.length) {
        throw new Error(
          `llama-lookup tokenized the prompt into ${run.promptTokens} tokens, we into ${job.promptIds.length}`,
        );
      }
      return lookupSample(run);
    },
    close: async () => {},
  };
}

function tryExec(cmd: string, args: string[], env?: NodeJS.ProcessEnv): string {
  try {
    return execFileSync(cmd, args, { env: env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'] })
      .toString()
      .trim();
  } catch (e) {
    const err = e as { stderr?: Buffer; stdout?: Buffer };
    return `${err.stdout?.toString() ?? ''}${err.stderr?.toString() ?? ''}`.trim();
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      quick: { type: 'boolean', default: false },
      prompts: { type: 'string' },
      'max-new-tokens': { type: 'string' },
      categories: { type: 'string', default: 'summarization,code-editing,document-qa,open-chat' },
      engines: { type: 'string' },
      'skip-setup': { type: 'boolean', default: false },
      out: { type: 'string' },
      'quiet-budget-s': { type: 'string' },
      'deadline-min': { type: 'string' },
      model: { type: 'string' },
    },
  });
  const quick = values.quick!;
  const promptsPerCategory = Number(values.prompts ?? (quick ? 2 : 5));
  const maxNewTokens = Number(values['max-new-tokens'] ?? (quick ? 64 : 128));
  const categories = values.categories!.split(',');
  const selected = new Set<string>(values.engines ? values.engines.split(',') : ENGINES);
  if (!selected.has(REFERENCE)) selected.add(REFERENCE);
  const root = projectRoot();
  const out = values.out ?? (quick ? 'bench/results/peers-quick.json' : 'bench/results/peers.json');
  const peersDir = join(root, '.cache', 'peers');

  if (!values['skip-setup']) {
    process.stderr.write('installing the peers into .cache/peers if needed (bench/peers/setup.sh)\n');
    execFileSync('bash', [join(root, 'bench', 'peers', 'setup.sh'), peersDir], { stdio: 'inherit', cwd: root });
  }
  const python = join(peersDir, 'venv', 'bin', 'python');
  const libDir = join(peersDir, 'llama.cpp-build', 'bin');
  const env = {
    ...process.env,
    LLAMA_CPP_LIB_PATH: libDir,
    OMP_NUM_THREADS: String(THREADS),
    MKL_NUM_THREADS: String(THREADS),
    TOKENIZERS_PARALLELISM: 'false',
  };

  // --model NAME (a registry model) or FILE.gguf: every engine runs the same GGUF.
  const modelArgument = classifyModelArgument(values.model);
  if (modelArgument.kind === 'dir')
    throw new Error('--model takes a registry model name or a GGUF file (the peers need the GGUF)');
  const gguf = modelArgument.kind === 'registry' ? await ensureRegistryGguf(modelArgument.model) : modelArgument.path;
  const engine = await createEngine(await ensureModelArgument(modelArgument, DEFAULT_GRAPH_OPTIONS), {
    executionProvider: 'cpu',
    intraOpThreads: THREADS,
    kvCapacity: 4096,
  });
  eosIds = engine.info.eosTokenIds;
  const eogMarkers = eosIds.map((id) => engine.tokenizer.decode([id], { skipSpecialTokens: false }));
  const bosText =
    engine.info.bosTokenId === undefined || engine.info.bosTokenId === null
      ? ''
      : engine.tokenizer.decode([engine.info.bosTokenId], { skipSpecialTokens: false });

  const info: Record<string, unknown> = {};
  const runners: Runner[] = [];
  const want = (n: EngineName) => selected.has(n);
  runners.push(ourRunner('anpd-serve plain', engine, NO_SPECULATION));
  if (want('anpd-serve ANPD')) runners.push(ourRunner('anpd-serve ANPD', engine, DEFAULT_SPECULATION));
  info['anpd-serve plain'] = { settings: NO_SPECULATION };
  info['anpd-serve ANPD'] = { settings: DEFAULT_SPECULATION };
  const ggufArgs = ['--gguf', gguf, '--threads', String(THREADS)];
  const peerServer = join(root, 'bench', 'peers', 'peer_server.py');
  const pythonRunner = (name: EngineName, args: string[]) => lineRunner(name, python, [peerServer, ...args], env, info);
  const nodeLlamaCppRunner = (name: EngineName, mode: 'plain' | 'lookup') =>
    lineRunner(
      name,
      process.execPath,
      [
        join(root, 'bench', 'peers', 'node-llama-cpp-peer.mjs'),
        '--package',
        join(peersDir, 'node-llama-cpp'),
        '--mode',
        mode,
        ...ggufArgs,
      ],
      env,
      info,
    );
  process.stderr.write('starting the peer processes (model load and warm-up, not timed)\n');
  if (want('llama.cpp plain (llama-cpp-python)'))
    runners.push(
      await pythonRunner('llama.cpp plain (llama-cpp-python)', [
        '--engine',
        'llama-cpp-python',
        '--mode',
        'plain',
        ...ggufArgs,
      ]),
    );
  if (want('llama.cpp prompt lookup (llama-cpp-python)')) {
    runners.push(
      await pythonRunner('llama.cpp prompt lookup (llama-cpp-python)', [
        '--engine',
        'llama-cpp-python',
        '--mode',
        'lookup',
        ...ggufArgs,
      ]),
    );
  }
  if (want('node-llama-cpp plain')) runners.push(await nodeLlamaCppRunner('node-llama-cpp plain', 'plain'));
  if (want('node-llama-cpp lookup (InputLookupTokenPredictor)'))
    runners.push(await nodeLlamaCppRunner('node-llama-cpp lookup (InputLookupTokenPredictor)', 'lookup'));
  const lookupBin = join(libDir, 'llama-lookup');
  if (want('llama.cpp lookup (llama-lookup)')) {
    runners.push(lookupRunner('llama.cpp lookup (llama-lookup)', lookupBin, gguf, eogMarkers, bosText));
    info['llama.cpp lookup (llama-lookup)'] = {
      settings: { specDraftNMax: 'default (3 in this build)', version: tryExec(lookupBin, ['--version']) },
    };
  }
  if (want('llama.cpp lookup (llama-lookup --spec-draft-n-max 10)')) {
    runners.push(
      lookupRunner('llama.cpp lookup (llama-lookup --spec-draft-n-max 10)', lookupBin, gguf, eogMarkers, bosText, 10),
    );
    info['llama.cpp lookup (llama-lookup --spec-draft-n-max 10)'] = { settings: { specDraftNMax: 10 } };
  }
  if (want('transformers greedy'))
    runners.push(
      await pythonRunner('transformers greedy', ['--engine', 'transformers', '--mode', 'greedy', ...ggufArgs]),
    );
  if (want('transformers prompt lookup'))
    runners.push(
      await pythonRunner('transformers prompt lookup', [
        '--engine',
        'transformers',
        '--mode',
        'prompt-lookup',
        ...ggufArgs,
      ]),
    );
  // Warm-up of every long-lived engine on a long prompt (first-call allocations for large batches:
  // llama.cpp's first 200+-token prefill is several times slower than the next ones).
  const warmText = (
    JSON.parse(readFileSync(join(root, 'bench', 'prompts', 'document-qa.json'), 'utf8')) as { prompt: string }[]
  ).at(-1)!.prompt;
  const warm: Job = {
    promptIds: engine.tokenizePrompt({ kind: 'text', text: warmText, chat: true }),
    promptText: '',
    maxNewTokens: 8,
  };
  for (const r of runners) if (!r.name.includes('llama-lookup')) await r.run(warm);

  const started = Date.now();
  const gate = { waitedMs: 0, budgetMs: Number(values['quiet-budget-s'] ?? 900) * 1000 };
  const peerAgreement = new Map<string, { identical: number; compared: number }>();
  const ownAgreement = new Map<string, { identical: number; compared: number }>();
  const results: Record<string, Record<string, EngineRow>> = {};
  const samples: unknown[] = [];
  let failures = 0;
  // Prompt-major order (prompt i of every category, then i + 1), so a run cut by --deadline-min
  // still covers every category alike.
  const promptsOf = new Map(
    categories.map((c) => [
      c,
      (
        JSON.parse(readFileSync(join(root, 'bench', 'prompts', `${c}.json`), 'utf8')) as {
          id: string;
          prompt: string;
        }[]
      ).slice(0, promptsPerCategory),
    ]),
  );
  const totalsOf = new Map(
    categories.map((c) => [c, new Map<EngineName, EngineTotals>(runners.map((r) => [r.name, emptyTotals()]))]),
  );
  const deadline = started + Number(values['deadline-min'] ?? 40) * 60_000;
  let promptsRun = 0;
  outer: for (let pi = 0; pi < promptsPerCategory; pi++) {
    for (const category of categories) {
      const p = promptsOf.get(category)![pi];
      if (p === undefined) continue;
      if (Date.now() > deadline) {
        process.stderr.write(`deadline reached after ${promptsRun} prompts: stopping here\n`);
        break outer;
      }
      promptsRun++;
      const totals = totalsOf.get(category)!;
      const job: Job = {
        promptIds: engine.tokenizePrompt({ kind: 'text', text: p.prompt, chat: true }),
        promptText: engine.tokenizer.applyChatTemplate([{ role: 'user', content: p.prompt }]),
        maxNewTokens,
      };
      const got = new Map<EngineName, PeerSample>();
      const busy = new Map<EngineName, number>();
      for (const r of rotation(runners, promptsRun)) {
        busy.set(r.name, await waitForQuietCpu(gate));
        try {
          got.set(r.name, await r.run(job));
        } catch (e) {
          failures++;
          process.stderr.write(`FAILED ${r.name} on ${p.id}: ${(e as Error).message}\n`);
        }
      }
      const compare = (
        refName: EngineName,
        name: EngineName,
        s: PeerSample,
      ): { identical: boolean; divergeAt?: number } | undefined => {
        const ref = got.get(refName);
        if (ref === undefined || name === refName) return undefined;
        if (s.text !== undefined)
          return {
            identical: sameText(
              engine.tokenizer.decode(ref.tokens, { skipSpecialTokens: false }),
              ref.tokenCount >= maxNewTokens,
              s.text,
            ),
          };
        return { identical: sameTokens(ref.tokens, s.tokens), divergeAt: firstDivergence(ref.tokens, s.tokens) };
      };
      for (const [name, s] of got) {
        const vsOurs = compare(REFERENCE, name, s);
        const vsPeer = compare(PEER_REFERENCE, name, s);
        const ownPlain = OWN_PLAIN[name];
        const vsOwn = ownPlain === undefined ? undefined : compare(ownPlain, name, s);
        if (vsOwn !== undefined) {
          const o = ownAgreement.get(`${category}\t${name}`) ?? { identical: 0, compared: 0 };
          o.compared++;
          if (vsOwn.identical) o.identical++;
          ownAgreement.set(`${category}\t${name}`, o);
        }
        const identical = vsOurs?.identical ?? false;
        const divergeAt = vsOurs?.divergeAt;
        addSample(totals.get(name)!, s, vsOurs?.identical, vsOurs?.divergeAt);
        if (vsPeer !== undefined) {
          const p = peerAgreement.get(`${category}\t${name}`) ?? { identical: 0, compared: 0 };
          p.compared++;
          if (vsPeer.identical) p.identical++;
          peerAgreement.set(`${category}\t${name}`, p);
        }
        samples.push({
          category,
          prompt: p.id,
          engine: name,
          promptTokens: job.promptIds.length,
          tokens: s.tokenCount,
          ttftMs: +s.ttftMs.toFixed(1),
          totalMs: +s.totalMs.toFixed(1),
          firstChunkTokens: s.firstChunkTokens,
          modelCalls: s.modelCalls,
          identicalToPlain: name === REFERENCE ? null : identical,
          firstDivergence: name === REFERENCE || identical ? null : (divergeAt ?? null),
          identicalToLlamaCppPlain: vsPeer?.identical ?? null,
          identicalToOwnPlain: vsOwn?.identical ?? null,
          predictions: (s as PeerSample & { predictions?: unknown }).predictions,
          cpuBusyBefore: busy.get(name) ?? null,
        });
      }
      const elapsed = ((Date.now() - started) / 1000).toFixed(0);
      process.stderr.write(
        `${category} ${pi + 1}/${promptsPerCategory} (${job.promptIds.length} prompt tokens) ${elapsed} s, quiet-gate wait ${Math.round(gate.waitedMs / 1000)} s\n`,
      );
    }
  }
  for (const [category, totals] of totalsOf)
    results[category] = Object.fromEntries([...totals].map(([name, t]) => [name, summarize(t)]));
  for (const r of runners) await r.close();

  const lines = [
    '| category | engine | decode tok/s | TTFT ms (median) | tokens / model call | identical to our plain | identical to llama.cpp plain | identical to its own plain | mean tokens |',
    '|---|---|---:|---:|---:|---:|---:|---:|---:|',
  ];
  const agreement: Record<string, Record<string, number>> = {};
  const ownAgreementShares: Record<string, Record<string, number>> = {};
  for (const [category, rows] of Object.entries(results)) {
    for (const [name, r] of Object.entries(rows)) {
      if (r.samples === 0) continue; // every run of it failed (reported above)
      const identical = r.identicalShare === null ? '(reference)' : `${Math.round(r.identicalShare * 100)}%`;
      const p = peerAgreement.get(`${category}\t${name}`);
      const share = p && p.compared > 0 ? p.identical / p.compared : null;
      if (share !== null) (agreement[category] ??= {})[name] = +share.toFixed(2);
      const peer = name === PEER_REFERENCE ? '(reference)' : share === null ? '–' : `${Math.round(share * 100)}%`;
      const o = ownAgreement.get(`${category}\t${name}`);
      const ownShare = o && o.compared > 0 ? o.identical / o.compared : null;
      if (ownShare !== null) (ownAgreementShares[category] ??= {})[name] = +ownShare.toFixed(2);
      const own = ownShare === null ? '–' : `${Math.round(ownShare * 100)}% (${o!.identical}/${o!.compared})`;
      lines.push(
        `| ${category} | ${name} | ${r.decodeTokPerS} | ${r.ttftMsMedian} | ${r.tokensPerCall} | ${identical} | ${peer} | ${own} | ${r.meanTokens} |`,
      );
    }
  }
  const targets = Object.entries(results).map(([category, rows]) => {
    const anpd = rows['anpd-serve ANPD'];
    const plain = rows['anpd-serve plain'];
    const llamaPlain = rows['llama.cpp plain (llama-cpp-python)'];
    const lookups = [
      rows['llama.cpp lookup (llama-lookup)'],
      rows['llama.cpp lookup (llama-lookup --spec-draft-n-max 10)'],
    ].filter((r) => r !== undefined);
    // Against the faster of llama-lookup's settings in this category.
    const lookup = lookups.sort((a, b) => b.decodeTokPerS - a.decodeTokPerS)[0];
    const hfPld = rows['transformers prompt lookup'];
    const nlcPlain = rows['node-llama-cpp plain'];
    const nlcLookup = rows['node-llama-cpp lookup (InputLookupTokenPredictor)'];
    const ratio = (a: EngineRow | undefined, b: EngineRow | undefined) =>
      a && b && a.samples > 0 && b.samples > 0 ? +(a.decodeTokPerS / b.decodeTokPerS).toFixed(2) : null;
    return {
      category,
      anpdOverLlamaLookup: anpd && lookup ? +(anpd.decodeTokPerS / lookup.decodeTokPerS).toFixed(2) : null,
      anpdOverNodeLlamaCppLookup: ratio(anpd, nlcLookup),
      anpdOverOurPlain: ratio(anpd, plain),
      plainOverNodeLlamaCppPlain: ratio(plain, nlcPlain),
      anpdTauOverTransformersPld: anpd && hfPld ? +(anpd.tokensPerCall / hfPld.tokensPerCall).toFixed(2) : null,
      plainOverLlamaPlain: plain && llamaPlain ? +(plain.decodeTokPerS / llamaPlain.decodeTokPerS).toFixed(2) : null,
    };
  });
  process.stdout.write(`${lines.join('\n')}\n\n`);
  process.stdout.write(`targets (ratios): ${JSON.stringify(targets, null, 1)}\n`);
  if (failures > 0) process.stdout.write(`${failures} engine runs failed (see stderr)\n`);

  let revision = 'unknown';
  try {
    revision = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: root }).toString().trim();
  } catch {}
  const ortVersion = (
    JSON.parse(readFileSync(join(root, 'node_modules', 'onnxruntime-node', 'package.json'), 'utf8')) as {
      version: string;
    }
  ).version;
  mkdirSync(join(root, 'bench', 'results'), { recursive: true });
  writeFileSync(
    resolve(root, out),
    `${JSON.stringify(
      {
        benchmark: 'peers',
        model: engine.info.name,
        gguf: gguf.replace(root, '.'),
        date: new Date().toISOString(),
        durationS: Math.round((Date.now() - started) / 1000),
        machine: {
          cpu: cpus()[0]?.model,
          cores: cpus().length,
          memoryGiB: Math.round(totalmem() / 2 ** 30),
          kernel: release(),
          node: process.version,
          python: tryExec(python, ['--version']),
        },
        revision,
        command: `npm run bench:peers --${process.argv.slice(2).length ? ` ${process.argv.slice(2).join(' ')}` : ''}`,
        settings: {
          threads: THREADS,
          promptsPerCategory,
          promptsRun,
          maxNewTokens,
          greedy: true,
          order: 'engines rotated per prompt',
          categories,
        },
        versions: { 'onnxruntime-node': ortVersion },
        engines: info,
        definitions: {
          decodeTokPerS:
            'tokens after the first chunk / time after the first token, summed over the prompts of a category',
          ttftMs:
            "request to first generated token by the engine's own clock (llama-lookup: its prompt encode, which includes the last prompt token's forward)",
          tokensPerModelCall:
            'generated tokens / model forward passes that produced them (the prompt pass that gives the first token counts; ours: verify rounds after prefill)',
          identicalToPlain:
            'same token ids as anpd-serve plain greedy (llama-lookup: same text; it may overshoot max new tokens by a round)',
          identicalToOwnPlain:
            "a speculative engine's output equals its own plain greedy output on the same prompt (llama.cpp's lookups: llama-cpp-python plain)",
          nodeLlamaCppModelCalls: 'generated tokens − validated predictions it consumed (tokenPredictions.used)',
        },
        failures,
        quietGate: {
          waitedS: Math.round(gate.waitedMs / 1000),
          budgetS: gate.budgetMs / 1000,
          rule: 'before each engine run, wait (at most 30 s, and within the budget) until the CPU is < 25% busy over 0.5 s',
        },
        targets,
        identicalToLlamaCppPlain: agreement,
        identicalToOwnPlain: ownAgreementShares,
        results,
        samples,
      },
      null,
      2,
    )}\n`,
  );
  process.stderr.write(`wrote ${out}\n`);
  await engine.dispose();
}

main().catch((e: unknown) => {
  process.stderr.write(`${(e as Error).stack ?? String(e)}\n`);
  process.exitCode = 1;
});
