/**
 * A long-lived peer engine process (bench/peers/peer_server.py, bench/peers/node-llama-cpp-peer.mjs)
 * speaking JSON lines: a "ready" line once its model is loaded and warmed up, then one reply line
 * per request line. Shared by the peers and by-length benchmarks; model loading is never timed.
 */
import { type ChildProcessWithoutNullStreams, spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import type { PeerSample } from '../tools/peer-metrics.js';

export interface PeerRequest {
  readonly promptIds: readonly number[];
  readonly maxNewTokens: number;
  readonly eosIds: readonly number[];
}

export interface PeerProcess {
  /** What the process said about itself when ready (versions, settings). */
  readonly ready: { versions: unknown; settings: unknown };
  generate(request: PeerRequest): Promise<PeerSample>;
  close(): Promise<void>;
}

/** Peer processes, ended with the bench however it ends. */
const children: ChildProcessWithoutNullStreams[] = [];
process.on('exit', () => {
  for (const c of children) if (c.exitCode === null) c.kill();
});
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.on(signal, () => {
    process.exitCode = 130;
    process.exit();
  });
}

export async function startPeerProcess(
  name: string,
  command: string,
  args: readonly string[],
  env: NodeJS.ProcessEnv,
): Promise<PeerProcess> {
  const child: ChildProcessWithoutNullStreams = spawn(command, args, { env, stdio: 'pipe' });
  children.push(child);
  child.stderr.on('data', (d: Buffer) => process.stderr.write(`  [${name}] ${d.toString()}`));
  const lines = createInterface({ input: child.stdout });
  const queue: ((line: string) => void)[] = [];
  const exited = new Promise<never>((_, reject) =>
    child.on('exit', (code) => reject(new Error(`${name} exited with code ${code}`))),
  );
  exited.catch(() => {});
  lines.on('line', (line) => queue.shift()?.(line));
  const next = () => Promise.race([new Promise<string>((resolve) => queue.push(resolve)), exited]);
  const ready = JSON.parse(await next()) as { ready: boolean; versions: unknown; settings: unknown };
  return {
    ready: { versions: ready.versions, settings: ready.settings },
    async generate(request) {
      child.stdin.write(`${JSON.stringify(request)}\n`);
      const reply = JSON.parse(await next()) as PeerSample & { error?: string };
      if (reply.error) throw new Error(`${name}: ${reply.error}`);
      return { ...reply, tokenCount: reply.tokens.length };
    },
    async close() {
      child.stdin.end();
      await new Promise((resolve) => child.on('close', resolve));
    },
  };
}
