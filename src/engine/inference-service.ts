/**
 * What a transport talks to: the served model(s), validation (once, engine/validate.ts), admission
 * (AdmissionQueue), timings from receipt, drain on shutdown. Transport-neutral — the gRPC adapter translates messages to and from these calls.
 */
import {
  type CacheStats,
  type GenerationBackend,
  type GenerateRequest,
  type GenerationDelta,
  type GenerationFinal,
  DRAFT_TOKENS_LIMIT,
  MAX_NEW_TOKENS_LIMIT,
  type Prompt,
} from '../contract.js';
import { CancelledError, UnavailableError, UnknownModelError } from '../errors.js';
import type { ModelInfo } from '../runtime/types.js';
import { grammarCompilerFor } from '../constrain/grammar.js';
import { AdmissionQueue, type AdmissionQueueOptions, type AdmissionQueueState } from './admission-queue.js';
import type { ReplicaCapacity, ReplicaSet } from './replica-set.js';
import { prepareGeneration, type RequestLimits } from './validate.js';

export interface ServiceLimits {
  /** Used when a request leaves max_new_tokens unset (0). */
  readonly maxNewTokensDefault: number;
  /** Largest max_new_tokens a request may ask for (≤ MAX_NEW_TOKENS_LIMIT). */
  readonly maxNewTokensLimit: number;
}

/**
 * The engine's final with the times a client sees, all counted from when the service received
 * the request (the engine counts from when it started the generation): assembled here only.
 */
export interface ServiceFinal extends GenerationFinal {
  /** Waiting for a sequence slot. */
  readonly queueMs: number;
  /** Received → first token; 0 when none came. */
  readonly firstTokenMs: number;
  /** Received → final. */
  readonly totalMs: number;
}

export type ServiceEvent = GenerationDelta | ServiceFinal;

/**
 * How the service ends a cancelled generation: the engine's CancelledError with the times so far
 * (counted as in ServiceFinal), so a transport can still report them.
 */
export class ServiceCancelledError extends CancelledError {
  /** Waiting for a sequence slot (all of the time when cancelled in the queue). */
  readonly queueMs: number;
  /** Received → cancelled. */
  readonly totalMs: number;

  constructor(cancelled: CancelledError, queueMs: number, totalMs: number) {
    super(cancelled.cause, cancelled.progress);
    this.queueMs = queueMs;
    this.totalMs = totalMs;
  }
}

export interface ServedModelInfo extends ModelInfo {
  /** For people: the registry's name (e.g. SmolLM2-135M-Instruct) or what the model file calls itself. */
  readonly displayName: string;
  readonly replicasUp: number;
  readonly replicasTotal: number;
  readonly maxNewTokensLimit: number;
  readonly maxNewTokensDefault: number;
  readonly draftTokensLimit: number;
  readonly hasChatTemplate: boolean;
}

export interface InferenceServiceOptions {
  readonly engine: GenerationBackend;
  /** The engine's replicas where it has several (an EnginePool, usually the engine itself); else 1 of 1, always up. */
  readonly replicas?: ReplicaSet;
  /** The name requests use in `model` (empty also selects it). */
  readonly modelName: string;
  /** For people (ModelInfo, logs); default: the name the model's files give. */
  readonly displayName?: string;
  readonly pool: AdmissionQueueOptions;
  readonly limits: ServiceLimits;
  /** Shared draft pools (issue 34: requests of one cache scope draft from each other's text). @default true */
  readonly draftPools?: boolean;
}

export class InferenceService {
  readonly engine: GenerationBackend;
  readonly modelName: string;
  readonly displayName: string;
  readonly pool: AdmissionQueue;
  readonly limits: ServiceLimits;
  private readonly replicaSet: ReplicaSet | undefined;
  private readonly requestLimits: RequestLimits;
  private readonly draftPools: boolean;

  constructor({ engine, replicas, modelName, displayName, pool, limits, draftPools }: InferenceServiceOptions) {
    if (limits.maxNewTokensLimit > MAX_NEW_TOKENS_LIMIT || limits.maxNewTokensDefault > limits.maxNewTokensLimit) {
      throw new RangeError(`need maxNewTokensDefault ≤ maxNewTokensLimit ≤ ${MAX_NEW_TOKENS_LIMIT}`);
    }
    this.engine = engine;
    this.replicaSet = replicas;
    this.modelName = modelName;
    this.displayName = displayName ?? engine.info.name;
    this.pool = new AdmissionQueue(pool);
    this.limits = limits;
    this.requestLimits = { ...limits, sequenceSlots: this.pool.maxActive };
    this.draftPools = draftPools ?? true;
  }

