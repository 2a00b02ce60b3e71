/**
 * Glue between grpc-js calls and GenerationTelemetry: the caller's trace context from the call
 * metadata (W3C traceparent), and event streams observed when telemetry is on.
 */
import type { Metadata } from '@grpc/grpc-js';
import { type Context, ROOT_CONTEXT, type TextMapGetter, propagation } from '@opentelemetry/api';
import type { GenerateRequest } from '../../contract.js';
import type { ServiceEvent } from '../../engine/inference-service.js';
import type { GenerationTelemetry } from '../../telemetry/generation-telemetry.js';
import { effectiveError } from './call-context.js';
import { failureInfo } from './status.js';

const METADATA_GETTER: TextMapGetter<Metadata> = {
  get: (carrier, key) => carrier.get(key).map(String),
  keys: (carrier) => Object.keys(carrier.getMap()),
};

export function callerContext(metadata: Metadata): Context {
  return propagation.extract(ROOT_CONTEXT, metadata, METADATA_GETTER);
}

export function observeGeneration(
  telemetry: GenerationTelemetry | undefined,
  events: AsyncGenerator<ServiceEvent>,
  meta: { method: string; requestId: string; model: string; request: GenerateRequest; stream: boolean },
  parent: Context,
  signal: AbortSignal,
): AsyncGenerator<ServiceEvent> {
  if (telemetry === undefined) return events;
  return telemetry.observe(events, meta, parent, (error) => failureInfo(effectiveError(error, signal)));
}
