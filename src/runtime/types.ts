/**
 * What the rest of the project sees of a model runtime: token ids in, float32 logits rows out,
 * and a KV cache whose length the caller owns. No onnxruntime types cross this line.
 */

export interface ModelInfo {
  readonly name: string;
  /** 'anpd-gqa' (our converted GGUF) or 'optimum' (a Hugging Face ONNX export). */
  readonly kind: 'anpd-gqa' | 'optimum';
  readonly architecture: string;
  readonly vocabSize: number;
  readonly contextLength: number;
  readonly bosTokenId: number | undefined;
  readonly eosTokenIds: readonly number[];
  readonly executionProvider: string;
  /** Sequences one forward can carry (1: each sequence runs its own forwards). */
  readonly batchSlots: number;
  /** Query rows every forward runs at least (pad rows cost like real ones). */
  readonly forwardRowsMin: number;
  /**
   * Longest forward whose logits equal, bit for bit, those decoding one token at a time gives
   * (the device runner: its fixed row count; longer forwards take other kernels). The engine keeps
   * a draft plus its verified token within it. Absent: no limit.
   */
  readonly verifyTokensMax?: number;
  /** What runs single-sequence forwards: onnxruntime-node's run, or the native addon (outputs written in place, nothing copied back). */
  readonly runner: 'onnxruntime-node' | 'native';
  /**
   * Whose GroupQueryAttention kernel single-sequence forwards run: ONNX Runtime's, or the native
   * runner's own (native/gqa-attention.c: each KV head read once per forward).
   */
  readonly attention: 'onnxruntime' | 'native';
  /** Float type of activations and KV cache: our graph's (its manifest's dtype), float32 for an Optimum export. */
  readonly dtype: 'float32' | 'float16';
  /** Host memory one KV position takes (all layers' keys and values), where the KV lives on the host (CPU); absent elsewhere. */
  readonly kvBytesPerPosition?: number;
  /** Device memory a sequence holds whatever its length (the device path: a whole KV set); absent elsewhere. */
  readonly kvBytesPerSequence?: number;
  /**
   * Where a position's KV depends on the forward that computed it (the device path: its kernels
   * change with the forward's length), a prefix's KV equals a cold prefill's only chunk for
   * chunk: the prefill's chunk length. A reused prefix (the prefix cache) then ends on a multiple
   * of it, within the positions its source prefilled. Absent: any shared prefix is reused (host
   * KV: bitwise the same from any forward, test/model-reference.test.ts).
   */
  readonly prefixReuseChunkTokens?: number;
}

export interface DecoderSequence {
  /** Tokens whose keys/values are in the cache. */
  readonly length: number;
  /** Most tokens this sequence can hold. */
  readonly capacity: number;
  /**
   * Appends `tokens` at position `length` and returns logits for the last `logitsRows` of them,
   * row-major [logitsRows × vocabSize]. The array is reused by the next forward: copy what you keep.
   */
  forward(tokens: ArrayLike<number>, logitsRows: number): Promise<Float32Array>;
  /**
   * Where the model computes it (a GPU graph's `argmax` output): as forward(), but returns each of
   * the last `rows` logits rows' argmax (ONNX ArgMax: ties to the first index) instead of the rows, which stay
   * on the device. Absent where greedy decoding reads the logits itself. Reused like forward()'s array.
   */
  readonly forwardGreedy?: ((tokens: ArrayLike<number>, rows: number) => Promise<Int32Array>) | undefined;
  /**
   * Where the runtime can (host KV of our GQA layout): makes this empty sequence's cache the first
   * `length` positions of `source`'s, as if it had run the same forwards: several samples of one
   * prompt share one prefill. Absent: each sequence prefills itself.
   */
  readonly copyPrefixFrom?: ((source: DecoderSequence, length: number) => void) | undefined;
  /**
   * Where the runtime has a cheaper way than forward() to only append tokens to the cache (no
   * logits: a prompt's prefix): the paged graph packs it into the steps' prefill forwards. Absent:
   * forward(tokens, 1) does it.
   */
  readonly fill?: ((tokens: ArrayLike<number>) => Promise<void>) | undefined;
  /** Forgets every position ≥ `length` (a rejected draft). O(1) for the GQA layout. */
  rewind(length: number): void;
  /**
   * Frees what only its forwards need (logits buffers; on the device path its batch place, the KV
   * moving to a set of its own), keeping the KV: for a sequence that will only be copied from from
   * now on (the prefix cache). A later forward makes them again.
   */
  readonly releaseScratch?: (() => void) | undefined;
  dispose(): void;
}

