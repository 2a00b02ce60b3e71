/** A spawned `anpd serve` (under Node or Deno): its stderr log lines and the port it listens on. */
import type { ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';

/**
 * Collects the child's stderr lines into `logs` and resolves with the port of its
 * "gRPC server listening" log record; rejects with the logs if it exits first or takes too long.
 */
export function listeningPort(child: ChildProcess, logs: string[], timeoutMs = 120_000): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    createInterface({ input: child.stderr! }).on('line', (line) => {
      logs.push(line);
      try {
        const record = JSON.parse(line) as { msg?: string; port?: number };
        if (record.msg === 'gRPC server listening' && record.port !== undefined) resolve(record.port);
      } catch {
        // not a log record (a runtime's own warnings)
      }
    });
    child.once('exit', (code) =>
      reject(new Error(`the server exited with ${code} before listening:\n${logs.join('\n')}`)),
    );
    setTimeout(() => reject(new Error(`not listening after ${timeoutMs} ms:\n${logs.join('\n')}`)), timeoutMs).unref();
  });
}
