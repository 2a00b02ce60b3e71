/**
 * A test-only fault: a DecoderModel decorator whose next forward wedges when a file exists. The
 * file is the signal because the test and the replica's worker (a thread or another process) share
 * only the file system: a test writes it, and the replica whose forward deletes it first wedges —
 * "async" (the default: the forward never returns, the worker's event loop runs on) or "sync" (the
 * file's content: the thread blocks, as in a native hang). Loaded only by wedging-engine-worker.ts.
 */
import { existsSync, readFileSync, unlinkSync } from 'node:fs';
import type { DecoderModel, DecoderSequence } from '../../src/runtime/types.js';

/** The variable naming the wedge file; engine workers inherit it from the test process. */
export const WEDGE_FILE_ENV = 'ANPD_TEST_WEDGE_FILE';

/** The worker entry that wedges on the file: pass as `workerEntry` to EnginePool / WorkerEngine `create`. */
export const WEDGING_ENGINE_WORKER = new URL('./wedging-engine-worker.js', import.meta.url);

async function maybeWedge(wedgeFile: string): Promise<void> {
  if (!existsSync(wedgeFile)) return;
  let mode: string;
  try {
    mode = readFileSync(wedgeFile, 'utf8').trim();
    unlinkSync(wedgeFile); // only the replica that deletes it wedges
  } catch {
    return;
  }
  if (mode === 'sync') Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0);
  await new Promise<never>(() => {});
}

class WedgingSequence implements DecoderSequence {
  readonly forwardGreedy: ((tokens: ArrayLike<number>, rows: number) => Promise<Int32Array>) | undefined;
  readonly copyPrefixFrom: ((source: DecoderSequence, length: number) => void) | undefined;
  readonly forward: (tokens: ArrayLike<number>, logitsRows: number) => Promise<Float32Array>;
  private readonly sequence: DecoderSequence;

  constructor(sequence: DecoderSequence, wedgeFile: string) {
    this.sequence = sequence;
    this.forwardGreedy =
      sequence.forwardGreedy === undefined
        ? undefined
        : async (tokens, rows) => {
            await maybeWedge(wedgeFile);
            return sequence.forwardGreedy!(tokens, rows);
          };
    this.copyPrefixFrom =
      sequence.copyPrefixFrom === undefined
        ? undefined
        : (source, length) =>
            sequence.copyPrefixFrom!(source instanceof WedgingSequence ? source.sequence : source, length);
    this.forward = async (tokens, logitsRows) => {
      await maybeWedge(wedgeFile);
      return sequence.forward(tokens, logitsRows);
    };
  }

  get length(): number {
    return this.sequence.length;
  }

  get capacity(): number {
    return this.sequence.capacity;
  }

  rewind(length: number): void {
    this.sequence.rewind(length);
  }

  dispose(): void {
    this.sequence.dispose();
  }
}

/** `model`, whose forwards wedge when `wedgeFile` exists (see the file comment). */
export function wedgingModel(model: DecoderModel, wedgeFile: string): DecoderModel {
  return {
    get info() {
      return model.info;
    },
    get plan() {
      return model.plan;
    },
    get batchExecutor() {
      return model.batchExecutor;
    },
    createSequence: (options) => new WedgingSequence(model.createSequence(options), wedgeFile),
    dispose: () => model.dispose(),
  };
}
