/**
 * A sequence whose KV cache onnxruntime-node keeps on the GPU (WebGPU; CUDA with the native runner
 * off): `past` is bound to the previous forward's `present`. Only ids go up and logits rows come
 * down; a rejected draft is rolled back by passing a shorter length, as on the CPU.
 */
import type { ModelManifest } from '../model/model-manifest.js';
import type { GqaBatchExecutor } from './batch-forward.js';
import { kvTensor } from './graph-forwards.js';
import { GqaSequence, LOGITS } from './gqa-sequence.js';
import type { ort } from './ort-session.js';

export class DeviceKvSequence extends GqaSequence {
  private readonly session: ort.InferenceSession;

  constructor(
    session: ort.InferenceSession,
    m: ModelManifest,
    capacity: number,
    rowsMin: number,
    batching: GqaBatchExecutor | undefined,
  ) {
    super(m, capacity, rowsMin, false, batching);
    this.session = session;
    // Device buffers cannot grow from here (no device-side copy): they get the full capacity. The
    // first forward uploads these host zeros as `past` once.
    const positions = capacity + rowsMin - 1;
    const dims = [1, m.kvHeads, positions, m.headDim];
    for (const [input] of this.kvNames) this.feeds[input] = kvTensor(m, m.kvHeads * positions * m.headDim, dims);
  }

  protected reserve(): void {}

  /**
   * Every forward's `present` (the past prefix plus the new rows, allocated by ORT on the device)
   * becomes the next `past`, and the old one is released. WebGPU's attention cannot bind one buffer
   * as both (Dawn refuses a writable buffer bound twice), hence a new buffer per forward instead of
   * the CPU's in-place append. With device outputs in play ORT ignores pre-allocated host outputs,
   * so the logits are read from the result.
   */
  protected async execute(): Promise<Float32Array> {
    const results = await this.session.run(this.feeds);
    this.kvNames.forEach(([, present], i) => this.adoptDeviceKv(i, results[present]));
    return results[LOGITS]!.data as Float32Array;
  }

  adoptDeviceKv(index: number, next: ort.Tensor | undefined): void {
    const [past, present] = this.kvNames[index]!;
    if (next === undefined || next.location !== 'gpu-buffer') {
      throw new Error(
        `${present} came back at "${next?.location}", not on the device: the provider did not keep the KV cache`,
      );
    }
    const previous = this.feeds[past]!;
    if (previous.location === 'gpu-buffer') previous.dispose();
    this.feeds[past] = next;
  }

  override dispose(): void {
    super.dispose();
    for (const [past] of this.kvNames) if (this.feeds[past]?.location === 'gpu-buffer') this.feeds[past].dispose();
  }
}
