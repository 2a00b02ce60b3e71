/**
 * Messages between the main thread (WorkerEngine) and an engine worker (engine-worker.ts).
 * Plain data only: they cross threads by structured clone.
 */
import type { ReplicaFailureKind } from '../errors.js';
import type { RuntimeOptions, ModelInfo } from '../runtime/types.js';
import type { TokenLogprob } from '../sampling/logprobs.js';
import type { CacheStats, GenerateRequest, GenerationFinal } from '../contract.js';
import type { ForwardCostPlan } from './forward-cost.js';

/**
 * Deltas a run may have outstanding (posted, not yet taken by the consumer) before the worker
 * pauses it: keeps a slow consumer's backlog bounded while hiding the thread hop.
 */
export const WORKER_DELTAS_IN_FLIGHT_MAX = 4;

export type ToWorker =
  | {
      readonly type: 'init';
      readonly modelDir: string;
      readonly runtime: RuntimeOptions;
      /** Where the forward-cost table comes from; 'measure-now' measures it before 'ready'. */
      readonly forwardCost: ForwardCostPlan;
      /** The prefix cache's bound in bytes (absent: the engine's default; 0: none). */
      readonly prefixCacheBytes?: number;
    }
  | {
      readonly type: 'run';
      readonly id: number;
      readonly request: GenerateRequest;
      readonly promptTokens: readonly number[];
    }
  | { readonly type: 'cancel'; readonly id: number; readonly message: string }
  /** One entry per delta the consumer took (a run's id once per delta), sent once per macrotask: see RunEvents. */
  | { readonly type: 'credits'; readonly ids: readonly number[] }
  /** Measure the forward-cost table now (if not known yet); answered by 'calibrated'. */
  | { readonly type: 'calibrate' }
  | { readonly type: 'dispose' };

export interface SerializedError {
  readonly code: string;
  readonly name: string;
  readonly message: string;
  /** For CANCELLED: usage so far. */
  readonly progress?: { readonly promptTokens: number; readonly completionTokens: number };
  /** For REPLICA_FAILED: what happened to the replica (the class does not survive a structured clone; this field does). */
  readonly replicaFailure?: ReplicaFailureKind;
}

/** When the worker got there, in ms since the epoch (performance.timeOrigin + now()): startup breakdowns. */
export interface WorkerStartupTimes {
  /** engine-worker.js evaluated: the thread is up and its imports (ONNX Runtime's binding included) are loaded. */
  readonly evaluatedAt: number;
  /** The ONNX Runtime session (and tokenizer) are ready. */
  readonly modelLoadedAt: number;
  /** The forward-cost table is measured; absent when it was given or left for later. */
  readonly calibratedAt?: number;
}

/** What the worker says about one run: its deltas, then one final or error. */
export type RunMessage =
  | {
      readonly type: 'delta';
      readonly id: number;
      readonly text: string;
      readonly tokenIds: readonly number[];
      readonly logprobs?: readonly TokenLogprob[];
      readonly promptLogprobs?: readonly TokenLogprob[];
      readonly index?: number;
    }
  | { readonly type: 'final'; readonly id: number; readonly final: GenerationFinal }
  | { readonly type: 'error'; readonly id: number; readonly error: SerializedError };

/**
 * The runs' messages of one macrotask in one message. Under load a step resumes every stream and
 * each emits a delta: one message per delta (and one credit back per delta) cost the engine thread
 * a structured clone and a wake-up each, about a tenth of a 64-stream step's host time.
 */
export interface RunEvents {
  readonly type: 'events';
  readonly messages: readonly RunMessage[];
}

export type FromWorker =
  /** `forwardCost` is undefined when the table was neither given nor measured yet (see 'calibrate'). */
  | {
      readonly type: 'ready';
      readonly info: ModelInfo;
      readonly forwardCost: readonly number[] | undefined;
      readonly times: WorkerStartupTimes;
    }
  | { readonly type: 'calibrated'; readonly forwardCost: readonly number[]; readonly ms: number }
  | { readonly type: 'calibrate-error'; readonly error: SerializedError }
  | { readonly type: 'init-error'; readonly error: SerializedError }
  | RunEvents
  | { readonly type: 'disposed' }
  /**
   * Every WORKER_HEARTBEAT_MS from 'ready' on: forwards in flight and when they last made progress
   * (epoch ms). Silence means a blocked worker; old progress with forwards in flight, a stuck one.
   */
  | {
      readonly type: 'heartbeat';
      readonly forwardsInFlight: number;
      readonly progressAt: number;
      /** The replica's cross-request caches (for metrics). */
      readonly caches: CacheStats;
    };

export const WORKER_HEARTBEAT_MS = 500;
