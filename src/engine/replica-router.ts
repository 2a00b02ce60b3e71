/**
 * The pool's routing: each run goes to the live replica with the fewest runs in flight, and stays
 * there (its KV cache lives there). Which replicas are live, and restarting them, is the
 * supervisor's concern (replica-supervisor.ts).
 */
import { NoReplicaUpError } from '../errors.js';
import type { GenerationEvent, PreparedGeneration } from '../contract.js';

/** What the router needs of a replica's engine. */
export interface RoutedEngine {
  /** False once it died: never chosen. */
  readonly alive: boolean;
  run(prepared: PreparedGeneration, signal?: AbortSignal): AsyncGenerator<GenerationEvent>;
}

export class LeastLoadedRouter {
  private readonly inFlight: number[];
  private readonly engineAt: (replica: number) => RoutedEngine;
  private closed = false;

  /** `engineAt(i)`: replica i's current engine (it changes when the replica restarts). */
  constructor(replicas: number, engineAt: (replica: number) => RoutedEngine) {
    this.inFlight = new Array<number>(replicas).fill(0);
    this.engineAt = engineAt;
  }

  /** Runs in flight per replica, counted from routing to the end of the run (diagnostics). */
  get runsInFlight(): readonly number[] {
    return [...this.inFlight];
  }

  /** Later runs fail (the pool is disposed). */
  close(): void {
    this.closed = true;
  }

  async *run(prepared: PreparedGeneration, signal?: AbortSignal): AsyncGenerator<GenerationEvent> {
    if (this.closed) throw new NoReplicaUpError('the engine pool is disposed');
    let chosen = -1;
    for (let i = 0; i < this.inFlight.length; i++) {
      if (this.engineAt(i).alive && (chosen === -1 || this.inFlight[i]! < this.inFlight[chosen]!)) chosen = i;
    }
    if (chosen === -1)
      throw new NoReplicaUpError(`no model replica is up (${this.inFlight.length} restarting); retry shortly`);
    const engine = this.engineAt(chosen);
    this.inFlight[chosen]!++;
    try {
      yield* engine.run(prepared, signal);
    } finally {
      this.inFlight[chosen]!--;
    }
  }
}
