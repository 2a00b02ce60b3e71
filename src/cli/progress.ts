import cliProgress from 'cli-progress';
import type { FetchProgress } from '../registry/model-cache.js';

const LABELS: Record<string, string> = {
  download: 'download',
  extract: 'extract ',
  read: 'read    ',
  convert: 'convert ',
  write: 'write   ',
  hash: 'checksum',
};

/** One progress bar per phase on stderr (cli-progress falls back to plain lines without a TTY). */
export function createProgressReporter(): FetchProgress & { stop(): void } {
  let bar: cliProgress.SingleBar | undefined;
  let phase = '';
  const stop = (): void => {
    bar?.stop();
    bar = undefined;
  };
  const report = ((event) => {
    if (event.phase === 'download') {
      // pip draws its own download bar.
      if (event.note) process.stderr.write(`${event.note}\n`);
      return;
    }
    if (event.phase !== phase) {
      stop();
      phase = event.phase;
      bar = new cliProgress.SingleBar(
        {
          format: `${LABELS[phase] ?? phase} [{bar}] {percentage}% | {value}/{total}`,
          stream: process.stderr,
          noTTYOutput: true,
          notTTYSchedule: 5000,
          hideCursor: true,
        },
        cliProgress.Presets.shades_classic,
      );
      bar.start(event.total, event.done);
    }
    bar?.setTotal(event.total);
    bar?.update(event.done);
    if (event.done >= event.total) stop();
  }) as FetchProgress & { stop(): void };
  report.stop = stop;
  return report;
}

/** Runs `work` with a progress reporter that is stopped however it ends (its timer would keep the process alive). */
export async function withProgress<T>(
  work: (progress: ReturnType<typeof createProgressReporter>) => T | Promise<T>,
): Promise<T> {
  const progress = createProgressReporter();
  try {
    return await work(progress);
  } finally {
    progress.stop();
  }
}
