/**
 * Several model replicas behind one backend, each a WorkerEngine with its own ORT session (on its
 * own thread, or on a GPU in its own process), so forwards of different sequences run at the same
 * time: on a GPU one replica leaves the device idle while its thread encodes and submits kernels
 * (the 135M model is dispatch-bound), and on a many-core CPU two half-width sessions can beat one
 * full-width. Runs go to the replica with the fewest runs in flight; a sequence stays on its
 * replica (its KV cache lives there).
 */
import { availableParallelism } from 'node:os';
import type { ModelInfo, RuntimeOptions } from '../runtime/types.js';
import type { TextTokenizer } from '../tokenizer/tokenizer.js';
import type { GenerateRequest, GenerationBackend, GenerationEvent, PreparedGeneration, Prompt } from '../contract.js';
import { ReplicaFailedError } from '../errors.js';
import { DEFER_MEASUREMENT, type ForwardCostPlan, MEASURE_NOW } from './forward-cost.js';
import type { WorkerStartupTimes } from './worker-protocol.js';
import { type EngineIsolation, WorkerEngine } from './worker-engine.js';

export const ENGINE_REPLICAS_LIMIT = 64;

/** How the pool keeps its replicas up. */
export interface SupervisionOptions {
  /** A replica whose forwards make no progress (or that sends no heartbeat) this long is wedged and replaced; 0 = no watchdog. */
  readonly forwardTimeoutMs: number;
  /** Restarts of one replica within any 60 s; beyond it the next waits until the oldest leaves the window. */
  readonly restartsPerMinuteMax: number;
  /** First restart delay, doubled after each failed start, capped. */
  readonly restartBackoffMs: number;
  readonly restartBackoffMaxMs: number;
}

/**
 * The slowest forward measured here is a 512-token prefill chunk: ~0.5 s on 2 CPU cores, far
 * less on a GPU; a minute is two orders of magnitude above it, yet a hang is caught in a minute.
 */
export const DEFAULT_SUPERVISION: SupervisionOptions = { forwardTimeoutMs: 60_000, restartsPerMinuteMax: 5, restartBackoffMs: 250, restartBackoffMaxMs: 30_000 };

/** What happened to a replica (for logs and metrics; the pool itself neither logs nor measures). */
export interface ReplicaEvent {
  readonly kind: 'died' | 'wedged' | 'restarted' | 'restart-failed';
  readonly replica: number;
  /** Why it died, was declared wedged, or failed to start. */
  readonly reason?: string;
  /** With died / wedged / restart-failed: when the next start is tried. */
  readonly restartInMs?: number;
  /** Restarts in the last minute, with restart-failed / restarted. */
  readonly restartsLastMinute?: number;
  /** The replica's process (process isolation). */
  readonly pid?: number;
  /** Replicas up after the event, of how many. */
  readonly up: number;
  readonly total: number;
}

export interface ReplicaCapacity {
  readonly up: number;
  readonly total: number;
}

interface Slot {
  engine: WorkerEngine;
  /** The current engine is dead and a start is scheduled or running. */
  down: boolean;
  inFlight: number;
  /** Start times (epoch ms) of restarts within the last minute. */
  restarts: number[];
  /** Consecutive failed starts (backoff exponent). */
  failedStarts: number;
  timer: NodeJS.Timeout | undefined;
}

type PoolOptions = { replicas?: number; forwardCost?: ForwardCostPlan; isolation?: EngineIsolation; supervision?: Partial<SupervisionOptions> };

export class EnginePool implements GenerationBackend {
  private readonly slots: Slot[];
  private readonly modelDir: string;
  private readonly runtime: RuntimeOptions;
  private readonly isolation: EngineIsolation;
  private readonly supervision: SupervisionOptions;
  private readonly listeners: ((event: ReplicaEvent) => void)[] = [];
  private readonly watchdog: NodeJS.Timeout | undefined;
  private disposed = false;

  private constructor(replicas: readonly WorkerEngine[], modelDir: string, runtime: RuntimeOptions, isolation: EngineIsolation, supervision: SupervisionOptions) {
    this.modelDir = modelDir;
    this.runtime = runtime;
    this.isolation = isolation;
    this.supervision = supervision;
    this.slots = replicas.map((engine) => ({ engine, down: false, inFlight: 0, restarts: [], failedStarts: 0, timer: undefined }));
    this.slots.forEach((slot, i) => this.supervise(i, slot.engine));
    if (supervision.forwardTimeoutMs > 0) {
      this.watchdog = setInterval(() => this.checkWedged(), Math.min(1_000, Math.max(50, supervision.forwardTimeoutMs / 4)));
      this.watchdog.unref();
    }
  }

