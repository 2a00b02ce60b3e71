/**
 * Our converted models (anpd-model.json + model.onnx with GroupQueryAttention) on onnxruntime-node
 * or the native CPU runner: host-KV sequences on the CPU, device-KV sequences on a GPU provider
 * (gqa-sequence.ts and its two subclasses), and the batch graphs as a BatchExecutor
 * (batch-forward.ts). The native addon's device path is device-decoder.ts.
 */
import type { ModelManifest } from '../model/model-manifest.js';
import { type BatchGraph, GqaBatchExecutor } from './batch-forward.js';
import { DeviceKvSequence } from './device-kv-sequence.js';
import { type GraphForwards, releaseForwards } from './graph-forwards.js';
import { HostKvSequence } from './host-kv-sequence.js';
import { convertedModelInfo } from './runtime-plan.js';
import type { DecoderModel, DecoderSequence, ModelInfo, RuntimePlan } from './types.js';

export class GqaDecoderModel implements DecoderModel {
  readonly info: ModelInfo;
  private readonly forwards: GraphForwards;
  private readonly manifest: ModelManifest;
  readonly plan: RuntimePlan;
  private readonly defaultCapacity: number;
  readonly batchExecutor: GqaBatchExecutor | undefined;

  /** `batches`: batch graphs of the same weights, any widths (the step scheduler picks one per forward). */
  constructor(
    forwards: GraphForwards,
    manifest: ModelManifest,
    plan: RuntimePlan,
    batches: readonly BatchGraph[] = [],
  ) {
    if (plan.kvPlacement === 'device' && forwards.session === undefined)
      throw new Error('device KV needs an onnxruntime-node session');
    this.forwards = forwards;
    this.manifest = manifest;
    this.plan = plan;
    this.defaultCapacity = Math.min(plan.kvCapacity, manifest.contextLength);
    this.info = convertedModelInfo(manifest, plan, {
      contextLength: Math.min(manifest.contextLength - (plan.rowsMin - 1), this.defaultCapacity),
      batchSlots: Math.max(1, ...batches.map((b) => b.width)),
    });
    this.batchExecutor =
      batches.length === 0
        ? undefined
        : new GqaBatchExecutor(batches, manifest, plan.kvPlacement === 'device', plan.batchPrefillChunkTokens);
  }

  createSequence(options?: { readonly capacity?: number }): DecoderSequence {
    const rowsMin = this.plan.rowsMin;
    // One position stays free for the pad row (rotary tables cover contextLength positions).
    const capacity = Math.min(options?.capacity ?? this.defaultCapacity, this.manifest.contextLength - (rowsMin - 1));
    if (this.plan.kvPlacement === 'device')
      return new DeviceKvSequence(this.forwards.session!, this.manifest, capacity, rowsMin, this.batchExecutor);
    return new HostKvSequence(this.forwards, this.manifest, capacity, rowsMin, this.batchExecutor);
  }

  async dispose(): Promise<void> {
    await this.batchExecutor?.dispose();
    await releaseForwards(this.forwards);
  }
}
