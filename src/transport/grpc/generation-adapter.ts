/**
 * One path for the three generate RPCs (Generate, GenerateStream and each request of
 * GenerateBidi): parse → service.generate → observe (telemetry) → map to chunks → write. The
 * handlers only choose where the chunks go and what an error becomes.
 */
import { cacheScopeOf } from '../cache-scope.js';
import type { Context } from '@opentelemetry/api';
import { type InferenceService, ServiceCancelledError } from '../../engine/inference-service.js';
import type { GenerationTelemetry } from '../../telemetry/generation-telemetry.js';
import {
  type FinalInfoMsg,
  type GenerateChunkMsg,
  type GenerateRequestMsg,
  type ParsedGenerate,
  cancelledFinalInfo,
  deltaChunk,
  parseGenerateRequest,
  toFinalInfo,
} from './messages.js';
import { observeGeneration } from './tracing.js';

/** Where one generation's chunks go. */
export interface ChunkSink {
  /** False: the call is gone, the generation stops here. */
  write(chunk: GenerateChunkMsg): boolean | Promise<boolean>;
}

export interface GenerationCall {
  readonly method: 'Generate' | 'GenerateStream' | 'GenerateBidi';
  /** Whether the client gets chunks as they come (telemetry records it). */
  readonly stream: boolean;
  /** Stops the generation (cancel, disconnect, deadline). */
  readonly signal: AbortSignal;
  /** The RPC span's context: the generation span's parent. */
  readonly parent: Context;
  /** The caller's authorization metadata: with CacheOptions, the request's cache scope. */
  readonly authorization: unknown;
  /**
   * Whether a cancellation is the client's own cancel for this request: then it ends with a
   * CANCELLED final chunk instead of an error (GenerateBidi's cancel message).
   */
  readonly cancelEndsWithFinal?: () => boolean;
}

export class GenerationAdapter {
  private readonly service: InferenceService;
  private readonly telemetry: GenerationTelemetry | undefined;

  constructor(service: InferenceService, telemetry?: GenerationTelemetry) {
    this.service = service;
    this.telemetry = telemetry;
  }

  /**
   * Runs the request into the sink `open` makes once the request has parsed. Throws what ends the
   * generation otherwise (invalid request, overload, cancel, engine failure): the caller maps it.
   */
  async run(msg: GenerateRequestMsg, call: GenerationCall, open: (parsed: ParsedGenerate) => ChunkSink): Promise<void> {
    const parsed = parseGenerateRequest(msg);
    const { requestId, model, seed } = parsed;
    const cacheScope = cacheScopeOf(call.authorization, parsed.cache.salt, parsed.cache.off);
    const request = cacheScope !== undefined ? { ...parsed.request, cacheScope } : parsed.request;
    const sink = open(parsed);
    const texts = (ids: readonly number[]) => this.service.decodeTokens(model, ids);
    const meta = { method: call.method, requestId, model: this.service.modelName, request, stream: call.stream };
    const events = observeGeneration(
      this.telemetry,
      this.service.generate(model, request, call.signal),
      meta,
      call.parent,
      call.signal,
    );
    let seq = 0;
    try {
      for await (const event of events) {
        const chunk =
          event.type === 'delta'
            ? deltaChunk(requestId, seq++, event, texts)
            : finalChunk(requestId, seq++, toFinalInfo(event, seed));
        if (!(await sink.write(chunk))) return;
      }
    } catch (error) {
      if (!(error instanceof ServiceCancelledError) || call.cancelEndsWithFinal?.() !== true) throw error;
      await sink.write(finalChunk(requestId, seq++, cancelledFinalInfo(error, seed)));
    }
  }
}

function finalChunk(requestId: string, seq: number, final: FinalInfoMsg): GenerateChunkMsg {
  return { request_id: requestId, seq, text: '', token_ids: [], final };
}
