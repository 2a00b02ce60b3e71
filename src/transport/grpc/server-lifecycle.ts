/**
 * Health and drain: grpc.health.v1 statuses that follow the model replicas, and the SIGTERM
 * sequence (readiness NOT_SERVING, refuse new work, let in-flight generations finish, close).
 */
import type { Server } from '@grpc/grpc-js';
import { HealthImplementation } from 'grpc-health-check';
import type { InferenceService } from '../../engine/inference-service.js';
import type { Logger } from '../../log.js';
import { SERVICE_NAME } from './proto.js';

/** Health service name for liveness probes: SERVING as long as the process answers, drain or not. */
export const LIVENESS_SERVICE = 'liveness';

/** After the drain, how long closing connections may take before they are cut. */
const SHUTDOWN_FLUSH_MS = 2000;

export class ServerLifecycle {
  readonly health: HealthImplementation;
  private readonly service: InferenceService;
  private readonly logger: Logger;
  private readonly drainController = new AbortController();
  private shuttingDown: Promise<boolean> | undefined;

  constructor(service: InferenceService, logger: Logger) {
    this.service = service;
    this.logger = logger;
    // '' and the service go NOT_SERVING when draining (readiness); 'liveness' stays SERVING while the
    // process answers, so a liveness probe never restarts a pod that is finishing its generations.
    this.health = new HealthImplementation({ '': 'SERVING', [SERVICE_NAME]: 'SERVING', [LIVENESS_SERVICE]: 'SERVING' });
    // Readiness also tells whether any model replica can serve: NOT_SERVING while none is up (they
    // are being restarted), SERVING again when one is. Liveness stays SERVING: the process is fine.
    service.onReplicasChange(({ up }) => {
      if (!this.draining) this.setReadiness(up > 0 ? 'SERVING' : 'NOT_SERVING');
    });
  }

  /** Aborts when the drain starts (idle bidi calls end UNAVAILABLE). */
  get drainSignal(): AbortSignal {
    return this.drainController.signal;
  }

  get draining(): boolean {
    return this.drainController.signal.aborted;
  }

  /**
   * Health NOT_SERVING, refuse new work (UNAVAILABLE), let in-flight generations finish for up to
   * `graceMs`, then close every connection of `server`. Resolves true if everything finished in time.
   */
  shutdown(server: Server, graceMs: number): Promise<boolean> {
    this.shuttingDown ??= this.drain(server, graceMs);
    return this.shuttingDown;
  }

  private async drain(server: Server, graceMs: number): Promise<boolean> {
    this.setReadiness('NOT_SERVING');
    this.service.startDraining();
    this.drainController.abort();
    this.logger.info('draining', { graceMs, ...this.service.poolState });
    let timer: NodeJS.Timeout | undefined;
    const finished = await Promise.race([
      this.service.whenIdle().then(() => true),
      new Promise<boolean>((resolve) => {
        timer = setTimeout(() => resolve(false), graceMs);
      }),
    ]);
    clearTimeout(timer);
    // Every call has ended by now (or the grace is spent): GOAWAY lets the last statuses flush;
    // whatever is still open after a short wait is cut.
    await new Promise<void>((resolve) => {
      const cut = setTimeout(
        () => {
          server.forceShutdown();
          resolve();
        },
        finished ? SHUTDOWN_FLUSH_MS : 0,
      );
      server.tryShutdown(() => {
        clearTimeout(cut);
        resolve();
      });
    });
    this.logger.info('server stopped', { finishedInGrace: finished });
    return finished;
  }

  private setReadiness(status: 'SERVING' | 'NOT_SERVING'): void {
    this.health.setStatus('', status);
    this.health.setStatus(SERVICE_NAME, status);
  }
}
