/**
 * Side by side with the peers: the same GGUF weights and the same chat-templated prompts through
 * our engine (plain and ANPD), llama.cpp (plain through llama-cpp-python; n-gram lookup through
 * the llama-lookup example and through llama-cpp-python's LlamaPromptLookupDecoding) and Hugging
 * Face transformers (greedy; prompt lookup). Greedy everywhere, the same max new tokens, 2 threads
 * each, engines interleaved per prompt in a rotating order. Peers are installed into .cache/peers
 * on first use (bench/peers/setup.sh) and run as long-lived processes, so model loading is never
 * timed. A table on stdout, JSON under bench/results/.
 *
 *   npm run bench:peers [-- --quick] [-- --prompts 5 --max-new-tokens 128 --categories summarization]
 */
import { type ChildProcessWithoutNullStreams, execFileSync, spawn } from 'node:child_process';
import { readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { cpus, release, totalmem } from 'node:os';
import { join } from 'node:path';
import { createInterface, type Interface } from 'node:readline';
import { parseArgs } from 'node:util';
import { createEngine } from '../src/engine/create-engine.js';
import { DEFAULT_SPECULATION, type Engine, NO_SPECULATION, type SpeculationOptions } from '../src/engine/engine.js';
import { ensureDefaultGguf, ensureDefaultModel, projectRoot } from '../src/model/default-model.js';
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
} from './peer-metrics.js';

/** Every engine gets the same thread count (issue 8). */
const THREADS = 2;

const ENGINES = [
  'anpd-serve plain',
  'anpd-serve ANPD',
  'llama.cpp plain (llama-cpp-python)',
  'llama.cpp lookup (llama-lookup)',
  'llama.cpp prompt lookup (llama-cpp-python)',
  'transformers greedy',
  'transformers prompt lookup',
] as const;
type EngineName = (typeof ENGINES)[number];
const REFERENCE: EngineName = 'anpd-serve plain';

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
      for await (const e of engine.generate({ prompt: { kind: 'tokens', tokenIds: job.promptIds }, maxNewTokens: job.maxNewTokens, speculation })) {
        if (e.type === 'delta') {
          if (firstChunkTokens === 0) firstChunkTokens = e.tokenIds.length;
          tokens.push(...e.tokenIds);
        } else final = e;
      }
      if (!final) throw new Error('no final event');
      return { tokens, tokenCount: tokens.length, ttftMs: final.firstTokenMs, totalMs: final.totalMs, firstChunkTokens, modelCalls: final.stats.rounds };
    },
    close: async () => {},
  };
}

/** A bench/peers/peer_server.py process: one JSON line per request and per reply. */
async function pythonRunner(name: EngineName, python: string, args: string[], env: NodeJS.ProcessEnv, info: Record<string, unknown>): Promise<Runner> {
  const child: ChildProcessWithoutNullStreams = spawn(python, [join(projectRoot(), 'bench', 'peers', 'peer_server.py'), ...args], { env, stdio: 'pipe' });
  child.stderr.on('data', (d: Buffer) => process.stderr.write(`  [${name}] ${d.toString()}`));
  const lines: Interface = createInterface({ input: child.stdout });
  const queue: ((line: string) => void)[] = [];
  const exited = new Promise<never>((_, reject) => child.on('exit', (code) => reject(new Error(`${name} exited with code ${code}`))));
  exited.catch(() => {});
  lines.on('line', (line) => queue.shift()?.(line));
  const next = () => Promise.race([new Promise<string>((resolve) => queue.push(resolve)), exited]);
  const ready = JSON.parse(await next()) as { ready: boolean; versions: unknown; settings: unknown };
  info[name] = { versions: ready.versions, settings: ready.settings };
  return {
    name,
    async run(job) {
      child.stdin.write(`${JSON.stringify({ promptIds: job.promptIds, maxNewTokens: job.maxNewTokens, eosIds: eosIds })}\n`);
      const reply = JSON.parse(await next()) as PeerSample & { error?: string };
      if (reply.error) throw new Error(`${name}: ${reply.error}`);
      return { ...reply, tokenCount: reply.tokens.length };
    },
    async close() {
      child.stdin.end();
      await new Promise((resolve) => child.on('close', resolve));
    },
  };
}

let eosIds: readonly number[] = [];

