/**
 * Engine worker: owns an Engine (and so the ONNX Runtime session) and runs generations
 * for the main thread. ORT's `run` is synchronous; here it blocks only this thread, so the main
 * thread keeps serving I/O (gRPC frames, cancels, health checks) while the model computes.
 * Runs as a worker thread, or as a child process (same messages over IPC) where ORT state must
 * not be shared between replicas (the WebGPU provider keeps one device context per process).
 * Started by an entry module (engine-worker-main.ts; tests have their own that decorate the model).
 */
import { parentPort } from 'node:worker_threads';
import { AnpdError, CancelledError, ReplicaFailedError } from '../errors.js';
import type { DecoderModel } from '../runtime/types.js';
import { loadEngine } from './create-engine.js';
import type { Engine } from './engine.js';
import { ForwardWatch } from './forward-watch.js';
import {
  type FromWorker,
  type RunMessage,
  type SerializedError,
  type ToWorker,
  WORKER_DELTAS_IN_FLIGHT_MAX,
  WORKER_HEARTBEAT_MS,
} from './worker-protocol.js';

interface Run {
  readonly controller: AbortController;
  outstanding: number;
  wake: (() => void) | undefined;
}

/** Epoch ms, comparable across threads and processes (each has its own performance.timeOrigin). */
const epochNow = () => performance.timeOrigin + performance.now();
const evaluatedAt = epochNow();

interface Port {
  postMessage(message: FromWorker): void;
  on(event: 'message', listener: (message: ToWorker) => void): void;
  close(): void;
}

function processPort(): Port | null {
  if (process.send === undefined) return null;
  return {
    postMessage: (message) => process.send!(message),
    on: (event, listener) => process.on(event, listener as (message: unknown) => void),
    close: () => process.disconnect(),
  };
}

const parent: Port | null = parentPort ?? processPort();
if (parent === null) throw new Error('the engine worker must run in a worker thread or a forked child process');
const port: Port = parent;

let engine: Engine | undefined;
/** A 'calibrate' in progress: dispose waits for it rather than release the session under it. */
let calibration: Promise<unknown> | undefined;
const runs = new Map<number, Run>();
/**
 * The runs' messages of this macrotask, posted as one RunEvents at the next (a step resumes every
 * stream at once). Bounded: a run posts at most WORKER_DELTAS_IN_FLIGHT_MAX deltas and one end.
 */
let outbox: RunMessage[] = [];
let flushQueued = false;
function flushRuns(): void {
  flushQueued = false;
  if (outbox.length === 0) return;
  const messages = outbox;
  outbox = [];
  port.postMessage({ type: 'events', messages });
}
const postRun = (message: RunMessage) => {
  outbox.push(message);
  if (flushQueued) return;
  flushQueued = true;
  setImmediate(flushRuns);
};
/** Other messages keep their order after the runs' (e.g. 'disposed' after the aborted runs' errors). */
const post = (message: FromWorker) => {
  flushRuns();
  port.postMessage(message);
};
/** The loaded model's forwards, for the heartbeats (set with the engine). */
let forwards: ForwardWatch | undefined;
let heartbeat: NodeJS.Timeout | undefined;

function serialize(error: unknown): SerializedError {
  if (error instanceof CancelledError)
    return { code: error.code, name: error.name, message: error.message, progress: error.progress };
  if (error instanceof ReplicaFailedError)
    return { code: error.code, name: error.name, message: error.message, replicaFailure: error.kind };
  if (error instanceof AnpdError) return { code: error.code, name: error.name, message: error.message };
  const e = error instanceof Error ? error : new Error(String(error));
  return { code: 'INTERNAL', name: e.name, message: e.stack ?? e.message };
}

