/** The engine worker's entry as WorkerEngine starts it: the model as loaded, no decorator. */
import { startEngineWorker } from './engine-worker.js';

startEngineWorker();