export interface DecoderModel {
  readonly info: ModelInfo;
  /** What runs the model, as load-model.ts resolved it from the options (absent: a model made elsewhere, e.g. a test's). */
  readonly plan?: RuntimePlan | undefined;
  createSequence(options?: { readonly capacity?: number }): DecoderSequence;
  /** Where the model has batch graphs: what runs several sequences' forwards as one (absent: each forward is its sequence's own). */
  readonly batchExecutor?: BatchExecutor | undefined;
  dispose(): Promise<void>;
}

/**
 * One sequence's share of a forward: tokens[start, start + count) appended to its KV, run as
 * `padded` query rows (pad rows repeat the last token; their logits are never read), logits of the
 * last `rows` real rows. Made by the runtime's sequences; the scheduler above only groups them.
 */
export interface StepForward {
  /** The runtime's own sequence (opaque above the runtime). */
  readonly sequence: object;
  readonly tokens: ArrayLike<number>;
  readonly start: number;
  readonly count: number;
  readonly padded: number;
  readonly rows: number;
  /** The rows' argmax (Int32Array) instead of their logits, where the model computes it (DecoderSequence.forwardGreedy). */
  readonly argmax?: boolean;
  /**
   * A prefill chunk that only appends to the KV (rows 0, an empty result): the scheduler packs such
   * chunks of several sequences into one forward (BatchExecutor.prefillPack).
   */
  readonly fill?: boolean;
}

/** A forward's result: its logits rows, [rows × vocabSize], or (StepForward.argmax) each row's argmax. */
export type StepResult = Float32Array | Int32Array;

/** What a batch executor's sequences hand each forward to: the step scheduler above installs it. */
export interface StepSubmitter {
  /** Resolves with the forward's logits rows, [rows × vocabSize] (or argmax), reused by the sequence's next forward. */
  submit(forward: StepForward): Promise<StepResult>;
}

/** Forwards a batch executor ran: alone, and batched (forwards of the batch graphs / sequences they carried; forwards by graph width). */
export interface ForwardCounts {
  readonly alone: number;
  readonly batched: number;
  readonly batchedSequences: number;
  /** Batched forwards by the width (sequences per forward) of the graph that ran them. */
  readonly byWidth: Readonly<Record<number, number>>;
}

/**
 * The batch graphs of a model, as an executor: it runs what the scheduler groups and decides
 * nothing itself. Forwards never overlap: the scheduler runs one `run` at a time.
 */
export interface BatchExecutor {
  /** Sequences per forward of each batch graph, ascending (each ≥ 2). Width 1 is the single-sequence graph. */
  readonly widths: readonly number[];
  readonly counts: ForwardCounts;
  /**
   * Runs `forwards` (at most `width`, each of a different sequence) as one forward of the graph of
   * that width (1: the single-sequence graph, one forward); idle places are padded. A device
   * executor whose sequences own fixed places may run a wider graph (one that holds their places).
   * Resolves with each forward's result, in order. A failure fails them all.
   */
  run(width: number, forwards: readonly StepForward[]): Promise<readonly StepResult[]>;
  /** From now on the model's sequences hand their forwards to `submitter` (once per model). */
  attach(submitter: StepSubmitter): void;
  /**
   * Where the executor packs prefill chunks (StepForward.fill) of several sequences into one
   * forward: at most `entries` chunks of at most `tokens` tokens together.
   */
  readonly prefillPack?: PrefillPack;
  /** Runs one pack of fill forwards (each of a different sequence) as one forward. */
  runPrefill?(forwards: readonly StepForward[]): Promise<void>;
}

/** The most one packed prefill forward carries: chunks (entries) and their tokens together. */
export interface PrefillPack {
  readonly tokens: number;
  readonly entries: number;
}

/** ONNX Runtime execution providers this runtime knows how to configure. */
export const EXECUTION_PROVIDERS = ['cpu', 'webgpu', 'cuda'] as const;
export type ExecutionProviderName = (typeof EXECUTION_PROVIDERS)[number];

/** Most slots a batch graph may have on WebGPU: it binds at most 16 storage buffers per shader, and K slots take K + 1. */
export const WEBGPU_SLOTS_MAX = 15;