  get poolState(): AdmissionQueueState {
    return this.pool.state;
  }

  get draining(): boolean {
    return this.pool.state.draining;
  }

  /** Empty name = the default model. Throws UnknownModelError for anything not served. */
  resolveModel(name: string): GenerationBackend {
    if (name === '' || name === this.modelName) return this.engine;
    throw new UnknownModelError(name, [this.modelName]);
  }

  modelInfo(name: string): ServedModelInfo {
    const engine = this.resolveModel(name);
    return {
      ...engine.info,
      name: this.modelName,
      displayName: this.displayName,
      replicasUp: this.replicas.up,
      replicasTotal: this.replicas.total,
      maxNewTokensLimit: this.limits.maxNewTokensLimit,
      maxNewTokensDefault: this.limits.maxNewTokensDefault,
      draftTokensLimit: DRAFT_TOKENS_LIMIT,
      hasChatTemplate: engine.tokenizer.hasChatTemplate,
    };
  }

  tokenize(name: string, prompt: Prompt): number[] {
    return this.resolveModel(name).tokenizePrompt(prompt);
  }

  decodeTokens(name: string, ids: readonly number[]): string[] {
    const tokenizer = this.resolveModel(name).tokenizer;
    return ids.map((id) => tokenizer.decode([id], { skipSpecialTokens: false }));
  }

  /**
   * Refuses at once when every slot and queue place is taken; otherwise validates (before taking a
   * slot, so bad requests cost no queue space), waits for a slot, then
   * streams the engine's events. Errors: UnknownModelError, InvalidRequestError,
   * ContextOverflowError, UnavailableError (draining), OverloadedError (queue full),
   * CancelledError (signal aborted), anything else is an engine failure.
   */
  async *generate(model: string, request: GenerateRequest, signal?: AbortSignal): AsyncGenerator<ServiceEvent> {
    const received = performance.now();
    const engine = this.resolveModel(model);
    if (this.draining) throw new UnavailableError('server is shutting down and accepts no new requests');
    // Full: refuse before tokenizing (a malformed request then also gets RESOURCE_EXHAUSTED).
    this.pool.refuseIfFull();
    // The one validation (engine/validate.ts): the server's max_new_tokens default and limit, n within the slots.
    const prepared = prepareGeneration(
      engine.tokenizer,
      engine.info,
      // Pools off server-wide: no request has a scope.
      this.draftPools || request.cacheScope === undefined ? request : withoutCacheScope(request),
      this.requestLimits,
    );
    // A response_format is compiled here (cached) so that a bad one is refused before it takes a slot.
    const format = prepared.request.responseFormat;
    if (format !== undefined)
      await (await grammarCompilerFor(engine.tokenizer, engine.info.vocabSize, engine.info.eosTokenIds)).compile(
        format,
      );
    let queueMs: number | undefined;
    try {
      const lease = await this.pool.acquire(signal, prepared.request.n ?? 1);
      try {
        queueMs = performance.now() - received;
        for await (const event of engine.run(prepared, signal)) {
          if (event.type === 'final') yield withTimings(event, queueMs);
          else yield event;
        }
      } finally {
        lease.release();
      }
    } catch (error) {
      if (!(error instanceof CancelledError)) throw error;
      const totalMs = performance.now() - received;
      throw new ServiceCancelledError(error, queueMs ?? totalMs, totalMs);
    }
  }

  /** The backend's cross-request caches (undefined: it reports none). */
  get cacheStats(): CacheStats | undefined {
    return this.engine.cacheStats?.();
  }

  /** Model replicas that can serve now, of how many (1 of 1 for an in-process engine). */
  get replicas(): ReplicaCapacity {
    return this.replicaSet?.capacity ?? { up: 1, total: 1 };
  }

  /** Called with the replica count whenever a replica dies, is declared wedged, or comes back. */
  onReplicasChange(listener: (replicas: ReplicaCapacity) => void): void {
    this.replicaSet?.onReplicaEvent((event) => listener({ up: event.up, total: event.total }));
  }

  startDraining(): void {
    this.pool.startDraining();
  }

  whenIdle(): Promise<void> {
    return this.pool.whenIdle();
  }
}

/** The engine's times (from its start) → from receipt: the slot wait comes first. */
function withTimings(final: GenerationFinal, queueMs: number): ServiceFinal {
  return {
    ...final,
    queueMs,
    firstTokenMs: final.completionTokens > 0 ? queueMs + final.firstTokenMs : 0,
    totalMs: queueMs + final.totalMs,
  };
}

function withoutCacheScope(request: GenerateRequest): GenerateRequest {
  const { cacheScope: _, ...rest } = request;
  return rest;
}
