#!/usr/bin/env node
/**
 * Command line: fetch and convert the default model, convert any GGUF, and generate text with
 * streaming output — a way to see the engine work without a gRPC client.
 */
import { readFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { parseArgs } from 'node:util';
import { DEFAULT_GRAPH_OPTIONS, GRAPH_DTYPES, type GraphOptions } from '../convert/decoder-graph.js';
import { DEFAULT_SPECULATION, type Prompt, type SpeculationOptions } from '../contract.js';
import { AnpdError } from '../errors.js';
import { probeExecutionProvider } from '../runtime/gpu-probe.js';
import { EXECUTION_PROVIDERS } from '../runtime/types.js';
import { withProgress } from './progress.js';
import { numberFlag, parseSamplingFlags, SAMPLING_FLAG_OPTIONS } from './sampling-flags.js';
import { MAIN_EVALUATED_MARK } from './startup-timer.js';

// Commands import what they need when they run: `serve` must not wait for the converter or an
// in-process ONNX Runtime, `health` (a container health check, run every few seconds) not for the
// engine or telemetry.
performance.mark(MAIN_EVALUATED_MARK);

const HELP = `anpd — lossless LLM inference with adaptive n-gram speculative decoding

Usage:
  anpd serve [options]                start the gRPC server (anpd serve --help)
  anpd client "PROMPT" [options]      stream a generation from a running server (anpd client --help)
  anpd health [options]               check a running server's health; exit 0 when SERVING (anpd health --help)
  anpd generate "PROMPT" [options]    stream a completion to stdout, in process
  anpd fetch-model [NAME]             download and convert a known model: smollm2-135m-instruct (the default,
                                      SmolLM2-135M-Instruct) or gemma3-270m (Gemma 3 270M, Gemma terms of use)
  anpd convert FILE.gguf OUT_DIR      convert a GGUF (llama, qwen2, qwen3, gemma3) to an ONNX model directory

generate options:
  --model DIR|FILE.gguf|NAME  model directory (converted: anpd-model.json, or a Hugging Face ONNX export), a
                            GGUF file (converted into the cache on first use), or a known model's NAME
                            (fetched and converted on first use; default: smollm2-135m-instruct)
  --prompt-file PATH        read the prompt from a file instead of the argument
  --chat / --no-chat        wrap the prompt in the model's chat template (default: on when the model has one)
  --max-new-tokens N        tokens to generate at most (default 256)
  --temperature T           0 = greedy (default 0)
  --top-k K                 sample among the K most likely tokens (default 0 = off)
  --top-p P                 nucleus sampling mass (default 1 = off)
  --repetition-penalty R    penalise tokens already present (default 1 = off)
  --seed S                  RNG seed for sampling (default 0)
  --stop TEXT               stop sequence (repeatable)
  --json-schema FILE        constrain the output to this JSON Schema (structured output)
  --json                    constrain the output to JSON
  --regex R                 constrain the output to match this regular expression
  --grammar FILE            constrain the output to this grammar (XGrammar EBNF, GBNF-like)
  --ignore-eos              keep generating past the end-of-sequence token
  --speculation off|ngram   n-gram speculative decoding (default ngram; output is identical either way)
  --draft-max K             largest draft per round (default 7, at most 16)
  --ngram-n N               highest n-gram order (default 5)
  --draft-length adaptive|fixed   per-round length from acceptance and verify cost (default), or always K
  --drafter hybrid|paper    span copy + gated tables (default), or the paper's ungated tables
  --threads N               ONNX Runtime intra-op threads (default: number of cores)
  --execution-provider auto|cpu|webgpu|cuda  where the model runs (default auto: cuda where its provider
                            is installed and a GPU is present, else cpu; a GPU provider must take
                            every node: no silent CPU fallback)
  --rows-min N              smallest forward in query rows (default 2 on cpu, 4 on a GPU; exactness
                            of speculation depends on it: change it only to investigate)
  --stats                   print one JSON line of statistics on stderr at the end

convert options:
  --weights nbits|f32       4-bit MatMulNBits (default) or dequantized float32 MatMul
  --norms fused|plain       fused (Skip)SimplifiedLayerNormalization (default) or plain ops
  --slots K                 a K-slot batch graph (K sequences per forward) for anpd serve --batch-model
  --attention paged         float16 only: one graph for any number of sequences per forward (CUDA
                            continuous batching, PagedAttention; what anpd serve --batch-slots converts on cuda)
  --dtype float32|float16   activations and KV cache type (default float32; float16 is what the cuda
                            provider runs, and what fetch-model/generate pick for --execution-provider cuda)

Environment:
  ANPD_CACHE_DIR            where downloads and converted models go (default: .cache/ in the project)
  ANPD_PYTHON               Python used for pip download (default: python3)
`;

function graphOptions(values: {
  weights?: string | undefined;
  norms?: string | undefined;
  slots?: string | undefined;
  attention?: string | undefined;
  dtype?: string | undefined;
  'execution-provider'?: string | undefined;
}): GraphOptions {
  const weights = values.weights ?? DEFAULT_GRAPH_OPTIONS.weights;
  const norms = values.norms ?? DEFAULT_GRAPH_OPTIONS.norms;
  if (weights !== 'nbits' && weights !== 'f32')
    throw new AnpdError('INVALID_REQUEST', `--weights must be nbits or f32, got ${weights}`);
  if (norms !== 'fused' && norms !== 'plain')
    throw new AnpdError('INVALID_REQUEST', `--norms must be fused or plain, got ${norms}`);
  const slots = Number(values.slots ?? 0);
  if (!Number.isInteger(slots) || slots < 0 || slots > 64 || slots === 1)
    throw new AnpdError('INVALID_REQUEST', `--slots must be 0 or an integer in [2, 64], got ${values.slots}`);
  const dtype = oneOf(
    values.dtype,
    'dtype',
    GRAPH_DTYPES,
    values['execution-provider'] === 'cuda' ? 'float16' : 'float32',
  );
  if (values.attention !== undefined && values.attention !== 'paged')
    throw new AnpdError('INVALID_REQUEST', `--attention must be paged (or absent), got "${values.attention}"`);
  if (values.attention === 'paged' && (dtype !== 'float16' || slots > 0))
    throw new AnpdError('INVALID_REQUEST', '--attention paged goes with --dtype float16 and without --slots');
  return {
    ...DEFAULT_GRAPH_OPTIONS,
    weights,
    norms,
    ...(slots > 0 ? { slots } : {}),
    ...(dtype === 'float16' ? { dtype } : {}),
    ...(values.attention === 'paged' ? { attention: 'paged' as const } : {}),
  };
}

function oneOf<T extends string>(value: string | undefined, name: string, allowed: readonly T[], fallback: T): T {
  if (value === undefined) return fallback;
  if (!(allowed as readonly string[]).includes(value))
    throw new AnpdError('INVALID_REQUEST', `--${name} must be one of ${allowed.join(', ')}, got "${value}"`);
  return value as T;
}

function num(value: string | undefined, name: string, fallback: number): number {
  return numberFlag(value, name) ?? fallback;
}

async function main(argv: string[]): Promise<number> {
  if (argv[0] === 'serve') return (await import('./serve.js')).runServe(argv.slice(1));
  if (argv[0] === 'client') return (await import('./client.js')).runClient(argv.slice(1));
  if (argv[0] === 'health') return (await import('./client.js')).runHealth(argv.slice(1));
  const [{ classifyModelArgument, REGISTRY, registryModel }, { ensureModelArgument }] = await Promise.all([
    import('../registry/model-registry.js'),
    import('../registry/model-cache.js'),
  ]);
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      help: { type: 'boolean', short: 'h' },
      model: { type: 'string' },
      'prompt-file': { type: 'string' },
      chat: { type: 'boolean' },
      'no-chat': { type: 'boolean' },
      ...SAMPLING_FLAG_OPTIONS,
      'ignore-eos': { type: 'boolean' },
      threads: { type: 'string' },
      'execution-provider': { type: 'string' },
      'rows-min': { type: 'string' },
      speculation: { type: 'string' },
      'draft-max': { type: 'string' },
      'ngram-n': { type: 'string' },
      'draft-length': { type: 'string' },
      drafter: { type: 'string' },
      stats: { type: 'boolean' },
      weights: { type: 'string' },
      norms: { type: 'string' },
      slots: { type: 'string' },
      attention: { type: 'string' },
      dtype: { type: 'string' },
    },
  });
  const [command, ...rest] = positionals;
  if (values.help || command === undefined || command === 'help') {
    process.stdout.write(HELP);
    return command === undefined && !values.help ? 2 : 0;
  }
  const options = graphOptions(values);

  if (command === 'fetch-model') {
    const id = rest[0];
    const model = id === undefined ? REGISTRY[0]! : registryModel(id);
    if (model === undefined)
      throw new AnpdError('INVALID_REQUEST', `unknown model "${id}" (known: ${REGISTRY.map((m) => m.id).join(', ')})`);
    const dir = await withProgress((progress) => ensureModelArgument({ kind: 'registry', model }, options, progress));
    process.stdout.write(`${dir}\n`);
    return 0;
  }
  if (command === 'convert') {
    const [gguf, out] = rest;
    if (gguf === undefined || out === undefined)
      throw new AnpdError('INVALID_REQUEST', 'usage: anpd convert FILE.gguf OUT_DIR');
    const { convertGguf } = await import('../convert/convert-gguf.js');
    const result = await withProgress((progress) =>
      convertGguf(gguf, out, options, (phase, done, total) => progress({ phase: phase as 'convert', done, total })),
    );
    process.stdout.write(
      `${result.dir} (${(result.onnxBytes / 1e6).toFixed(1)} MB, ${(result.convertMs / 1000).toFixed(1)} s)\n`,
    );
    return 0;
  }
  if (command !== 'generate') {
    process.stderr.write(`unknown command "${command}"\n\n${HELP}`);
    return 2;
  }

  let text = rest.join(' ');
  if (values['prompt-file'] !== undefined) text = readFileSync(values['prompt-file'], 'utf8');
  if (text.trim() === '') throw new AnpdError('INVALID_REQUEST', 'generate needs a prompt (argument or --prompt-file)');
  const choice = oneOf(
    values['execution-provider'],
    'execution-provider',
    [...EXECUTION_PROVIDERS, 'auto'] as const,
    'auto',
  );
  const executionProvider = choice === 'auto' ? probeExecutionProvider().provider : choice;
  // CUDA runs the float16 graph (ORT's CUDA attention takes only 16-bit types).
  const graph =
    executionProvider === 'cuda' && values.dtype === undefined ? { ...options, dtype: 'float16' as const } : options;
  const modelArgument = classifyModelArgument(values.model);
  const modelDir =
    modelArgument.kind === 'dir'
      ? modelArgument.path
      : await withProgress((progress) => ensureModelArgument(modelArgument, graph, progress));
  const threads = num(values.threads, 'threads', cpus().length);
  const rowsMin = values['rows-min'] !== undefined ? { forwardRowsMin: num(values['rows-min'], 'rows-min', 2) } : {};
  const { createEngine } = await import('../engine/create-engine.js');
  const engine = await createEngine(modelDir, {
    executionProvider,
    intraOpThreads: threads,
    kvCapacity: 4096,
    ...rowsMin,
  });
  const chat = values['no-chat'] ? false : (values.chat ?? engine.tokenizer.hasChatTemplate);
  const prompt: Prompt = { kind: 'text', text, chat };
  const speculation: SpeculationOptions = {
    mode: oneOf(values.speculation, 'speculation', ['off', 'ngram'], DEFAULT_SPECULATION.mode),
    ngramN: num(values['ngram-n'], 'ngram-n', DEFAULT_SPECULATION.ngramN),
    draftTokensMax: num(values['draft-max'], 'draft-max', DEFAULT_SPECULATION.draftTokensMax),
    draftLength: oneOf(values['draft-length'], 'draft-length', ['adaptive', 'fixed'], DEFAULT_SPECULATION.draftLength),
    drafter: oneOf(values.drafter, 'drafter', ['hybrid', 'paper'], DEFAULT_SPECULATION.drafter),
  };
  const flags = parseSamplingFlags(values);
  const controller = new AbortController();
  process.once('SIGINT', () => controller.abort(new Error('interrupted')));
  for await (const event of engine.generate(
    {
      prompt,
      maxNewTokens: flags.maxNewTokens ?? 256,
      stopSequences: flags.stopSequences,
      ignoreEos: values['ignore-eos'] ?? false,
      speculation,
      sampling: {
        temperature: flags.temperature ?? 0,
        topK: flags.topK ?? 0,
        topP: flags.topP ?? 1,
        repetitionPenalty: flags.repetitionPenalty ?? 1,
        seed: num(flags.seed, 'seed', 0),
      },
      ...(flags.responseFormat !== undefined ? { responseFormat: flags.responseFormat } : {}),
    },
    controller.signal,
  )) {
    if (event.type === 'delta') {
      process.stdout.write(event.text);
    } else {
      process.stdout.write('\n');
      if (values.stats) {
        const decodeMs = event.totalMs - event.prefillMs;
        const s = event.stats;
        process.stderr.write(
          `${JSON.stringify({
            finishReason: event.finishReason,
            promptTokens: event.promptTokens,
            tokens: event.completionTokens,
            verifySteps: s.rounds,
            drafted: s.draftTokensProposed,
            accepted: s.draftTokensAccepted,
            tau: s.rounds > 0 ? +(event.completionTokens / s.rounds).toFixed(3) : 0,
            prefillMs: +event.prefillMs.toFixed(1),
            firstTokenMs: +event.firstTokenMs.toFixed(1),
            decodeMs: +decodeMs.toFixed(1),
            tokPerS: decodeMs > 0 ? +((event.completionTokens / decodeMs) * 1000).toFixed(2) : 0,
            draftMs: +s.draftMs.toFixed(2),
            acceptanceByPosition: s.draftedAtPosition.map((d, j) =>
              d > 0 ? +(s.acceptedAtPosition[j]! / d).toFixed(3) : null,
            ),
          })}\n`,
        );
      }
    }
  }
  await engine.model.dispose();
  return 0;
}