export interface RuntimeOptions {
  /** Where the model runs. A GPU provider that cannot take every node is an error, not a silent CPU fallback. */
  readonly executionProvider: ExecutionProviderName;
  /**
   * Query rows every forward runs at least (pad rows are never read). Kernels that change with the
   * row count break the bitwise equality of a position's logits across forward sizes, which
   * speculative decoding's exactness needs. @default 2 on cpu, 4 on GPU providers
   */
  readonly forwardRowsMin?: number;
  /** ORT intra-op threads; 0 lets ORT pick (one per physical core). */
  readonly intraOpThreads: number;
  /**
   * 'auto': CPU forwards of our converted graphs run through the native addon when it was built
   * (scripts/build-native.mjs), else through onnxruntime-node; 'off': always onnxruntime-node.
   * Same ONNX Runtime and options either way, so logits are bitwise equal. @default 'auto'
   */
  readonly nativeRun?: NativeRunMode;
  /** CUDA device ordinal. @default 0 */
  readonly deviceId?: number;
  /** KV positions allocated per sequence (GQA layout), clamped to the model's context. */
  readonly kvCapacity: number;
  /**
   * Converted batch graphs of the same weights (`anpd convert --slots K`): forwards that several
   * sequences ask for at the same moment then run as one, on the narrowest graph that holds them
   * (an idle place costs nearly what a busy one does). Several directories: a ladder, e.g. the
   * 2-, 4-, 8- and 16-wide graphs. @default none
   */
  readonly batchModelDir?: string | readonly string[];
  /**
   * The paged graph (`anpd convert --attention paged`, CUDA): sequences one forward may carry, and
   * KV places held on the device (each a slot of the model's capacity). @default 16
   */
  readonly batchSlots?: number;
  /**
   * The paged graph: every step runs the full-width shape (batchSlots sequences, pads included)
   * whatever the load, so a stream's output is bitwise the same at any concurrency and with or
   * without speculation (ORT's matrix products change kernels with the row count). false: each step
   * runs the smallest bucket that holds it — faster for few streams, but outputs may differ in
   * near-ties between loads (docs/gpu.md). @default true
   */
  readonly batchInvariant?: boolean;
  /**
   * The paged graph: token rows of one step's prefill forward, into which the prompts waiting
   * that step are packed (chunks of several prompts, with the decode steps of the others between
   * two such forwards). Larger: a burst of prompts gets its first tokens sooner, each step with a
   * prefill costs more. @default 2048
   */
  readonly prefillTokensPerStep?: number;
  /** Switches only tests and benchmarks set (what they measure or reach); production leaves them out. */
  readonly experimental?: ExperimentalRuntimeOptions;
}

/** Runtime switches for tests and benchmarks: each has the production behaviour as its default. */
export interface ExperimentalRuntimeOptions {
  /** Let ORT put nodes the GPU provider lacks on the CPU instead of failing (slower; for diagnosis). @default false */
  readonly allowCpuFallback?: boolean;
  /**
   * With the native runner: 'auto' runs attention on its own kernel (native/gqa-attention.c) in
   * every session of the model, the batch graphs' included (a sequence's forwards must all run one
   * kernel for speculation to stay exact); 'off' keeps ORT's. @default 'auto'
   */
  readonly nativeAttention?: NativeRunMode;
  /**
   * On 'cuda': 'auto' runs our converted (float16) graphs through the native addon's device path
   * (KV cache on the device, CUDA graphs; src/runtime/device-decoder.ts) when the addon is built,
   * 'off' through onnxruntime-node. 'emulate' runs that device path on the CPU provider with host
   * memory standing in for the device (tests, machines without a GPU). @default 'auto'
   */
  readonly deviceRun?: DeviceRunMode;
  /** With the device path on 'cuda': replay fixed-shape forwards as CUDA graphs. @default true */
  readonly cudaGraphs?: boolean;
  /**
   * Device path, graphs with an `argmax` output (float16): greedy steps bring back each row's argmax
   * instead of its logits. false: always the logits (for measuring what that costs). @default true
   */
  readonly greedyOnDevice?: boolean;
  /** Device path on CUDA: run each forward shape once at load (ORT's first run of a shape is slow). @default true */
  readonly warmUp?: boolean;
  /**
   * On CUDA: ORT's fpA_intB weight-only kernels for MatMulNBits (TensorRT-LLM's GEMV for a few rows,
   * a CUTLASS GEMM for prefill; session config `ep.cuda.fpa_intb_gemm`). They take only weights
   * without zero points (Q4_0, Q8_0, Q5_0 as converted); other nodes keep ORT's default kernels.
   * Off by default until measured on a GPU (docs/perf-notes.md, "Issue 33: the per-step profile"):
   * the benches' `--weight-gemm on` turns it on. @default false
   */
  readonly weightOnlyGemm?: boolean;
  /**
   * With batching: prefill chunk size. ≤ 32 (the step scheduler's BATCH_TOKENS_MAX, with padding)
   * lets prefill chunks share forwards with other sequences' decodes; 512 runs each prompt alone. @default 512
   */
  readonly batchPrefillChunkTokens?: number;
}