  /**
   * Loads `replicas` copies of the model. The first measures the forward cost (unless given) and the
   * others reuse its table, so every replica drafts alike and start-up pays one calibration.
   */
  static async create(modelDir: string, runtime: RuntimeOptions, options: PoolOptions = {}): Promise<EnginePool> {
    const count = options.replicas ?? 1;
    if (!Number.isInteger(count) || count < 1 || count > ENGINE_REPLICAS_LIMIT) {
      throw new RangeError(`engine replicas must be an integer in [1, ${ENGINE_REPLICAS_LIMIT}], got ${count}`);
    }
    const supervision: SupervisionOptions = { ...DEFAULT_SUPERVISION, ...options.supervision };
    // "0 = one thread per core" is shared out, or the replicas' thread pools would fight over cores.
    const perReplica: RuntimeOptions =
      runtime.intraOpThreads === 0 && count > 1 ? { ...runtime, intraOpThreads: Math.max(1, Math.floor(availableParallelism() / count)) } : runtime;
    // ORT's WebGPU provider keeps one device context per process, and two threads submitting to it
    // at once corrupt its command encoder (seen on an H200): GPU replicas get a process each.
    const isolation: EngineIsolation = options.isolation ?? (count > 1 && runtime.executionProvider !== 'cpu' ? 'process' : 'thread');
    // Deferring the measurement is for one replica; several share one table, measured by the first.
    const plan = options.forwardCost ?? MEASURE_NOW;
    const first = await WorkerEngine.create(modelDir, perReplica, { forwardCost: count > 1 && plan.mode === 'defer' ? MEASURE_NOW : plan, isolation });
    const table = first.forwardCost;
    const rest = await Promise.allSettled(
      Array.from({ length: count - 1 }, () => WorkerEngine.create(modelDir, perReplica, { forwardCost: sharedTable(table), tokenizer: first.tokenizer, isolation })),
    );
    const loaded = [first, ...rest.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []))];
    const failed = rest.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed !== undefined) {
      await Promise.all(loaded.map((replica) => replica.dispose()));
      throw failed.reason;
    }
    return new EnginePool(loaded, modelDir, perReplica, isolation, supervision);
  }

  /** Each replica's current engine (a dead one until its restart has loaded). */
  get replicas(): readonly WorkerEngine[] {
    return this.slots.map((s) => s.engine);
  }

  get info(): ModelInfo {
    return this.slots[0]!.engine.info;
  }

  get tokenizer(): TextTokenizer {
    return this.slots[0]!.engine.tokenizer;
  }

  get forwardCost(): readonly number[] | undefined {
    return this.slots.find((s) => s.engine.forwardCost !== undefined)?.engine.forwardCost;
  }

  /** The first replica's startup phases (startup breakdowns). */
  get startupTimes(): WorkerStartupTimes {
    return this.slots[0]!.engine.startupTimes;
  }

  /** Measures the table now where it was deferred (one replica); several replicas have it from creation. */
  calibrate(): Promise<readonly number[]> {
    return this.slots[0]!.engine.calibrate();
  }

  /** Runs in flight per replica (for tests and diagnostics). */
  get runsInFlight(): readonly number[] {
    return this.slots.map((s) => s.inFlight);
  }

  /** Replicas that can serve now. */
  get capacity(): ReplicaCapacity {
    return { up: this.slots.filter((s) => s.engine.alive).length, total: this.slots.length };
  }

  /** Deaths, wedges and restarts as they happen. */
  onReplicaEvent(listener: (event: ReplicaEvent) => void): void {
    this.listeners.push(listener);
  }

  tokenizePrompt(prompt: Prompt): number[] {
    return this.slots[0]!.engine.tokenizePrompt(prompt);
  }

  prepare(request: GenerateRequest): PreparedGeneration {
    return this.slots[0]!.engine.prepare(request);
  }

  async *run(prepared: PreparedGeneration, signal?: AbortSignal): AsyncGenerator<GenerationEvent> {
    if (this.disposed) throw new ReplicaFailedError('the engine pool is disposed');
    // The live replica with the fewest runs in flight; a dead one is never chosen.
    let chosen = -1;
    for (let i = 0; i < this.slots.length; i++) {
      const slot = this.slots[i]!;
      if (slot.engine.alive && (chosen === -1 || slot.inFlight < this.slots[chosen]!.inFlight)) chosen = i;
    }
    if (chosen === -1) throw new ReplicaFailedError(`no model replica is up (${this.slots.length} restarting); retry shortly`);
    const slot = this.slots[chosen]!;
    slot.inFlight++;
    try {
      yield* slot.engine.run(prepared, signal);
    } finally {
      slot.inFlight--;
    }
  }

  async dispose(): Promise<void> {
    this.disposed = true;
    clearInterval(this.watchdog);
    for (const slot of this.slots) clearTimeout(slot.timer);
    await Promise.all(this.slots.map((slot) => slot.engine.dispose()));
  }

  private emit(event: Omit<ReplicaEvent, 'up' | 'total'>): void {
    const full: ReplicaEvent = { ...event, ...this.capacity };
    for (const listener of this.listeners) listener(full);
  }

  /** Replaces `engine` when it dies (unless it was replaced already). */
  private supervise(index: number, engine: WorkerEngine): void {
    engine.onDeath((error) => {
      const slot = this.slots[index]!;
      if (this.disposed || slot.engine !== engine || slot.down) return;
      const wedged = error.message.startsWith(WEDGED_PREFIX);
      this.scheduleRestart(index, wedged ? 'wedged' : 'died', error.message, engine.pid);
    });
  }

  private scheduleRestart(index: number, kind: 'died' | 'wedged' | 'restart-failed', reason: string, pid?: number): void {
    const slot = this.slots[index]!;
    slot.down = true;
    const now = Date.now();
    slot.restarts = slot.restarts.filter((t) => now - t < 60_000);
    const backoff = Math.min(this.supervision.restartBackoffMaxMs, this.supervision.restartBackoffMs * 2 ** slot.failedStarts);
    // At the bound: wait until the oldest restart of the last minute leaves the window.
    const limited = slot.restarts.length >= this.supervision.restartsPerMinuteMax ? slot.restarts[0]! + 60_000 - now : 0;
    const delay = Math.max(backoff, limited);
    this.emit({ kind, replica: index, reason, restartInMs: delay, restartsLastMinute: slot.restarts.length, ...(pid !== undefined ? { pid } : {}) });
    slot.timer = setTimeout(() => void this.restart(index), delay);
    slot.timer.unref();
  }

  private async restart(index: number): Promise<void> {
    const slot = this.slots[index]!;
    if (this.disposed) return;
    slot.restarts.push(Date.now());
    const table = this.forwardCost;
    try {
      // The converted model and the forward-cost table are reused: a restart loads, never converts or measures.
      const engine = await WorkerEngine.create(this.modelDir, this.runtime, {
        forwardCost: sharedTable(table),
        tokenizer: this.tokenizer,
        isolation: this.isolation,
      });
      if (this.disposed) {
        await engine.dispose();
        return;
      }
      const old = slot.engine;
      slot.engine = engine;
      slot.down = false;
      slot.failedStarts = 0;
      this.supervise(index, engine);
      old.dispose().catch(() => undefined);
      this.emit({ kind: 'restarted', replica: index, restartsLastMinute: slot.restarts.length, ...(engine.pid !== undefined ? { pid: engine.pid } : {}) });
    } catch (error) {
      if (this.disposed) return;
      slot.failedStarts++;
      this.scheduleRestart(index, 'restart-failed', error instanceof Error ? error.message : String(error));
    }
  }

  /** The watchdog: a replica without progress for forwardTimeoutMs is killed (its runs end UNAVAILABLE) and replaced. */
  private checkWedged(): void {
    const now = Date.now();
    const limit = this.supervision.forwardTimeoutMs;
    this.slots.forEach((slot) => {
      if (slot.down || !slot.engine.alive) return;
      const stalled = slot.engine.stalledMs(now);
      if (stalled > limit) slot.engine.kill(`${WEDGED_PREFIX} no forward progress for ${Math.round(stalled)} ms (limit ${limit} ms); retry`);
    });
  }
}

/** How a watchdog kill's message starts (ReplicaEvent kind 'wedged'). */
const WEDGED_PREFIX = 'the model replica running this generation was wedged:';

/** Another replica's table where one is known; else this replica measures it on first need too. */
function sharedTable(table: readonly number[] | undefined): ForwardCostPlan {
  return table !== undefined ? { mode: 'fixed', table } : DEFER_MEASUREMENT;
}

export function createEnginePool(modelDir: string, runtime: RuntimeOptions, options: PoolOptions = {}): Promise<EnginePool> {
  return EnginePool.create(modelDir, runtime, options);
}
