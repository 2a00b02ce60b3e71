/**
 * A small typed client for the CLI, tests and benchmarks: TextGeneration plus health.
 */
import {
  type CallOptions,
  type ChannelOptions,
  type ClientDuplexStream,
  type ClientReadableStream,
  type GrpcObject,
  type ServiceClientConstructor,
  credentials,
  loadPackageDefinition,
  Metadata,
  type ServiceError,
} from '@grpc/grpc-js';
import type {
  BidiClientMsg,
  BidiServerMsg,
  GenerateChunkMsg,
  GenerateRequestMsg,
  GenerateResponseMsg,
  ModelInfoResponseMsg,
  TokenizeRequestMsg,
} from './messages.js';
import { loadProtos } from './proto.js';

type UnaryMethod<Req, Res> = (request: Req, metadata: Metadata, options: CallOptions, callback: (error: ServiceError | null, response: Res) => void) => void;

interface RawTextGenerationClient {
  Generate: UnaryMethod<GenerateRequestMsg, GenerateResponseMsg>;
  GenerateStream(request: GenerateRequestMsg, metadata: Metadata, options: CallOptions): ClientReadableStream<GenerateChunkMsg>;
  GenerateBidi(metadata: Metadata, options: CallOptions): ClientDuplexStream<BidiClientMsg, BidiServerMsg>;
  Tokenize: UnaryMethod<TokenizeRequestMsg, { token_count: number; token_ids: number[]; tokens: string[] }>;
  ModelInfo: UnaryMethod<{ model?: string }, ModelInfoResponseMsg>;
  close(): void;
}

interface RawHealthClient {
  Check: UnaryMethod<{ service: string }, { status: string }>;
  close(): void;
}

export interface CallSettings {
  /** Per-call deadline from now. */
  readonly deadlineMs?: number;
}

function callOptions(settings: CallSettings | undefined): CallOptions {
  return settings?.deadlineMs !== undefined ? { deadline: Date.now() + settings.deadlineMs } : {};
}

function unary<Req, Res>(method: UnaryMethod<Req, Res>, self: unknown, request: Req, settings?: CallSettings): Promise<Res> {
  return new Promise((resolve, reject) => {
    method.call(self, request, new Metadata(), callOptions(settings), (error, response) => (error ? reject(error) : resolve(response)));
  });
}

export class TextGenerationClient {
  readonly raw: RawTextGenerationClient;
  private readonly healthClient: RawHealthClient;

  /** `channelOptions`: grpc-js channel options, e.g. 'grpc-node.flow_control_window'. */
  constructor(address: string, channelOptions: ChannelOptions = {}) {
    const { clientConstructor, packageDefinition } = loadProtos();
    this.raw = new clientConstructor(address, credentials.createInsecure(), channelOptions) as unknown as RawTextGenerationClient;
    const grpcObject = loadPackageDefinition(packageDefinition);
    const health = ((grpcObject['grpc'] as GrpcObject)['health'] as GrpcObject)['v1'] as GrpcObject;
    this.healthClient = new (health['Health'] as ServiceClientConstructor)(address, credentials.createInsecure()) as unknown as RawHealthClient;
  }

  generate(request: GenerateRequestMsg, settings?: CallSettings): Promise<GenerateResponseMsg> {
    return unary(this.raw.Generate, this.raw, request, settings);
  }

  generateStream(request: GenerateRequestMsg, settings?: CallSettings): ClientReadableStream<GenerateChunkMsg> {
    return this.raw.GenerateStream(request, new Metadata(), callOptions(settings));
  }

  generateBidi(settings?: CallSettings): ClientDuplexStream<BidiClientMsg, BidiServerMsg> {
    return this.raw.GenerateBidi(new Metadata(), callOptions(settings));
  }

  tokenize(request: TokenizeRequestMsg, settings?: CallSettings): Promise<{ token_count: number; token_ids: number[]; tokens: string[] }> {
    return unary(this.raw.Tokenize, this.raw, request, settings);
  }

  modelInfo(model = '', settings?: CallSettings): Promise<ModelInfoResponseMsg> {
    return unary(this.raw.ModelInfo, this.raw, { model }, settings);
  }

  /** grpc.health.v1 Check: 'SERVING' | 'NOT_SERVING' | … */
  async health(service = '', settings: CallSettings = { deadlineMs: 5000 }): Promise<string> {
    return (await unary(this.healthClient.Check, this.healthClient, { service }, settings)).status;
  }

  close(): void {
    this.raw.close();
    this.healthClient.close();
  }
}
