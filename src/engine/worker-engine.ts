/**
 * A GenerationBackend whose model runs on a worker thread or in a child process (engine-worker.ts).
 * Tokenization happens on the calling thread, with the same tokenizer files (the InferenceService
 * validates before admission, so bad requests never reach the worker); the worker runs the very
 * same Engine code, so outputs are identical.
 */
import { type ChildProcess, fork } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import type {
  CacheStats,
  GenerateRequest,
  GenerationBackend,
  GenerationEvent,
  PreparedGeneration,
  Prompt,
} from '../contract.js';
import { AnpdError, CancelledError, EngineWorkerError, type ErrorCode, ReplicaFailedError } from '../errors.js';
import type { ModelInfo, RuntimeOptions } from '../runtime/types.js';
import { loadTokenizer, type TextTokenizer } from '../tokenizer/tokenizer.js';
import { type ForwardCostPlan, MEASURE_NOW } from './forward-cost.js';
import { prepareGeneration, tokenizePrompt } from './validate.js';
import type { FromWorker, RunMessage, SerializedError, ToWorker, WorkerStartupTimes } from './worker-protocol.js';

/** Where an engine worker runs: a thread of this process, or a child process of its own. */
export type EngineIsolation = 'thread' | 'process';

/** What WorkerEngine needs of a worker thread or child process. */
interface EngineHost {
  postMessage(message: ToWorker): void;
  on(event: 'message', listener: (message: FromWorker) => void): void;
  on(event: 'error', listener: (error: Error) => void): void;
  on(event: 'exit', listener: (code: number) => void): void;
  off(event: 'message' | 'error' | 'exit', listener: (...args: never[]) => void): void;
  ref(): void;
  unref(): void;
  terminate(): Promise<unknown>;
  /** The child process's pid (process isolation); undefined for a thread. */
  readonly pid?: number | undefined;
}

function childProcessHost(child: ChildProcess): EngineHost {
  const host = {
    pid: child.pid,
    postMessage: (message: ToWorker) => {
      if (child.connected) child.send(message);
    },
    on: (event: string, listener: (...args: never[]) => void) => {
      child.on(event, listener as (...args: unknown[]) => void);
    },
    off: (event: string, listener: (...args: never[]) => void) => {
      child.off(event, listener as (...args: unknown[]) => void);
    },
    // The IPC channel holds the event loop open on its own: (un)ref both.
    ref: () => {
      child.ref();
      child.channel?.ref();
    },
    unref: () => {
      child.unref();
      child.channel?.unref();
    },
    terminate: () =>
      new Promise<void>((resolve) => {
        if (child.exitCode !== null || child.signalCode !== null) return resolve();
        child.once('exit', () => resolve());
        child.kill('SIGKILL');
      }),
  };
  return host as EngineHost;
}

/** The module an engine worker runs; tests start one of their own (test/support) that decorates the model. */
const ENGINE_WORKER_MAIN = new URL('./engine-worker-main.js', import.meta.url);

function startHost(isolation: EngineIsolation, entry: URL): EngineHost {
  if (isolation === 'thread') return new Worker(entry) as unknown as EngineHost;
  // 'advanced' serialization = structured clone, as between threads.
  return childProcessHost(
    fork(fileURLToPath(entry), [], {
      serialization: 'advanced',
      execArgv: [],
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    }),
  );
}

interface PendingRun {
  push(message: RunMessage): void;
}

function reviveError(error: SerializedError, signal: AbortSignal | undefined): Error {
  if (error.code === 'CANCELLED') {
    // Report the caller's own abort reason (cancel, deadline, disconnect), as Engine.run does.
    return new CancelledError(signal?.aborted ? signal.reason : new Error(error.message), error.progress);
  }
  if (error.replicaFailure !== undefined) return new ReplicaFailedError(error.replicaFailure, error.message);
  const revived = new AnpdError(error.code as ErrorCode, error.message);
  revived.name = error.name;
  return revived;
}

export class WorkerEngine implements GenerationBackend {
  readonly info: ModelInfo;
  readonly tokenizer: TextTokenizer;
  /** When the worker got through its startup phases (epoch ms), for startup breakdowns. */
  readonly startupTimes: WorkerStartupTimes;
  private readonly worker: EngineHost;
  private costTable: readonly number[] | undefined;
  private calibration: Promise<readonly number[]> | undefined;
  private readonly runs = new Map<number, PendingRun>();
  private nextId = 1;
  /** Credits of this macrotask (a run's id once per delta its consumer took); bounded by the runs' deltas in flight. */
  private credits: number[] = [];
  private creditsQueued = false;
  private failure: Error | undefined;
  private disposing = false;
  private readonly deathListeners: ((error: ReplicaFailedError) => void)[] = [];
  /** From the worker's heartbeats: when the last came (epoch ms), forwards in flight, their last progress. */
  private heartbeatAt = Date.now();
  private forwardsInFlight = 0;
  private progressAt = Date.now();
  private caches: CacheStats | undefined;