/** llama.cpp's llama-lookup example, one process per prompt (it reports its own timings). */
function lookupRunner(bin: string, gguf: string, eogMarkers: readonly string[]): Runner {
  return {
    name: 'llama.cpp lookup (llama-lookup)',
    async run(job) {
      // It stops once n_predict > -n, i.e. after at least -n + 1 tokens (more when a round overshoots).
      const args = ['-m', gguf, '-p', job.promptText, '-n', String(job.maxNewTokens - 1), '-t', String(THREADS), '-tb', String(THREADS), '-c', '2048', '--temp', '0', '-s', '1'];
      const { stdout, stderr } = await new Promise<{ stdout: string; stderr: string }>((resolve, reject) => {
        const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
        let out = '';
        let err = '';
        child.stdout.on('data', (d: Buffer) => (out += d.toString()));
        child.stderr.on('data', (d: Buffer) => (err += d.toString()));
        child.on('error', reject);
        child.on('close', (code) => (code === 0 ? resolve({ stdout: out, stderr: err }) : reject(new Error(`llama-lookup exited ${code}: ${err.slice(-2000)}`))));
      });
      const run = parseLlamaLookup(stdout, stderr, job.promptText, eogMarkers);
      if (run.promptTokens !== job.promptIds.length) {
        throw new Error(`llama-lookup tokenized the prompt into ${run.promptTokens} tokens, we into ${job.promptIds.length}`);
      }
      return lookupSample(run);
    },
    close: async () => {},
  };
}

