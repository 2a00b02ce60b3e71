/**
 * Soak driver: concurrent clients that open bidi calls (several generations each), cancel some
 * generations in-band, disconnect from others mid-stream, and send unary calls with short
 * deadlines — for a fixed time — while checking that every generation that was not abandoned gets
 * exactly one terminal message and that nothing fails in a way the client did not cause.
 * Used by `npm run load` (minutes) and by test/soak.test.ts (seconds).
 */
import { execFileSync } from 'node:child_process';
import { status as GrpcStatus, type ServiceError } from '@grpc/grpc-js';
import { TextGenerationClient } from '../src/transport/grpc/client.js';
import type { BidiServerMsg, GenerateRequestMsg } from '../src/transport/grpc/messages.js';
import { rng, SOAK_PROMPTS, sleep, variedSoakPrompt } from './soak-random.js';

export interface SoakOptions {
  readonly address: string;
  readonly durationMs: number;
  /** Concurrent client loops. */
  readonly workers: number;
  readonly seed: number;
  /** Each generation asks for a random max_new_tokens in [8, this]. */
  readonly maxNewTokensMax: number;
  /**
   * Replica kills during the run: every `everyMs`, `kill()` SIGKILLs a model replica (and returns
   * its pid, or undefined when none could be killed). Generations on the victim end UNAVAILABLE
   * with reason REPLICA_FAILED (retryable): counted, not unexpected — as is UNAVAILABLE "no model
   * replica is up" while all are restarting.
   */
  readonly replicaKills?: { readonly everyMs: number; readonly kill: () => number | undefined };
  /**
   * Varied prompts (the cache soak): each generation's prompt is one of these documents plus a
   * random question, under one of VARIED_SOAK_TENANTS cache salts. Absent: SOAK_PROMPTS, no salt.
   */
  readonly variedDocuments?: readonly string[];
}

export interface SoakResult {
  readonly durationMs: number;
  /** Client actions: bidi calls, server streams cut by a client cancel, unary calls with deadlines. */
  readonly calls: { bidi: number; bidiDisconnected: number; streamDisconnected: number; unaryWithDeadline: number };
  readonly generations: {
    readonly sent: number;
    readonly completed: number;
    readonly cancelledInBand: number;
    /** Abandoned on purpose: their call was cancelled by the client. */
    readonly abandoned: number;
    /** RESOURCE_EXHAUSTED: shed by admission control, expected above capacity. */
    readonly shed: number;
    readonly deadlineExceeded: number;
    /** UNAVAILABLE because their replica was killed (or none was up): only with replicaKills. */
    readonly replicaFailed: number;
  };
  /** Replicas killed during the run (pids). */
  readonly replicaKills: readonly number[];
  readonly outputTokens: number;
  /** Problems: unexpected status codes, missing or duplicated terminal messages. Must be empty. */
  readonly unexpected: readonly string[];
}