async function run(id: number, message: Extract<ToWorker, { type: 'run' }>): Promise<void> {
  const state: Run = { controller: new AbortController(), outstanding: 0, wake: undefined };
  runs.set(id, state);
  const signal = state.controller.signal;
  try {
    if (engine === undefined) throw new AnpdError('INTERNAL', 'engine worker is not initialised');
    for await (const event of engine.run({ request: message.request, promptTokens: message.promptTokens }, signal)) {
      if (event.type === 'delta') {
        // The event's own fields (index, logprobs only when set) travel as they are.
        postRun({ ...event, id });
        state.outstanding++;
        // Pause this generation (not the others) until the consumer catches up or cancels.
        while (state.outstanding >= WORKER_DELTAS_IN_FLIGHT_MAX && !signal.aborted) {
          await new Promise<void>((resolve) => {
            state.wake = resolve;
          });
        }
      } else {
        postRun({ type: 'final', id, final: event });
      }
    }
  } catch (error) {
    postRun({ type: 'error', id, error: serialize(error) });
  } finally {
    runs.delete(id);
  }
}

function wake(state: Run): void {
  const resolve = state.wake;
  state.wake = undefined;
  resolve?.();
}

/**
 * Serves the main thread's messages from now on. `decorateModel` wraps the loaded model (inside the
 * forward watch) before the Engine gets it: how tests inject faults without a hook in this code.
 */
export function startEngineWorker(decorateModel: (model: DecoderModel) => DecoderModel = (model) => model): void {
  port.on('message', (message) => handle(message, decorateModel));
}

function handle(message: ToWorker, decorateModel: (model: DecoderModel) => DecoderModel): void {
  switch (message.type) {
    case 'init':
      loadEngine(
        message.modelDir,
        message.runtime,
        message.forwardCost,
        (model) => {
          forwards = new ForwardWatch(decorateModel(model));
          return forwards;
        },
        message.prefixCacheBytes,
      ).then(
        async (created) => {
          engine = created;
          const modelLoadedAt = epochNow();
          // The plan's table before 'ready' (measured now, or given); a deferred one on 'calibrate' or at the first adaptive run.
          const forwardCost = await created.forwardCosts.settle();
          const measured = message.forwardCost.mode === 'measure-now';
          post({
            type: 'ready',
            info: created.model.info,
            forwardCost,
            times: { evaluatedAt, modelLoadedAt, ...(measured ? { calibratedAt: epochNow() } : {}) },
          });
          // Never keeps the worker alive on its own; stops with 'dispose'.
          const watch = forwards!;
          heartbeat = setInterval(
            () =>
              post({
                type: 'heartbeat',
                forwardsInFlight: watch.inFlight,
                progressAt: watch.progressAt,
                caches: created.cacheStats(),
              }),
            WORKER_HEARTBEAT_MS,
          );
          heartbeat.unref();
        },
        (error: unknown) => post({ type: 'init-error', error: serialize(error) }),
      );
      break;
    case 'calibrate': {
      const started = performance.now();
      if (engine === undefined) {
        post({
          type: 'calibrate-error',
          error: { code: 'INTERNAL', name: 'Error', message: 'engine worker is not initialised' },
        });
        break;
      }
      calibration = engine.forwardCost().then(
        (forwardCost) => post({ type: 'calibrated', forwardCost, ms: performance.now() - started }),
        (error: unknown) => post({ type: 'calibrate-error', error: serialize(error) }),
      );
      break;
    }
    case 'run':
      void run(message.id, message);
      break;
    case 'cancel': {
      const state = runs.get(message.id);
      if (state) {
        state.controller.abort(new Error(message.message));
        wake(state);
      }
      break;
    }
    case 'credits':
      for (const id of message.ids) {
        const state = runs.get(id);
        if (state) {
          state.outstanding--;
          wake(state);
        }
      }
      break;
    case 'dispose':
      clearInterval(heartbeat);
      for (const state of runs.values()) state.controller.abort(new Error('engine worker disposed'));
      void Promise.allSettled([calibration])
        .then(() => engine?.dispose())
        .finally(() => {
          post({ type: 'disposed' });
          port.close();
        });
      break;
  }
}
