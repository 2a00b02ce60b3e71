/**
 * Startup milestones as performance marks (`anpd:<name>`), in ms since the process started
 * (performance.timeOrigin): one `started` log line per process, nothing on hot paths.
 */

/** Set by main.ts once its own imports are evaluated. */
export const MAIN_EVALUATED_MARK = 'anpd:mainEvaluated';

export interface StartupTimer {
  mark(name: string): void;
  /** A milestone reached on another thread, given as epoch ms (performance.timeOrigin + now()). */
  markAt(name: string, epochMs: number): void;
  /** Milestones in the order reached, ms since process start, starting with Node's bootstrap (where known). */
  phases(): Record<string, number>;
}

export function createStartupTimer(): StartupTimer {
  const names: string[] = [];
  return {
    mark(name) {
      performance.mark(`anpd:${name}`);
      names.push(name);
    },
    markAt(name, epochMs) {
      performance.mark(`anpd:${name}`, { startTime: epochMs - performance.timeOrigin });
      names.push(name);
    },
    phases() {
      const at = (name: string) => performance.getEntriesByName(name, 'mark')[0]?.startTime;
      const out: Record<string, number> = {};
      // Deno's node:perf_hooks has no nodeTiming.
      const bootstrapped = (performance as Partial<typeof performance>).nodeTiming?.bootstrapComplete;
      if (typeof bootstrapped === 'number') out['nodeBootstrapped'] = Math.round(bootstrapped);
      const main = at(MAIN_EVALUATED_MARK);
      if (main !== undefined) out['mainEvaluated'] = Math.round(main);
      const marks = names
        .map((name) => [name, at(`anpd:${name}`)] as const)
        .filter((m): m is readonly [string, number] => m[1] !== undefined);
      for (const [name, ms] of marks.sort((a, b) => a[1] - b[1])) out[name] = Math.round(ms);
      return out;
    },
  };
}
