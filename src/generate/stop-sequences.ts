/**
 * Text-level stop sequences over a stream of deltas. Text that could be the start of a stop
 * sequence is held back, so a client never sees part of a stop string; the stop string itself is
 * never emitted.
 */
export class StopSequenceMatcher {
  private readonly stops: readonly string[];
  private held = '';
  private stopped = false;

  constructor(stops: readonly string[]) {
    this.stops = stops.filter((s) => s.length > 0);
  }

  get done(): boolean {
    return this.stopped;
  }

  /** Returns the text safe to emit and whether a stop sequence (`stop`) ended the stream. */
  push(delta: string): { text: string; stopped: boolean; stop?: string } {
    if (this.stopped) return { text: '', stopped: true };
    if (this.stops.length === 0) return { text: delta, stopped: false };
    const buffer = this.held + delta;
    let cut = -1;
    let matched = '';
    for (const stop of this.stops) {
      const at = buffer.indexOf(stop);
      if (at !== -1 && (cut === -1 || at < cut)) {
        cut = at;
        matched = stop;
      }
    }
    if (cut !== -1) {
      this.stopped = true;
      this.held = '';
      return { text: buffer.slice(0, cut), stopped: true, stop: matched };
    }
    const hold = this.longestStopPrefixSuffix(buffer);
    this.held = buffer.slice(buffer.length - hold);
    return { text: buffer.slice(0, buffer.length - hold), stopped: false };
  }

  /** Releases held text when generation ends for another reason. */
  flush(): string {
    const text = this.held;
    this.held = '';
    return text;
  }

  private longestStopPrefixSuffix(buffer: string): number {
    let best = 0;
    for (const stop of this.stops) {
      const max = Math.min(stop.length - 1, buffer.length);
      for (let len = max; len > best; len--) {
        if (buffer.endsWith(stop.slice(0, len))) {
          best = len;
          break;
        }
      }
    }
    return best;
  }
}
