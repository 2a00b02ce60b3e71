/**
 * Structured logs: pino JSON lines on stderr (one line per request at its end, never per token).
 * Request lines carry the trace and span ids of the generation's span.
 */
import { pino } from 'pino';

export type LogLevel = 'debug' | 'info' | 'warn' | 'error' | 'silent';

export type LogFields = Readonly<Record<string, unknown>>;

export interface Logger {
  debug(message: string, fields?: LogFields): void;
  info(message: string, fields?: LogFields): void;
  warn(message: string, fields?: LogFields): void;
  error(message: string, fields?: LogFields): void;
}

function plain(fields: LogFields | undefined): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  if (fields) {
    for (const [key, value] of Object.entries(fields)) {
      out[key] = value instanceof Error ? { name: value.name, message: value.message, stack: value.stack } : value;
    }
  }
  return out;
}

/** `write` receives each JSON line (default: stderr, synchronously so nothing is lost at exit). */
export function createLogger(level: LogLevel, write?: (line: string) => void): Logger {
  const destination = write ? { write } : pino.destination({ fd: 2, sync: true });
  const log = pino(
    {
      level,
      base: { service: 'anpd-serve' },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    destination,
  );
  return {
    debug: (m, f) => log.debug(plain(f), m),
    info: (m, f) => log.info(plain(f), m),
    warn: (m, f) => log.warn(plain(f), m),
    error: (m, f) => log.error(plain(f), m),
  };
}

export const SILENT_LOGGER: Logger = createLogger('silent');
