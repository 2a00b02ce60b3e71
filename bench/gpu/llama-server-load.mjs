// llama.cpp's llama-server under the load bench/replicas-bench.ts puts on our engine, so both can be
// compared in one run on a GPU machine (node there, no npm, no network: plain JS, node: built-ins only).
// Per stream count: a fresh server with -np slots, `streams` workers taking the prompts in turn, greedy
// decoding; aggregate tok/s, TTFT and TPOT percentiles, and outputs checked against the first run's.
//   node bench/gpu/llama-server-load.mjs --bin /tmp/b/llama.cpp/build/bin --gguf /tmp/model.gguf \
//     --streams 1,16,64 [--np streams|N] [--spec-type ngram-simple] [--max-new-tokens 64] --out l.json
// --spec-type takes llama.cpp's names (ngram-simple: a 12-token lookup drafting up to 48; both sizes
// through --server-args='--spec-ngram-simple-size-n N --spec-ngram-simple-size-m M'; the '=' is needed).
import { spawn } from 'node:child_process';
import { closeSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: {
    bin: { type: 'string' },
    gguf: { type: 'string' },
    streams: { type: 'string', default: '1,16,64' },
    np: { type: 'string', default: 'streams' },
    'spec-type': { type: 'string' },
    // More llama-server flags, space-separated: --server-args='--spec-ngram-simple-size-m 8' (with '=').
    'server-args': { type: 'string', default: '' },
    category: { type: 'string', default: 'code-editing' },
    'max-new-tokens': { type: 'string', default: '64' },
    generations: { type: 'string' },
    port: { type: 'string', default: '8090' },
    'ctx-per-slot': { type: 'string', default: '2048' },
    'request-timeout-s': { type: 'string', default: '300' },
    out: { type: 'string' },
    tag: { type: 'string' },
  },
});
if (values.bin === undefined || values.gguf === undefined) throw new Error('--bin DIR and --gguf FILE are required');
if (values.np !== 'streams' && !(Number(values.np) > 0)) throw new Error('--np must be "streams" or a positive number');
const maxNewTokens = Number(values['max-new-tokens']);
const specType = values['spec-type'] ?? null;
const base = `http://127.0.0.1:${values.port}`;
const requestTimeoutMs = Number(values['request-timeout-s']) * 1000;
const log = (line) => process.stderr.write(`[llama-server-load] ${line}\n`);
const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const prompts = JSON.parse(readFileSync(join(root, 'bench', 'prompts', `${values.category}.json`), 'utf8')).map(
  (p) => p.prompt,
);

// The one server alive at a time; killed however this process ends ('exit' also follows an uncaught
// error; a signal would end node without 'exit', so those are caught).
let server;
const killServer = () => server?.exitCode === null && server.signalCode === null && server.kill('SIGKILL');
process.on('exit', killServer);
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'])
  process.on(signal, () => {
    killServer();
    process.exit(130);
  });

const tail = (file) => readFileSync(file, 'utf8').split('\n').slice(-30).join('\n');

// GET /health's status; 0 when nothing answers.
const health = () =>
  fetch(`${base}/health`, { signal: AbortSignal.timeout(2000) }).then(
    (r) => r.status,
    () => 0,
  );

async function startServer(np) {
  // A server already answering on the port would be measured instead of ours.
  if ((await health()) !== 0) throw new Error(`something already answers on ${base}; pick another --port`);
  const logFile = `/tmp/llama-server-${values.port}-np${np}${specType ? `-${specType}` : ''}.log`;
  const fd = openSync(logFile, 'w');
  const args = ['-m', values.gguf, '-ngl', '99', '-np', `${np}`, '-c', `${np * Number(values['ctx-per-slot'])}`];
  args.push('--port', values.port, ...(specType ? ['--spec-type', specType] : []));
  args.push(...values['server-args'].split(/\s+/).filter(Boolean));
  // LD_LIBRARY_PATH: a shared-library build keeps libllama/libggml beside the binary, wherever it was moved.
  const env = { ...process.env, LD_LIBRARY_PATH: [values.bin, process.env.LD_LIBRARY_PATH].filter(Boolean).join(':') };
  log(`llama-server ${args.join(' ')} (log ${logFile})`);
  const child = spawn(join(values.bin, 'llama-server'), args, { stdio: ['ignore', fd, fd], env });
  closeSync(fd);
  server = child;
  let died;
  child.on('error', (e) => (died = e.message)); // e.g. no binary at --bin
  child.on('exit', (code, signal) => (died ??= `exit ${code ?? signal}`));
  const deadline = Date.now() + 120_000;
  for (;;) {
    if (died !== undefined)
      throw new Error(`llama-server died (${died}) before it was healthy; ${logFile}:\n${tail(logFile)}`);
    if (Date.now() > deadline) throw new Error(`llama-server not healthy in 120 s; ${logFile}:\n${tail(logFile)}`);
    // 503 while the model loads, 200 once the slots are ready.
    if ((await health()) === 200) return;
    await sleep(250);
  }
}