  private constructor(
    worker: EngineHost,
    info: ModelInfo,
    tokenizer: TextTokenizer,
    ready: Extract<FromWorker, { type: 'ready' }>,
  ) {
    this.worker = worker;
    this.info = info;
    this.tokenizer = tokenizer;
    this.costTable = ready.forwardCost;
    this.startupTimes = ready.times;
    worker.on('message', (message: FromWorker) => {
      if (message.type === 'events') for (const m of message.messages) this.runs.get(m.id)?.push(m);
      else if (message.type === 'heartbeat') {
        this.heartbeatAt = Date.now();
        this.forwardsInFlight = message.forwardsInFlight;
        this.progressAt = message.progressAt;
        this.caches = message.caches;
      }
    });
    worker.on('error', (error) =>
      this.fail(
        new ReplicaFailedError('died', `the model replica running this generation crashed (${error.message}); retry`, {
          cause: error,
        }),
      ),
    );
    worker.on('exit', (code) =>
      this.fail(
        new ReplicaFailedError('died', `the model replica running this generation exited (code ${code}); retry`),
      ),
    );
  }

  /** The first failure wins: its runs (and every later one) end with it, and death listeners hear of it once. */
  private fail(error: ReplicaFailedError): void {
    if (this.failure !== undefined) return;
    this.failure = error;
    for (const [id, run] of this.runs)
      run.push({
        type: 'error',
        id,
        error: { code: error.code, name: error.name, message: error.message, replicaFailure: error.kind },
      });
    if (!this.disposing) for (const listener of this.deathListeners) listener(error);
  }

  /** Called once if the worker dies or is killed (not when disposed). */
  onDeath(listener: (error: ReplicaFailedError) => void): void {
    this.deathListeners.push(listener);
  }

  /** The worker's pid when it is a child process. */
  get pid(): number | undefined {
    return this.worker.pid;
  }

  /**
   * How long this replica has gone without progress at `now` (epoch ms): since its last heartbeat,
   * or, with forwards in flight, since they last progressed. 0 after it died.
   */
  stalledMs(now: number): number {
    if (this.failure !== undefined) return 0;
    const silent = now - this.heartbeatAt;
    return this.forwardsInFlight > 0 ? Math.max(silent, now - this.progressAt) : silent;
  }

  /** Ends its runs with `failure` (UNAVAILABLE, retryable) and kills the worker without waiting for it (a wedged thread may never yield). */
  kill(failure: ReplicaFailedError): void {
    this.fail(failure);
    this.worker.terminate().catch(() => undefined);
  }

  /**
   * Starts a worker, loads the model there and carries out the forward-cost plan before resolving
   * (default: measure now; 'defer': see `calibrate()`). `workerEntry` (tests): the module the
   * worker runs instead of engine-worker-main.js.
   */
  static async create(
    modelDir: string,
    runtime: RuntimeOptions,
    options: {
      forwardCost?: ForwardCostPlan;
      tokenizer?: TextTokenizer;
      isolation?: EngineIsolation;
      workerEntry?: URL;
      /** The prefix cache's bound (absent: the engine's default; 0: none). */
      prefixCacheBytes?: number;
    } = {},
  ): Promise<WorkerEngine> {
    const worker = startHost(options.isolation ?? 'thread', options.workerEntry ?? ENGINE_WORKER_MAIN);
    // While the worker boots and loads the model, this thread reads the tokenizer.
    let tokenizer: TextTokenizer;
    try {
      tokenizer = options.tokenizer ?? loadTokenizer(modelDir);
    } catch (error) {
      await worker.terminate();
      throw error;
    }
    let onMessage: ((message: FromWorker) => void) | undefined;
    let onError: ((error: Error) => void) | undefined;
    let onExit: ((code: number) => void) | undefined;
    const ready = await new Promise<Extract<FromWorker, { type: 'ready' }>>((resolve, reject) => {
      onMessage = (message: FromWorker) => {
        if (message.type === 'ready') resolve(message);
        else if (message.type === 'init-error') reject(reviveError(message.error, undefined));
      };
      onError = reject;
      onExit = (code: number) =>
        reject(new EngineWorkerError(`engine worker exited with code ${code} while loading ${modelDir}`));
      worker.on('message', onMessage);
      worker.on('error', onError);
      worker.on('exit', onExit);
      const init: ToWorker = {
        type: 'init',
        modelDir,
        runtime,
        forwardCost: options.forwardCost ?? MEASURE_NOW,
        ...(options.prefixCacheBytes !== undefined ? { prefixCacheBytes: options.prefixCacheBytes } : {}),
      };
      worker.postMessage(init);
    }).catch(async (error: unknown) => {
      await worker.terminate();
      throw error;
    });
    worker.off('message', onMessage!);
    worker.off('error', onError!);
    worker.off('exit', onExit!);
    // An idle worker must not keep the process alive; runs ref it while they are in flight.
    worker.unref();
    return new WorkerEngine(worker, ready.info, tokenizer, ready);
  }