function tryExec(cmd: string, args: string[], env?: NodeJS.ProcessEnv): string {
  try {
    return execFileSync(cmd, args, { env: env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'] }).toString().trim();
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
  const env = { ...process.env, LLAMA_CPP_LIB_PATH: libDir, OMP_NUM_THREADS: String(THREADS), MKL_NUM_THREADS: String(THREADS), TOKENIZERS_PARALLELISM: 'false' };

  const gguf = await ensureDefaultGguf();
  const engine = await createEngine(await ensureDefaultModel(), { executionProvider: 'cpu', intraOpThreads: THREADS, kvCapacity: 4096 });
  eosIds = engine.info.eosTokenIds;
  const eogMarkers = eosIds.map((id) => engine.tokenizer.decode([id], { skipSpecialTokens: false }));

  const info: Record<string, unknown> = {};
  const runners: Runner[] = [];
  const want = (n: EngineName) => selected.has(n);
  runners.push(ourRunner('anpd-serve plain', engine, NO_SPECULATION));
  if (want('anpd-serve ANPD')) runners.push(ourRunner('anpd-serve ANPD', engine, DEFAULT_SPECULATION));
  info['anpd-serve plain'] = { settings: NO_SPECULATION };
  info['anpd-serve ANPD'] = { settings: DEFAULT_SPECULATION };
  const ggufArgs = ['--gguf', gguf, '--threads', String(THREADS)];
  process.stderr.write('starting the peer processes (model load and warm-up, not timed)\n');
  if (want('llama.cpp plain (llama-cpp-python)')) runners.push(await pythonRunner('llama.cpp plain (llama-cpp-python)', python, ['--engine', 'llama-cpp-python', '--mode', 'plain', ...ggufArgs], env, info));
  if (want('llama.cpp prompt lookup (llama-cpp-python)')) {
    runners.push(await pythonRunner('llama.cpp prompt lookup (llama-cpp-python)', python, ['--engine', 'llama-cpp-python', '--mode', 'lookup', ...ggufArgs], env, info));
  }
  if (want('llama.cpp lookup (llama-lookup)')) {
    const bin = join(libDir, 'llama-lookup');
    runners.push(lookupRunner(bin, gguf, eogMarkers));
    info['llama.cpp lookup (llama-lookup)'] = { settings: { binary: bin, draftMax: 'default', version: tryExec(bin, ['--version']) } };
  }
  if (want('transformers greedy')) runners.push(await pythonRunner('transformers greedy', python, ['--engine', 'transformers', '--mode', 'greedy', ...ggufArgs], env, info));
  if (want('transformers prompt lookup')) runners.push(await pythonRunner('transformers prompt lookup', python, ['--engine', 'transformers', '--mode', 'prompt-lookup', ...ggufArgs], env, info));
  // Our warm-up, like the peers' (lazy allocations, the verify-cost table).
  for (const r of runners.slice(0, 2)) await r.run({ promptIds: engine.tokenizePrompt({ kind: 'text', text: 'Hello', chat: true }), promptText: '', maxNewTokens: 8 });

  const started = Date.now();
  const results: Record<string, Record<string, EngineRow>> = {};
  const samples: unknown[] = [];
  let failures = 0;
  for (const category of categories) {
    const prompts = (JSON.parse(readFileSync(join(root, 'bench', 'prompts', `${category}.json`), 'utf8')) as { id: string; prompt: string }[]).slice(0, promptsPerCategory);
    const totals = new Map<EngineName, EngineTotals>(runners.map((r) => [r.name, emptyTotals()]));
    for (const [pi, p] of prompts.entries()) {
      const job: Job = {
        promptIds: engine.tokenizePrompt({ kind: 'text', text: p.prompt, chat: true }),
        promptText: engine.tokenizer.applyChatTemplate([{ role: 'user', content: p.prompt }]),
        maxNewTokens,
      };
      const got = new Map<EngineName, PeerSample>();
      for (const r of rotation(runners, pi)) {
        try {
          got.set(r.name, await r.run(job));
        } catch (e) {
          failures++;
          process.stderr.write(`FAILED ${r.name} on ${p.id}: ${(e as Error).message}\n`);
        }
      }
      const ref = got.get(REFERENCE)!;
      const refText = engine.tokenizer.decode(ref.tokens, { skipSpecialTokens: false });
      const refHitLimit = ref.tokenCount >= maxNewTokens;
      for (const [name, s] of got) {
        let identical: boolean;
        let divergeAt: number | undefined;
        if (s.text !== undefined) identical = sameText(refText, refHitLimit, s.text);
        else {
          identical = sameTokens(ref.tokens, s.tokens);
          divergeAt = firstDivergence(ref.tokens, s.tokens);
        }
        addSample(totals.get(name)!, s, name === REFERENCE ? undefined : identical, divergeAt);
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
        });
      }
      const elapsed = ((Date.now() - started) / 1000).toFixed(0);
      process.stderr.write(`${category} ${pi + 1}/${prompts.length} (${job.promptIds.length} prompt tokens) ${elapsed} s\n`);
    }
    results[category] = Object.fromEntries([...totals].map(([name, t]) => [name, summarize(t)]));
  }
  for (const r of runners) await r.close();

  const lines = ['| category | engine | decode tok/s | TTFT ms (median) | tokens / model call | identical to our plain | mean tokens |', '|---|---|---:|---:|---:|---:|---:|'];
  for (const [category, rows] of Object.entries(results)) {
    for (const [name, r] of Object.entries(rows)) {
      const identical = r.identicalShare === null ? '(reference)' : `${Math.round(r.identicalShare * 100)}%`;
      lines.push(`| ${category} | ${name} | ${r.decodeTokPerS} | ${r.ttftMsMedian} | ${r.tokensPerCall} | ${identical} | ${r.meanTokens} |`);
    }
  }
  const targets = Object.entries(results).map(([category, rows]) => {
    const anpd = rows['anpd-serve ANPD'];
    const plain = rows['anpd-serve plain'];
    const llamaPlain = rows['llama.cpp plain (llama-cpp-python)'];
    const lookup = rows['llama.cpp lookup (llama-lookup)'];
    const hfPld = rows['transformers prompt lookup'];
    return {
      category,
      anpdOverLlamaLookup: anpd && lookup ? +(anpd.decodeTokPerS / lookup.decodeTokPerS).toFixed(2) : null,
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
  const ortVersion = (JSON.parse(readFileSync(join(root, 'node_modules', 'onnxruntime-node', 'package.json'), 'utf8')) as { version: string }).version;
  mkdirSync(join(root, 'bench', 'results'), { recursive: true });
  writeFileSync(
    join(root, out),
    `${JSON.stringify(
      {
        benchmark: 'peers',
        model: engine.info.name,
        gguf: gguf.replace(root, '.'),
        date: new Date().toISOString(),
        durationS: Math.round((Date.now() - started) / 1000),
        machine: { cpu: cpus()[0]?.model, cores: cpus().length, memoryGiB: Math.round(totalmem() / 2 ** 30), kernel: release(), node: process.version, python: tryExec(python, ['--version']) },
        revision,
        command: `npm run bench:peers --${process.argv.slice(2).length ? ` ${process.argv.slice(2).join(' ')}` : ''}`,
        settings: { threads: THREADS, promptsPerCategory, maxNewTokens, greedy: true, order: 'engines rotated per prompt', categories },
        versions: { 'onnxruntime-node': ortVersion },
        engines: info,
        definitions: {
          decodeTokPerS: 'tokens after the first chunk / time after the first token, summed over the prompts of a category',
          ttftMs: "request to first generated token by the engine's own clock (llama-lookup: its prompt encode, which includes the last prompt token's forward)",
          tokensPerModelCall: 'generated tokens / model forward passes that produced them (the prompt pass that gives the first token counts; ours: verify rounds after prefill)',
          identicalToPlain: 'same token ids as anpd-serve plain greedy (llama-lookup: same text; it may overshoot max new tokens by a round)',
        },
        failures,
        targets,
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