/**
 * Which implementation runs a model (runtime-plan.ts resolves it from RuntimeOptions):
 * - `cpu-native`: host KV, forwards through the native addon (src/runtime/native-run.ts);
 * - `cpu-onnxruntime`: host KV, forwards through onnxruntime-node;
 * - `ort-device-kv`: a GPU provider through onnxruntime-node, the KV cache on the device (WebGPU,
 *   or CUDA with the native runner off);
 * - `device`: the native addon's device path (src/runtime/device-decoder.ts), on CUDA or emulated on the CPU;
 * - `optimum`: a Hugging Face ONNX export (src/runtime/optimum-decoder.ts).
 */
export type RuntimeBackend = 'cpu-native' | 'cpu-onnxruntime' | 'ort-device-kv' | 'device' | 'optimum';

/** RuntimeOptions resolved once for one model directory (src/runtime/runtime-plan.ts); each backend reads only this. */
export interface RuntimePlan {
  readonly backend: RuntimeBackend;
  readonly provider: ExecutionProviderName;
  /** What runs the forwards (ModelInfo.runner). */
  readonly runner: 'native' | 'onnxruntime-node';
  /** Whose GroupQueryAttention kernel runs (ModelInfo.attention); 'native' keeps keys transposed. */
  readonly attention: 'native' | 'onnxruntime';
  readonly dtype: 'float32' | 'float16';
  /** Query rows every forward runs at least (Optimum: 1). */
  readonly rowsMin: number;
  /** Where a sequence's KV cache lives: host buffers we own, or device buffers. */
  readonly kvPlacement: 'host' | 'device';
  /** The device path's device: CUDA, or host memory standing in for it (deviceRun 'emulate'). */
  readonly deviceTarget?: 'cuda' | 'host';
  readonly deviceId: number;
  readonly intraOpThreads: number;
  readonly kvCapacity: number;
  /** Batch graph directories (none: every forward is one sequence's). */
  readonly batchGraphDirs: readonly string[];
  /** Prefill chunk size while batching. */
  readonly batchPrefillChunkTokens: number;
  /** The test and benchmark switches, defaults filled in. */
  readonly experimental: {
    readonly cudaGraphs: boolean;
    readonly greedyOnDevice: boolean;
    readonly warmUp: boolean;
    readonly weightOnlyGemm: boolean;
  };
  /** The paged graph runs the full-width shape every step (RuntimeOptions.batchInvariant). */
  readonly batchInvariant: boolean;
  /** The paged graph's sequences per forward (RuntimeOptions.batchSlots). */
  readonly batchSlots: number;
  /** The paged graph's prefill forward, in token rows (RuntimeOptions.prefillTokensPerStep). */
  readonly prefillTokensPerStep: number;
}

/** Sequences per forward of the paged graph unless RuntimeOptions.batchSlots says otherwise, and the most it takes. */
export const PAGED_BATCH_SLOTS_DEFAULT = 16;
export const PAGED_BATCH_SLOTS_MAX = 256;

/** The paged graph's prefill forward (token rows) unless RuntimeOptions.prefillTokensPerStep says otherwise, and its bounds. */
export const PREFILL_TOKENS_PER_STEP_DEFAULT = 2048;
export const PREFILL_TOKENS_PER_STEP_MIN = 64;
export const PREFILL_TOKENS_PER_STEP_MAX = 8192;

/** Most sequences a batch graph may carry on WebGPU (16 storage buffers per shader: K outputs + 1 input). */
export const WEBGPU_BATCH_WIDTH_MAX = 15;

export const DEVICE_RUN_MODES = ['auto', 'off', 'emulate'] as const;
export type DeviceRunMode = (typeof DEVICE_RUN_MODES)[number];

export const NATIVE_RUN_MODES = ['auto', 'off'] as const;
export type NativeRunMode = (typeof NATIVE_RUN_MODES)[number];

export const DEFAULT_RUNTIME_OPTIONS: RuntimeOptions = {
  executionProvider: 'cpu',
  intraOpThreads: 0,
  kvCapacity: 4096,
};