async function stopServer() {
  const child = server;
  if (child === undefined || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGTERM');
  // A graceful stop first (it finishes its slots' cleanup); then no more waiting.
  if ((await Promise.race([exited.then(() => true), sleep(30_000, false)])) === false) {
    child.kill('SIGKILL');
    await Promise.race([exited, sleep(10_000)]);
  }
}

// Each prompt through the model's own chat template, once: formatting stays out of the timed load (our
// engine's templating is in-process and costs next to nothing). ChatML where the endpoint is missing.
const formatted = new Map();
let template = 'apply-template';
async function formatPrompt(i) {
  if (formatted.has(i)) return formatted.get(i);
  const content = prompts[i];
  const res = await fetch(`${base}/apply-template`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ messages: [{ role: 'user', content }] }),
    signal: AbortSignal.timeout(30_000),
  });
  let prompt;
  if (res.status === 404) {
    template = 'chatml-fallback';
    prompt = `<|im_start|>user\n${content}<|im_end|>\n<|im_start|>assistant\n`;
  } else if (!res.ok) throw new Error(`/apply-template: HTTP ${res.status} ${await res.text()}`);
  else prompt = (await res.json()).prompt;
  formatted.set(i, prompt);
  return prompt;
}

// One streamed greedy completion: TTFT at the first event with text, tokens from the final event.
async function complete(prompt, nPredict) {
  const t0 = performance.now();
  const res = await fetch(`${base}/completion`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    // cache_prompt off: every request prefills its whole prompt, as our engine does.
    body: JSON.stringify({ prompt, n_predict: nPredict, temperature: 0, cache_prompt: false, stream: true }),
    signal: AbortSignal.timeout(requestTimeoutMs),
  });
  if (!res.ok) throw new Error(`/completion: HTTP ${res.status} ${await res.text()}`);
  let ttft;
  let text = '';
  let contentEvents = 0;
  let final;
  let pending = '';
  const decoder = new TextDecoder();
  for await (const chunk of res.body) {
    pending += decoder.decode(chunk, { stream: true });
    const lines = pending.split('\n');
    pending = lines.pop();
    for (const line of lines) {
      if (!line.startsWith('data:')) continue; // blank separators, pings
      const event = JSON.parse(line.slice(5));
      if (event.error !== undefined) throw new Error(`/completion: ${JSON.stringify(event.error)}`);
      if (event.content) {
        ttft ??= performance.now() - t0;
        text += event.content;
        contentEvents++;
      }
      if (event.stop) final = event;
    }
  }
  const totalMs = performance.now() - t0;
  if (final === undefined) throw new Error('/completion: the stream ended before its final event');
  // A content event may carry several tokens (accepted drafts): the count comes from the final event.
  return { text, tokens: final.tokens_predicted ?? contentEvents, ttftMs: ttft ?? totalMs, totalMs };
}

function percentile(xs, q) {
  if (xs.length === 0) return null;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))];
}

const round = (x, digits) => (x === null ? null : +x.toFixed(digits));
// The first output of each prompt, from the first run that generated it (the first stream count's).
const reference = new Map();
const rows = [];
for (const streams of values.streams.split(',').map(Number)) {
  const np = values.np === 'streams' ? streams : Number(values.np);
  await startServer(np);
  try {
    for (let i = 0; i < prompts.length; i++) await formatPrompt(i);
    await complete(formatted.get(0), 4); // warm-up: first allocations, kernels loaded
    // As replicas-bench: `streams` workers take prompts in turn until the generations are done.
    const total =
      values.generations !== undefined
        ? Math.max(Number(values.generations), streams)
        : Math.max(prompts.length, 2 * streams);
    let next = 0;
    let tokens = 0;
    let errors = 0;
    let differing = 0;
    const ttft = [];
    const tpot = [];
    const t0 = performance.now();
    await Promise.all(
      Array.from({ length: streams }, async () => {
        while (next < total) {
          const i = next++ % prompts.length;
          try {
            const out = await complete(formatted.get(i), maxNewTokens);
            tokens += out.tokens;
            ttft.push(out.ttftMs);
            tpot.push((out.totalMs - out.ttftMs) / Math.max(1, out.tokens - 1));
            if (!reference.has(i)) reference.set(i, out.text);
            else if (reference.get(i) !== out.text) differing++;
          } catch (e) {
            errors++;
            log(`request for prompt ${i} failed: ${e.message}`);
          }
        }
      }),
    );
    const seconds = (performance.now() - t0) / 1000;
    const row = {
      engine: 'llama-server',
      ...(values.tag !== undefined ? { tag: values.tag } : {}),
      np,
      specType,
      streams,
      generations: total,
      tokens,
      aggregateTokPerS: round(tokens / seconds, 1),
      ttftMsP50: round(percentile(ttft, 0.5), 1),
      ttftMsP99: round(percentile(ttft, 0.99), 1),
      tpotMsP50: round(percentile(tpot, 0.5), 2),
      tpotMsP99: round(percentile(tpot, 0.99), 2),
      outputsDifferingFromOneStream: differing,
      errors,
    };
    rows.push(row);
    log(JSON.stringify(row));
  } finally {
    await stopServer();
  }
}
const report = {
  date: new Date().toISOString(),
  ...(values.tag !== undefined ? { tag: values.tag } : {}),
  gguf: values.gguf,
  category: values.category,
  maxNewTokens,
  serverArgs: values['server-args'] || null,
  template,
  rows,
};
process.stdout.write(`${JSON.stringify(report)}\n`);
if (values.out !== undefined) writeFileSync(values.out, `${JSON.stringify(report, null, 2)}\n`);
