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
import type { GenerateRequest, GenerationBackend, GenerationEvent, PreparedGeneration, Prompt } from './engine.js';
import type { WorkerStartupTimes } from './worker-protocol.js';
import { type EngineIsolation, WorkerEngine } from './worker-engine.js';

export const ENGINE_REPLICAS_LIMIT = 64;

export class EnginePool implements GenerationBackend {
  readonly replicas: readonly WorkerEngine[];
  private readonly inFlight: number[];

  private constructor(replicas: readonly WorkerEngine[]) {
    this.replicas = replicas;
    this.inFlight = replicas.map(() => 0);
  }

  /**
   * Loads `replicas` copies of the model. The first measures the forward cost (unless given) and the
   * others reuse its table, so every replica drafts alike and start-up pays one calibration.
   */
  static async create(
    modelDir: string,
    runtime: RuntimeOptions,
    options: { replicas?: number; calibrate?: boolean; forwardCost?: readonly number[]; isolation?: EngineIsolation } = {},
  ): Promise<EnginePool> {
    const count = options.replicas ?? 1;
    if (!Number.isInteger(count) || count < 1 || count > ENGINE_REPLICAS_LIMIT) {
      throw new RangeError(`engine replicas must be an integer in [1, ${ENGINE_REPLICAS_LIMIT}], got ${count}`);
    }
    // "0 = one thread per core" is shared out, or the replicas' thread pools would fight over cores.
    const perReplica: RuntimeOptions =
      runtime.intraOpThreads === 0 && count > 1 ? { ...runtime, intraOpThreads: Math.max(1, Math.floor(availableParallelism() / count)) } : runtime;
    // ORT's WebGPU provider keeps one device context per process, and two threads submitting to it
    // at once corrupt its command encoder (seen on an H200): GPU replicas get a process each.
    const isolation: EngineIsolation = options.isolation ?? (count > 1 && runtime.executionProvider !== 'cpu' ? 'process' : 'thread');
    // Deferring the measurement (calibrate: false) is for one replica; several share one table.
    const first = await WorkerEngine.create(modelDir, perReplica, { ...options, isolation, ...(count > 1 ? { calibrate: true } : {}) });
    const table = first.forwardCost;
    const rest = await Promise.allSettled(
      Array.from({ length: count - 1 }, () =>
        WorkerEngine.create(modelDir, perReplica, { calibrate: false, ...(table !== undefined ? { forwardCost: table } : {}), tokenizer: first.tokenizer, isolation }),
      ),
    );
    const loaded = [first, ...rest.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []))];
    const failed = rest.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed !== undefined) {
      await Promise.all(loaded.map((replica) => replica.dispose()));
      throw failed.reason;
    }
    return new EnginePool(loaded);
  }

  get info(): ModelInfo {
    return this.replicas[0]!.info;
  }

  get tokenizer(): TextTokenizer {
    return this.replicas[0]!.tokenizer;
  }

  get forwardCost(): readonly number[] | undefined {
    return this.replicas[0]!.forwardCost;
  }

  /** The first replica's startup phases (startup breakdowns). */
  get startupTimes(): WorkerStartupTimes {
    return this.replicas[0]!.startupTimes;
  }

  /** Measures the table now where it was deferred (one replica); several replicas have it from creation. */
  calibrate(): Promise<readonly number[]> {
    return this.replicas[0]!.calibrate();
  }

  /** Runs in flight per replica (for tests and diagnostics). */
  get runsInFlight(): readonly number[] {
    return [...this.inFlight];
  }

  tokenizePrompt(prompt: Prompt): number[] {
    return this.replicas[0]!.tokenizePrompt(prompt);
  }

  prepare(request: GenerateRequest): PreparedGeneration {
    return this.replicas[0]!.prepare(request);
  }

  async *run(prepared: PreparedGeneration, signal?: AbortSignal): AsyncGenerator<GenerationEvent> {
    // A dead replica fails its runs at once, so "fewest in flight" would pick it every time: skip it.
    let chosen = -1;
    for (let i = 0; i < this.inFlight.length; i++) {
      if (this.replicas[i]!.alive && (chosen === -1 || this.inFlight[i]! < this.inFlight[chosen]!)) chosen = i;
    }
    if (chosen === -1) chosen = 0; // none alive: its run reports why
    this.inFlight[chosen]!++;
    try {
      yield* this.replicas[chosen]!.run(prepared, signal);
    } finally {
      this.inFlight[chosen]!--;
    }
  }

  async dispose(): Promise<void> {
    await Promise.all(this.replicas.map((replica) => replica.dispose()));
  }
}

export function createEnginePool(
  modelDir: string,
  runtime: RuntimeOptions,
  options: { replicas?: number; calibrate?: boolean; forwardCost?: readonly number[]; isolation?: EngineIsolation } = {},
): Promise<EnginePool> {
  return EnginePool.create(modelDir, runtime, options);
}