  /** The worker's forward-cost table (index T) once known, e.g. to give an in-process engine the same one. */
  get forwardCost(): readonly number[] | undefined {
    return this.costTable;
  }

  /**
   * Has the worker measure its forward-cost table now (once; at once if it is known). Generations
   * that need it meanwhile wait for the same measurement, so the adaptive draft length is never
   * decided without it.
   */
  calibrate(): Promise<readonly number[]> {
    if (this.costTable !== undefined) return Promise.resolve(this.costTable);
    this.calibration ??= new Promise<readonly number[]>((resolve, reject) => {
      const onMessage = (message: FromWorker) => {
        if (message.type === 'calibrated') {
          this.worker.off('message', onMessage);
          this.costTable = message.forwardCost;
          resolve(message.forwardCost);
        } else if (message.type === 'calibrate-error') {
          this.worker.off('message', onMessage);
          reject(reviveError(message.error, undefined));
        }
      };
      this.worker.on('message', onMessage);
      this.worker.on('exit', (code) =>
        reject(new EngineWorkerError(`engine worker exited with code ${code} while calibrating`)),
      );
      if (this.failure) reject(this.failure);
      else this.post({ type: 'calibrate' });
    });
    return this.calibration;
  }

  /** False once the worker has died or been disposed: every run would fail. */
  get alive(): boolean {
    return this.failure === undefined;
  }

  tokenizePrompt(prompt: Prompt): number[] {
    return tokenizePrompt(this.tokenizer, this.info, prompt);
  }

  prepare(request: GenerateRequest): PreparedGeneration {
    return prepareGeneration(this.tokenizer, this.info, request);
  }

  async *run(prepared: PreparedGeneration, signal?: AbortSignal): AsyncGenerator<GenerationEvent> {
    if (this.failure) throw this.failure;
    const id = this.nextId++;
    const queue: RunMessage[] = [];
    let wake: (() => void) | undefined;
    if (this.runs.size === 0) this.worker.ref();
    this.runs.set(id, {
      push: (message) => {
        queue.push(message);
        const resolve = wake;
        wake = undefined;
        resolve?.();
      },
    });
    let finished = false;
    const onAbort = () =>
      this.post({ type: 'cancel', id, message: signal?.reason instanceof Error ? signal.reason.message : 'cancelled' });
    signal?.addEventListener('abort', onAbort, { once: true });
    try {
      this.post({ type: 'run', id, request: prepared.request, promptTokens: prepared.promptTokens });
      if (signal?.aborted) onAbort();
      for (;;) {
        while (queue.length === 0) {
          await new Promise<void>((resolve) => {
            wake = resolve;
          });
        }
        const message = queue.shift()!;
        if (message.type === 'delta') {
          const { id: _id, ...delta } = message;
          yield delta;
          this.credit(id);
        } else if (message.type === 'final') {
          finished = true;
          yield message.final;
          return;
        } else if (message.type === 'error') {
          finished = true;
          throw reviveError(message.error, signal);
        }
      }
    } finally {
      signal?.removeEventListener('abort', onAbort);
      // The consumer stopped early: stop the worker's run too (its late messages are dropped).
      if (!finished) this.post({ type: 'cancel', id, message: 'consumer stopped reading' });
      this.runs.delete(id);
      if (this.runs.size === 0) this.worker.unref();
    }
  }

  /** A delta taken: its credit goes back with the others of this macrotask (one message, not one each). */
  private credit(id: number): void {
    this.credits.push(id);
    if (this.creditsQueued) return;
    this.creditsQueued = true;
    setImmediate(() => {
      this.creditsQueued = false;
      const ids = this.credits;
      this.credits = [];
      this.post({ type: 'credits', ids });
    });
  }

  private post(message: ToWorker): void {
    if (this.failure === undefined) this.worker.postMessage(message);
  }

  /** The caches as of the worker's last heartbeat (undefined before the first). */
  cacheStats(): CacheStats | undefined {
    return this.caches;
  }

  async dispose(): Promise<void> {
    this.disposing = true;
    this.worker.ref(); // keep the process alive until the worker has released the model
    if (this.failure) {
      await this.worker.terminate();
      return;
    }
    const disposed = new Promise<void>((resolve) => {
      this.worker.on('message', (message: FromWorker) => {
        if (message.type === 'disposed') resolve();
      });
      this.worker.on('exit', () => resolve());
    });
    this.post({ type: 'dispose' });
    await disposed;
    this.failure = new EngineWorkerError('engine worker disposed');
    await this.worker.terminate();
  }
}