/**
 * A flag the command does not know (or a missing value): one line naming it and the command's
 * usage, exit 2 — not Node's parseArgs TypeError with its stack. Undefined for other errors.
 */
async function usageError(error: unknown, command: string): Promise<string | undefined> {
  const code = (error as { code?: unknown } | null)?.code;
  if (typeof code !== 'string' || !code.startsWith('ERR_PARSE_ARGS_')) return undefined;
  const message = (error as Error).message;
  const name = /'([^' ]+)/.exec(message)?.[1] ?? '';
  const line =
    code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION'
      ? `unknown option ${name}`
      : code === 'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL'
        ? `unexpected argument ${name}`
        : /does not take an argument/.test(message)
          ? `option ${name} takes no value`
          : `option ${name} needs a value`;
  const { CLIENT_HELP, HEALTH_HELP } = await import('./client.js');
  const usage = command === 'client' ? CLIENT_HELP : command === 'health' ? HEALTH_HELP : HELP;
  return `anpd ${command}: ${line}\n\n${usage}`;
}

const argv = process.argv.slice(2);
main(argv).then(
  (code) => {
    process.exitCode = code;
  },
  async (error: unknown) => {
    const usage = await usageError(error, argv.find((a) => !a.startsWith('-')) ?? '');
    if (usage !== undefined) {
      process.stderr.write(usage);
      process.exitCode = 2;
      return;
    }
    const message =
      error instanceof AnpdError
        ? `error (${error.code}): ${error.message}`
        : `error: ${(error as Error).stack ?? String(error)}`;
    process.stderr.write(`${message}\n`);
    process.exitCode = 1;
  },
);
