/**
 * A test-only engine worker entry: the production worker code (engine-worker.ts) with the model
 * wrapped by the wedge fault (wedge-fault.ts). Selected with `workerEntry: WEDGING_ENGINE_WORKER`.
 */
import { startEngineWorker } from '../../src/engine/engine-worker.js';
import { WEDGE_FILE_ENV, wedgingModel } from './wedge-fault.js';

const wedgeFile = process.env[WEDGE_FILE_ENV];
if (wedgeFile === undefined || wedgeFile === '')
  throw new Error(`${WEDGE_FILE_ENV} is not set: the test that starts this worker names the wedge file`);
startEngineWorker((model) => wedgingModel(model, wedgeFile));
