/**
 * What the InferenceService needs of a replicated backend (EnginePool), apart from generating:
 * how many replicas can serve now, and word of each change (readiness, ModelInfo, metrics).
 */

export interface ReplicaCapacity {
  readonly up: number;
  readonly total: number;
}

/** What happened to a replica (for logs and metrics; the pool itself neither logs nor measures). */
export interface ReplicaEvent {
  readonly kind: 'died' | 'wedged' | 'restarted' | 'restart-failed';
  readonly replica: number;
  /** Why it died, was declared wedged, or failed to start. */
  readonly reason?: string;
  /** With died / wedged / restart-failed: when the next start is tried. */
  readonly restartInMs?: number;
  /** Restarts in the last minute, with restart-failed / restarted. */
  readonly restartsLastMinute?: number;
  /** The replica's process (process isolation). */
  readonly pid?: number;
  /** Replicas up after the event, of how many. */
  readonly up: number;
  readonly total: number;
}

export interface ReplicaSet {
  /** Replicas that can serve now. */
  readonly capacity: ReplicaCapacity;
  /** Deaths, wedges and restarts as they happen. */
  onReplicaEvent(listener: (event: ReplicaEvent) => void): void;
}
