/**
 * Process-wide OpenTelemetry setup for `anpd serve`: the Node SDK with exporters chosen by the
 * standard OTEL_* variables (OTLP traces and metrics are off unless OTEL_TRACES_EXPORTER /
 * OTEL_METRICS_EXPORTER say otherwise) and a Prometheus scrape endpoint on its own port.
 */
import { metrics, trace } from '@opentelemetry/api';
import { NodeSDK } from '@opentelemetry/sdk-node';
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

export function startTelemetry(options: TelemetryOptions, logger: Logger): RunningTelemetry {
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
  const sdk = new NodeSDK({ serviceName: options.serviceName, instrumentations: [] });
  sdk.start();
  logger.info('telemetry started', {
    traces: env['OTEL_TRACES_EXPORTER'],
    metrics: env['OTEL_METRICS_EXPORTER'],
    ...(options.metricsPort > 0 ? { prometheus: `http://${options.metricsHost}:${options.metricsPort}/metrics` } : {}),
  });
  return {
    tracer: trace.getTracer(TRACER_NAME),
    meter: metrics.getMeter(METER_NAME),
    shutdown: () => sdk.shutdown(),
  };
}
