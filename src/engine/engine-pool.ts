/**
 * Several model replicas behind one backend, each a WorkerEngine with its own ORT session (on its
 * own thread, or on a GPU in its own process), so forwards of different sequences run at the same
 * time: on a GPU one replica leaves the device idle while its thread encodes and submits kernels
 * (the 135M model is dispatch-bound), and on a many-core CPU two half-width sessions can beat one
 * full-width. A router sends runs to the replica with the fewest in flight (a sequence stays on its
 * replica: its KV cache lives there); a supervisor restarts replicas that die or wedge.
 */
import { availableParallelism } from 'node:os';
import type { ModelInfo, RuntimeOptions } from '../runtime/types.js';
import type { TextTokenizer } from '../tokenizer/tokenizer.js';
import {
  type CacheStats,
  type GenerateRequest,
  type GenerationBackend,
  type GenerationEvent,
  type PreparedGeneration,
  NO_CACHES,
  type Prompt,
  sumCacheStats,
} from '../contract.js';
import { DEFER_MEASUREMENT, type ForwardCostPlan, MEASURE_NOW } from './forward-cost.js';
import { LeastLoadedRouter } from './replica-router.js';
import type { ReplicaCapacity, ReplicaEvent, ReplicaSet } from './replica-set.js';
import { DEFAULT_SUPERVISION, ReplicaSupervisor, type SupervisionOptions } from './replica-supervisor.js';
import type { WorkerStartupTimes } from './worker-protocol.js';
import { type EngineIsolation, WorkerEngine } from './worker-engine.js';

export const ENGINE_REPLICAS_LIMIT = 64;

/** `workerEntry` (tests): the module every replica's worker runs (see WorkerEngine.create). */
type PoolOptions = {
  replicas?: number;
  forwardCost?: ForwardCostPlan;
  isolation?: EngineIsolation;
  supervision?: Partial<SupervisionOptions>;
  workerEntry?: URL;
  /** Each replica's prefix cache bound (absent: the engine's default; 0: none). */
  prefixCacheBytes?: number;
};

export class EnginePool implements GenerationBackend, ReplicaSet {
  private readonly supervisor: ReplicaSupervisor<WorkerEngine>;
  private readonly router: LeastLoadedRouter;
  /** Per replica slot: its engine as last seen, that engine's last figures, what replaced engines evicted. */
  private readonly cacheSlots: {
    engine: WorkerEngine;
    last: CacheStats | undefined;
    prefixEvictions: number;
    poolEvictedTokens: number;
  }[] = [];

