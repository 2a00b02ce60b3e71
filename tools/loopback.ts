/** Loopback helpers shared by the load script and the tests. */
import { get as httpGet } from 'node:http';
import { createServer } from 'node:net';

/** A TCP port free on 127.0.0.1 right now (for a child server that needs its port up front). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.listen(0, '127.0.0.1', () => {
      const port = (server.address() as { port: number }).port;
      server.close(() => resolve(port));
    });
    server.on('error', reject);
  });
}

/** The text of http://127.0.0.1:PORT/metrics (Prometheus exposition format). */
export function fetchMetricsText(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    httpGet({ host: '127.0.0.1', port, path: '/metrics' }, (res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => resolve(body));
    }).on('error', reject);
  });
}
