/**
 * Process-wide OpenTelemetry setup for `anpd serve`: exporters chosen by the standard OTEL_*
 * variables (OTLP traces and metrics are off unless OTEL_TRACES_EXPORTER / OTEL_METRICS_EXPORTER
 * say otherwise) and a Prometheus scrape endpoint on its own port.
 *
 * The default configuration (no traces, no logs, Prometheus or no metrics) registers exactly what
 * the Node SDK would — context manager, W3C propagators, resource, meter provider — from the few
 * packages it needs: `@opentelemetry/sdk-node` loads every OTLP / Zipkin exporter and takes
 * 0.4–0.65 s to import, on the critical path of a cold start. Any other configuration loads the
 * SDK itself.
 */
import { context, metrics, propagation, trace } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { CompositePropagator, W3CBaggagePropagator, W3CTraceContextPropagator } from '@opentelemetry/core';
import { PrometheusExporter } from '@opentelemetry/exporter-prometheus';
import {
  defaultResource,
  detectResources,
  envDetector,
  hostDetector,
  osDetector,
  processDetector,
  resourceFromAttributes,
  serviceInstanceIdDetector,
} from '@opentelemetry/resources';
import { MeterProvider } from '@opentelemetry/sdk-metrics';
import type { Logger } from '../log.js';
import { METER_NAME, TRACER_NAME } from './names.js';

export interface TelemetryOptions {
  readonly serviceName: string;
  /** Prometheus scrape port; 0 turns the endpoint off. */
  readonly metricsPort: number;
  readonly metricsHost: string;
}

export interface RunningTelemetry {
  readonly tracer: ReturnType<typeof trace.getTracer>;
  readonly meter: ReturnType<typeof metrics.getMeter>;
  shutdown(): Promise<void>;
}

/** Settings only the Node SDK interprets: when any is set, the SDK is loaded. */
const NODE_SDK_ONLY_ENV = [
  'OTEL_SDK_DISABLED',
  'OTEL_LOG_LEVEL',
  'OTEL_PROPAGATORS',
  'OTEL_NODE_RESOURCE_DETECTORS',
  'OTEL_NODE_EXPERIMENTAL_SDK_METRICS',
];

/**
 * What `NodeSDK.start()` registers (sdk-node 0.301, `sdk.mjs`) when traces and logs are off and
 * metrics are Prometheus or none: keep in step when upgrading it.
 */
function startWithoutNodeSdk(
  serviceName: string,
  prometheus: { host: string; port: number } | undefined,
): () => Promise<void> {
  const contextManager = new AsyncLocalStorageContextManager();
  contextManager.enable();
  context.setGlobalContextManager(contextManager);
  propagation.setGlobalPropagator(
    new CompositePropagator({ propagators: [new W3CTraceContextPropagator(), new W3CBaggagePropagator()] }),
  );
  if (prometheus === undefined) return () => Promise.resolve();
  const resource = defaultResource()
    .merge(
      detectResources({
        detectors: [serviceInstanceIdDetector, processDetector, hostDetector, osDetector, envDetector],
      }),
    )
    .merge(resourceFromAttributes({ 'service.name': serviceName }));
  const meterProvider = new MeterProvider({ resource, readers: [new PrometheusExporter(prometheus)] });
  metrics.setGlobalMeterProvider(meterProvider);
  return () => meterProvider.shutdown();
}

export async function startTelemetry(options: TelemetryOptions, logger: Logger): Promise<RunningTelemetry> {
  const env = process.env;
  // Off by default: the SDK's own default is OTLP to localhost, which logs errors when no
  // collector runs. Operators opt in with the standard variables.
  env['OTEL_TRACES_EXPORTER'] ??= 'none';
  env['OTEL_LOGS_EXPORTER'] ??= 'none';
  const metricExporters = (env['OTEL_METRICS_EXPORTER'] ?? '')
    .split(',')
    .map((e) => e.trim())
    .filter((e) => e !== '' && e !== 'none' && e !== 'prometheus');
  if (options.metricsPort > 0) {
    // The SDK builds the Prometheus reader from these; it serves /metrics on its own HTTP server.
    metricExporters.push('prometheus');
    env['OTEL_EXPORTER_PROMETHEUS_PORT'] = String(options.metricsPort);
    env['OTEL_EXPORTER_PROMETHEUS_HOST'] = options.metricsHost;
  }
  env['OTEL_METRICS_EXPORTER'] = metricExporters.length > 0 ? metricExporters.join(',') : 'none';
  const withoutNodeSdk =
    env['OTEL_TRACES_EXPORTER'] === 'none' &&
    env['OTEL_LOGS_EXPORTER'] === 'none' &&
    metricExporters.every((e) => e === 'prometheus') &&
    NODE_SDK_ONLY_ENV.every((name) => env[name] === undefined);
  let shutdown: () => Promise<void>;
  if (withoutNodeSdk) {
    shutdown = startWithoutNodeSdk(
      options.serviceName,
      options.metricsPort > 0 ? { host: options.metricsHost, port: options.metricsPort } : undefined,
    );
  } else {
    const { NodeSDK } = await import('@opentelemetry/sdk-node');
    const sdk = new NodeSDK({ serviceName: options.serviceName, instrumentations: [] });
    sdk.start();
    shutdown = () => sdk.shutdown();
  }
  logger.info('telemetry started', {
    sdk: withoutNodeSdk ? 'api+metrics' : 'node',
    traces: env['OTEL_TRACES_EXPORTER'],
    metrics: env['OTEL_METRICS_EXPORTER'],
    ...(options.metricsPort > 0 ? { prometheus: `http://${options.metricsHost}:${options.metricsPort}/metrics` } : {}),
  });
  return {
    tracer: trace.getTracer(TRACER_NAME),
    meter: metrics.getMeter(METER_NAME),
    shutdown,
  };
}
