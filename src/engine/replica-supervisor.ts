/**
 * The pool's supervision: keeps each replica up. A replica whose engine dies, or that the
 * watchdog finds wedged (forwards in flight without progress, or no heartbeat), is replaced after
 * a backoff, with a bound on restarts per minute; each step is a ReplicaEvent. Routing runs is the
 * router's concern (replica-router.ts).
 */
import { ReplicaFailedError } from '../errors.js';
import type { ReplicaCapacity, ReplicaEvent, ReplicaSet } from './replica-set.js';

/** How the pool keeps its replicas up. */
export interface SupervisionOptions {
  /** A replica whose forwards make no progress (or that sends no heartbeat) this long is wedged and replaced; 0 = no watchdog. */
  readonly forwardTimeoutMs: number;
  /** Restarts of one replica within any 60 s; beyond it the next waits until the oldest leaves the window. */
  readonly restartsPerMinuteMax: number;
  /** First restart delay, doubled after each failed start, capped. */
  readonly restartBackoffMs: number;
  readonly restartBackoffMaxMs: number;
}

/**
 * The slowest forward measured here is a 512-token prefill chunk: ~0.5 s on 2 CPU cores, far
 * less on a GPU; a minute is two orders of magnitude above it, yet a hang is caught in a minute.
 */
export const DEFAULT_SUPERVISION: SupervisionOptions = {
  forwardTimeoutMs: 60_000,
  restartsPerMinuteMax: 5,
  restartBackoffMs: 250,
  restartBackoffMaxMs: 30_000,
};

/** What the supervisor needs of a replica's engine (a WorkerEngine). */
export interface SupervisedEngine {
  /** False once it died or was killed. */
  readonly alive: boolean;
  /** Its process (process isolation). */
  readonly pid: number | undefined;
  /** Called once if it dies or is killed (not when disposed). */
  onDeath(listener: (failure: ReplicaFailedError) => void): void;
  /** How long it has gone without progress at `now` (epoch ms). */
  stalledMs(now: number): number;
  /** Ends its runs with `failure` and kills it without waiting. */
  kill(failure: ReplicaFailedError): void;
  dispose(): Promise<void>;
}

/** One supervised replica: its current engine and its restart bookkeeping. */
interface Replica<E> {
  engine: E;
  /** The current engine is dead and a start is scheduled or running. */
  down: boolean;
  /** Start times (epoch ms) of restarts within the last minute. */
  restarts: number[];
  /** Consecutive failed starts (backoff exponent). */
  failedStarts: number;
  timer: NodeJS.Timeout | undefined;
}

export class ReplicaSupervisor<E extends SupervisedEngine> implements ReplicaSet {
  private readonly replicas: Replica<E>[];
  private readonly start: () => Promise<E>;
  private readonly options: SupervisionOptions;
  private readonly listeners: ((event: ReplicaEvent) => void)[] = [];
  private readonly watchdog: NodeJS.Timeout | undefined;
  private disposed = false;

  /** `engines`: the replicas as started; `start`: loads a replacement. */
  constructor(engines: readonly E[], start: () => Promise<E>, options: SupervisionOptions) {
    this.start = start;
    this.options = options;
    this.replicas = engines.map((engine) => ({ engine, down: false, restarts: [], failedStarts: 0, timer: undefined }));
    this.replicas.forEach((replica, i) => this.supervise(i, replica.engine));
    if (options.forwardTimeoutMs > 0) {
      this.watchdog = setInterval(
        () => this.checkWedged(),
        Math.min(1_000, Math.max(50, options.forwardTimeoutMs / 4)),
      );
      this.watchdog.unref();
    }
  }

  /** Replica `index`'s current engine (a dead one until its restart has loaded). */
  engineAt(index: number): E {
    return this.replicas[index]!.engine;
  }

  /** Each replica's current engine. */
  get engines(): readonly E[] {
    return this.replicas.map((r) => r.engine);
  }

  get capacity(): ReplicaCapacity {
    return { up: this.replicas.filter((r) => r.engine.alive).length, total: this.replicas.length };
  }

  onReplicaEvent(listener: (event: ReplicaEvent) => void): void {
    this.listeners.push(listener);
  }

  /** Stops restarting and the watchdog, and disposes every current engine. */
  async dispose(): Promise<void> {
    this.disposed = true;
    clearInterval(this.watchdog);
    for (const replica of this.replicas) clearTimeout(replica.timer);
    await Promise.all(this.replicas.map((replica) => replica.engine.dispose()));
  }

  private emit(event: Omit<ReplicaEvent, 'up' | 'total'>): void {
    const full: ReplicaEvent = { ...event, ...this.capacity };
    for (const listener of this.listeners) listener(full);
  }

  /** Replaces `engine` when it dies (unless it was replaced already). */
  private supervise(index: number, engine: E): void {
    engine.onDeath((failure) => {
      const replica = this.replicas[index]!;
      if (this.disposed || replica.engine !== engine || replica.down) return;
      this.scheduleRestart(index, failure, engine.pid);
    });
  }

  private scheduleRestart(index: number, failure: ReplicaFailedError, pid?: number): void {
    const replica = this.replicas[index]!;
    replica.down = true;
    const now = Date.now();
    replica.restarts = replica.restarts.filter((t) => now - t < 60_000);
    const backoff = Math.min(
      this.options.restartBackoffMaxMs,
      this.options.restartBackoffMs * 2 ** replica.failedStarts,
    );
    // At the bound: wait until the oldest restart of the last minute leaves the window.
    const limited =
      replica.restarts.length >= this.options.restartsPerMinuteMax ? replica.restarts[0]! + 60_000 - now : 0;
    const delay = Math.max(backoff, limited);
    const kind = failure.kind === 'failed-start' ? 'restart-failed' : failure.kind;
    this.emit({
      kind,
      replica: index,
      reason: failure.message,
      restartInMs: delay,
      restartsLastMinute: replica.restarts.length,
      ...(pid !== undefined ? { pid } : {}),
    });
    replica.timer = setTimeout(() => void this.restart(index), delay);
    replica.timer.unref();
  }

  private async restart(index: number): Promise<void> {
    const replica = this.replicas[index]!;
    if (this.disposed) return;
    replica.restarts.push(Date.now());
    try {
      const engine = await this.start();
      if (this.disposed) {
        await engine.dispose();
        return;
      }
      const old = replica.engine;
      replica.engine = engine;
      replica.down = false;
      replica.failedStarts = 0;
      this.supervise(index, engine);
      old.dispose().catch(() => undefined);
      this.emit({
        kind: 'restarted',
        replica: index,
        restartsLastMinute: replica.restarts.length,
        ...(engine.pid !== undefined ? { pid: engine.pid } : {}),
      });
    } catch (error) {
      if (this.disposed) return;
      replica.failedStarts++;
      this.scheduleRestart(
        index,
        new ReplicaFailedError('failed-start', error instanceof Error ? error.message : String(error), {
          cause: error,
        }),
      );
    }
  }

  /** The watchdog: a replica without progress for forwardTimeoutMs is killed (its runs end UNAVAILABLE) and replaced. */
  private checkWedged(): void {
    const now = Date.now();
    const limit = this.options.forwardTimeoutMs;
    for (const replica of this.replicas) {
      if (replica.down || !replica.engine.alive) continue;
      const stalled = replica.engine.stalledMs(now);
      if (stalled > limit) {
        replica.engine.kill(
          new ReplicaFailedError(
            'wedged',
            `the model replica running this generation was wedged: no forward progress for ${Math.round(stalled)} ms (limit ${limit} ms); retry`,
          ),
        );
      }
    }
  }
}