export async function runSoak(options: SoakOptions): Promise<SoakResult> {
  const random = rng(options.seed);
  const pick = <T>(items: readonly T[]): T => items[Math.floor(random() * items.length)]!;
  const between = (lo: number, hi: number) => lo + Math.floor(random() * (hi - lo + 1));
  const calls = { bidi: 0, bidiDisconnected: 0, streamDisconnected: 0, unaryWithDeadline: 0 };
  const generations = {
    sent: 0,
    completed: 0,
    cancelledInBand: 0,
    abandoned: 0,
    shed: 0,
    deadlineExceeded: 0,
    replicaFailed: 0,
  };
  const replicaKills: number[] = [];
  // An UNAVAILABLE a replica kill explains (the status message or the in-band reason says so).
  const killedReplica = (code: number, text: string) =>
    options.replicaKills !== undefined &&
    code === GrpcStatus.UNAVAILABLE &&
    /REPLICA_FAILED|replica running this generation|no model replica is up/.test(text);
  let outputTokens = 0;
  const unexpected: string[] = [];
  const unexpectedMax = 50;
  const note = (problem: string) => {
    if (unexpected.length < unexpectedMax) unexpected.push(problem);
  };
  let nextId = 0;
  const documents = options.variedDocuments;
  const request = (): GenerateRequestMsg => {
    const varied = documents !== undefined ? variedSoakPrompt(random, documents) : undefined;
    return {
      request_id: `soak-${nextId++}`,
      messages: { messages: [{ role: 'user', content: varied?.content ?? pick(SOAK_PROMPTS) }] },
      stopping: { max_new_tokens: between(8, options.maxNewTokensMax) },
      ...(varied !== undefined ? { cache: { salt: varied.salt } } : {}),
    };
  };
  const started = performance.now();
  const deadline = started + options.durationMs;

  async function bidiCall(client: TextGenerationClient, disconnect: boolean): Promise<void> {
    calls.bidi++;
    const call = client.generateBidi();
    const terminals = new Map<string, number>();
    const cancelled = new Set<string>();
    const ids: string[] = [];
    call.on('data', (m: BidiServerMsg) => {
      if ('chunk' in m) {
        if (m.chunk.final === undefined) return;
        const id = m.chunk.request_id;
        terminals.set(id, (terminals.get(id) ?? 0) + 1);
        outputTokens += m.chunk.final.usage.output_tokens;
        if (m.chunk.final.finish_reason === 'FINISH_REASON_CANCELLED') {
          if (!cancelled.has(id)) note(`${id}: CANCELLED final without a cancel`);
          generations.cancelledInBand++;
        } else generations.completed++;
      } else {
        const id = m.error.request_id;
        terminals.set(id, (terminals.get(id) ?? 0) + 1);
        if (m.error.code === GrpcStatus.RESOURCE_EXHAUSTED) generations.shed++;
        else if (killedReplica(m.error.code, `${m.error.reason} ${m.error.message}`)) generations.replicaFailed++;
        else note(`${id}: in-band error ${m.error.code} ${m.error.reason}: ${m.error.message}`);
      }
    });
    const ended = new Promise<{ code: number; details: string }>((resolve) => call.on('status', resolve));
    call.on('error', () => {}); // the status event carries it
    const count = between(1, 4);
    for (let i = 0; i < count; i++) {
      const r = request();
      ids.push(r.request_id!);
      generations.sent++;
      call.write({ generate: r });
      await sleep(between(0, 40));
    }
    if (random() < 0.3) {
      await sleep(between(20, 1500));
      const victim = pick(ids);
      cancelled.add(victim);
      call.write({ cancel: { request_ids: [victim] } });
    }
    if (disconnect) {
      calls.bidiDisconnected++;
      await sleep(between(50, 2000));
      call.cancel();
      const s = await ended;
      // A disconnect may race the last terminal: the call may have ended OK just before it.
      if (s.code !== GrpcStatus.CANCELLED && s.code !== GrpcStatus.OK)
        note(`disconnected bidi call ended ${s.code}: ${s.details}`);
      for (const id of ids) if ((terminals.get(id) ?? 0) === 0) generations.abandoned++;
      for (const [id, n] of terminals) if (n > 1) note(`${id}: ${n} terminal messages`);
      return;
    }
    call.end();
    const s = await ended;
    if (s.code !== GrpcStatus.OK) note(`bidi call ended ${s.code}: ${s.details}`);
    for (const id of ids) {
      const n = terminals.get(id) ?? 0;
      if (n !== 1) note(`${id}: ${n} terminal messages (want exactly 1)`);
    }
  }

  async function streamDisconnect(client: TextGenerationClient): Promise<void> {
    calls.streamDisconnected++;
    generations.sent++;
    const stream = client.generateStream(request());
    const ended = new Promise<{ code: number; details: string }>((resolve) => stream.on('status', resolve));
    stream.on('error', () => {});
    let final = false;
    stream.on('data', (chunk: { final?: { usage: { output_tokens: number } } }) => {
      if (chunk.final) {
        final = true;
        outputTokens += chunk.final.usage.output_tokens;
      }
    });
    await sleep(between(30, 1500));
    stream.cancel();
    const s = await ended;
    if (s.code === GrpcStatus.RESOURCE_EXHAUSTED) generations.shed++;
    else if (s.code === GrpcStatus.OK && final) generations.completed++;
    else if (s.code === GrpcStatus.CANCELLED) generations.abandoned++;
    else if (killedReplica(s.code, s.details)) generations.replicaFailed++;
    else note(`disconnected stream ended ${s.code}: ${s.details}`);
  }

  async function unaryWithDeadline(client: TextGenerationClient): Promise<void> {
    calls.unaryWithDeadline++;
    generations.sent++;
    try {
      const response = await client.generate(request(), { deadlineMs: between(200, 4000) });
      generations.completed++;
      outputTokens += response.final.usage.output_tokens;
    } catch (error) {
      const e = error as ServiceError;
      if (e.code === GrpcStatus.DEADLINE_EXCEEDED) generations.deadlineExceeded++;
      else if (e.code === GrpcStatus.RESOURCE_EXHAUSTED) generations.shed++;
      else if (killedReplica(e.code ?? -1, e.details ?? '')) generations.replicaFailed++;
      else note(`unary ended ${e.code}: ${e.details}`);
    }
  }

  async function worker(): Promise<void> {
    // A fresh channel now and then: connections come and go as well as streams.
    let client = new TextGenerationClient(options.address);
    let uses = 0;
    try {
      while (performance.now() < deadline) {
        if (++uses > 8) {
          client.close();
          client = new TextGenerationClient(options.address);
          uses = 0;
        }
        const dice = random();
        if (dice < 0.5) await bidiCall(client, false);
        else if (dice < 0.65) await bidiCall(client, true);
        else if (dice < 0.8) await streamDisconnect(client);
        else await unaryWithDeadline(client);
        // Shed requests come back in a millisecond: back off a little as a real client would.
        await sleep(between(0, 100));
      }
    } finally {
      client.close();
    }
  }

  const killer = options.replicaKills;
  const killing =
    killer === undefined
      ? undefined
      : setInterval(() => {
          const pid = killer.kill();
          if (pid !== undefined) replicaKills.push(pid);
        }, killer.everyMs);
  try {
    await Promise.all(Array.from({ length: options.workers }, () => worker()));
  } finally {
    clearInterval(killing);
  }
  return {
    durationMs: Math.round(performance.now() - started),
    calls,
    generations,
    replicaKills,
    outputTokens,
    unexpected,
  };
}

/**
 * SIGKILLs one model replica process of the server `serverPid` (its children running
 * engine-worker-main.js: replicas with --engine-isolation process), taking them in turn; returns the
 * pid, or undefined when none is running (all restarting).
 */
export function replicaKiller(serverPid: number): () => number | undefined {
  let turn = 0;
  return () => {
    let listing = '';
    try {
      listing = execFileSync('ps', ['--ppid', String(serverPid), '-o', 'pid=,args='], { encoding: 'utf8' });
    } catch {
      return undefined; // ps exits 1 when there are no children
    }
    const pids = listing
      .split('\n')
      .filter((l) => l.includes('engine-worker-main.js'))
      .map((l) => Number(l.trim().split(/\s+/)[0]));
    if (pids.length === 0) return undefined;
    const pid = pids[turn++ % pids.length]!;
    try {
      process.kill(pid, 'SIGKILL');
      return pid;
    } catch {
      return undefined;
    }
  };
}