  private constructor(
    replicas: readonly WorkerEngine[],
    modelDir: string,
    runtime: RuntimeOptions,
    isolation: EngineIsolation,
    supervision: SupervisionOptions,
    workerEntry: URL | undefined,
    prefixCacheBytes: number | undefined,
  ) {
    // A restart loads the same converted model with the same table: it never converts or measures.
    const start = () =>
      WorkerEngine.create(modelDir, runtime, {
        forwardCost: sharedTable(this.forwardCost),
        tokenizer: this.tokenizer,
        isolation,
        ...(workerEntry !== undefined ? { workerEntry } : {}),
        ...(prefixCacheBytes !== undefined ? { prefixCacheBytes } : {}),
      });
    this.supervisor = new ReplicaSupervisor(replicas, start, supervision);
    this.router = new LeastLoadedRouter(replicas.length, (index) => this.supervisor.engineAt(index));
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
      runtime.intraOpThreads === 0 && count > 1
        ? { ...runtime, intraOpThreads: Math.max(1, Math.floor(availableParallelism() / count)) }
        : runtime;
    // ORT's WebGPU provider keeps one device context per process, and two threads submitting to it
    // at once corrupt its command encoder (seen on an H200): GPU replicas get a process each.
    const isolation: EngineIsolation =
      options.isolation ?? (count > 1 && runtime.executionProvider !== 'cpu' ? 'process' : 'thread');
    // Deferring the measurement is for one replica; several share one table, measured by the first.
    const plan = options.forwardCost ?? MEASURE_NOW;
    const workerEntry = {
      ...(options.workerEntry !== undefined ? { workerEntry: options.workerEntry } : {}),
      ...(options.prefixCacheBytes !== undefined ? { prefixCacheBytes: options.prefixCacheBytes } : {}),
    };
    const first = await WorkerEngine.create(modelDir, perReplica, {
      forwardCost: count > 1 && plan.mode === 'defer' ? MEASURE_NOW : plan,
      isolation,
      ...workerEntry,
    });
    const table = first.forwardCost;
    const rest = await Promise.allSettled(
      Array.from({ length: count - 1 }, () =>
        WorkerEngine.create(modelDir, perReplica, {
          forwardCost: sharedTable(table),
          tokenizer: first.tokenizer,
          isolation,
          ...workerEntry,
        }),
      ),
    );
    const loaded = [first, ...rest.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []))];
    const failed = rest.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed !== undefined) {
      await Promise.all(loaded.map((replica) => replica.dispose()));
      throw failed.reason;
    }
    return new EnginePool(
      loaded,
      modelDir,
      perReplica,
      isolation,
      supervision,
      options.workerEntry,
      options.prefixCacheBytes,
    );
  }

  /** Each replica's current engine (a dead one until its restart has loaded). */
  get replicas(): readonly WorkerEngine[] {
    return this.supervisor.engines;
  }

  get info(): ModelInfo {
    return this.supervisor.engineAt(0).info;
  }

  get tokenizer(): TextTokenizer {
    return this.supervisor.engineAt(0).tokenizer;
  }

  get forwardCost(): readonly number[] | undefined {
    return this.replicas.find((engine) => engine.forwardCost !== undefined)?.forwardCost;
  }

  /** The first replica's startup phases (startup breakdowns). */
  get startupTimes(): WorkerStartupTimes {
    return this.supervisor.engineAt(0).startupTimes;
  }

  /** Measures the table now where it was deferred (one replica); several replicas have it from creation. */
  calibrate(): Promise<readonly number[]> {
    return this.supervisor.engineAt(0).calibrate();
  }

  get capacity(): ReplicaCapacity {
    return this.supervisor.capacity;
  }

  onReplicaEvent(listener: (event: ReplicaEvent) => void): void {
    this.supervisor.onReplicaEvent(listener);
  }

  tokenizePrompt(prompt: Prompt): number[] {
    return this.supervisor.engineAt(0).tokenizePrompt(prompt);
  }

  prepare(request: GenerateRequest): PreparedGeneration {
    return this.supervisor.engineAt(0).prepare(request);
  }

  run(prepared: PreparedGeneration, signal?: AbortSignal): AsyncGenerator<GenerationEvent> {
    return this.router.run(prepared, signal);
  }

  /**
   * The replicas' caches summed (a replica's are its own: each holds its own KV and pools). A dead
   * replica holds nothing; what a replaced engine had evicted stays counted in its slot, so the
   * eviction counters never go down across restarts (Prometheus would read a drop as a reset).
   */
  cacheStats(): CacheStats {
    return sumCacheStats(
      this.replicas.map((engine, i) => {
        const slot = (this.cacheSlots[i] ??= { engine, last: undefined, prefixEvictions: 0, poolEvictedTokens: 0 });
        if (slot.engine !== engine) {
          slot.prefixEvictions += slot.last?.prefixCacheEvictions ?? 0;
          slot.poolEvictedTokens += slot.last?.draftPoolEvictedTokens ?? 0;
          slot.engine = engine;
          slot.last = undefined;
        }
        const now = engine.alive ? engine.cacheStats() : undefined;
        if (now !== undefined) slot.last = now;
        return {
          ...(now ?? NO_CACHES),
          prefixCacheEvictions: slot.prefixEvictions + (slot.last?.prefixCacheEvictions ?? 0),
          draftPoolEvictedTokens: slot.poolEvictedTokens + (slot.last?.draftPoolEvictedTokens ?? 0),
        };
      }),
    );
  }

  async dispose(): Promise<void> {
    this.router.close();
    await this.supervisor.dispose();
  }
}

/** Another replica's table where one is known; else this replica measures it on first need too. */
function sharedTable(table: readonly number[] | undefined): ForwardCostPlan {
  return table !== undefined ? { mode: 'fixed', table } : DEFER_MEASUREMENT;
}
