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
  type ChannelCredentials,
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

type UnaryMethod<Req, Res> = (
  request: Req,
  metadata: Metadata,
  options: CallOptions,
  callback: (error: ServiceError | null, response: Res) => void,
) => void;

interface RawTextGenerationClient {
  Generate: UnaryMethod<GenerateRequestMsg, GenerateResponseMsg>;
  GenerateStream(
    request: GenerateRequestMsg,
    metadata: Metadata,
    options: CallOptions,
  ): ClientReadableStream<GenerateChunkMsg>;
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

/** How the client reaches a secured server (`anpd serve --tls-cert/--tls-client-ca/--api-key-file`). */
export interface ClientSecurity {
  /** Absent: plaintext. */
  readonly tls?: {
    /** PEM root(s) to trust for the server's certificate; absent: the system's roots. */
    readonly ca?: Buffer;
    /** PEM client certificate chain and its key, for mutual TLS. */
    readonly cert?: Buffer;
    readonly key?: Buffer;
    /** Name the server's certificate must carry when it is not the address's host (e.g. a probe on 127.0.0.1). */
    readonly serverName?: string;
  };
  /** Sent as `authorization: Bearer <key>` on TextGeneration calls (health is open and gets none). */
  readonly apiKey?: string;
}

function channelCredentials(security: ClientSecurity): ChannelCredentials {
  const tls = security.tls;
  return tls ? credentials.createSsl(tls.ca ?? null, tls.key ?? null, tls.cert ?? null) : credentials.createInsecure();
}

function securityChannelOptions(security: ClientSecurity): ChannelOptions {
  const name = security.tls?.serverName;
  return name !== undefined ? { 'grpc.ssl_target_name_override': name, 'grpc.default_authority': name } : {};
}

function callOptions(settings: CallSettings | undefined): CallOptions {
  return settings?.deadlineMs !== undefined ? { deadline: Date.now() + settings.deadlineMs } : {};
}

function unary<Req, Res>(
  method: UnaryMethod<Req, Res>,
  self: unknown,
  request: Req,
  settings: CallSettings | undefined,
  metadata = new Metadata(),
): Promise<Res> {
  return new Promise((resolve, reject) => {
    method.call(self, request, metadata, callOptions(settings), (error, response) =>
      error ? reject(error) : resolve(response),
    );
  });
}

export class TextGenerationClient {
  readonly raw: RawTextGenerationClient;
  private readonly healthClient: RawHealthClient;
  private readonly apiKey: string | undefined;

  /**
   * `channelOptions`: grpc-js channel options, e.g. 'grpc-node.flow_control_window'.
   * `security`: TLS roots / client certificate and the API key; default plaintext without a key.
   */
  constructor(address: string, channelOptions: ChannelOptions = {}, security: ClientSecurity = {}) {
    const { clientConstructor, packageDefinition } = loadProtos();
    const options = { ...channelOptions, ...securityChannelOptions(security) };
    this.raw = new clientConstructor(
      address,
      channelCredentials(security),
      options,
    ) as unknown as RawTextGenerationClient;
    const grpcObject = loadPackageDefinition(packageDefinition);
    const health = ((grpcObject['grpc'] as GrpcObject)['health'] as GrpcObject)['v1'] as GrpcObject;
    this.healthClient = new (health['Health'] as ServiceClientConstructor)(
      address,
      channelCredentials(security),
      securityChannelOptions(security),
    ) as unknown as RawHealthClient;
    this.apiKey = security.apiKey;
  }

  /**
   * Per-call metadata, not call credentials: grpc-js refuses call credentials on a plaintext
   * channel, and a key over plaintext is legitimate behind a sidecar that encrypts the hop.
   */
  private metadata(): Metadata {
    const metadata = new Metadata();
    if (this.apiKey !== undefined) metadata.set('authorization', `Bearer ${this.apiKey}`);
    return metadata;
  }

  generate(request: GenerateRequestMsg, settings?: CallSettings): Promise<GenerateResponseMsg> {
    return unary(this.raw.Generate, this.raw, request, settings, this.metadata());
  }

  generateStream(request: GenerateRequestMsg, settings?: CallSettings): ClientReadableStream<GenerateChunkMsg> {
    return this.raw.GenerateStream(request, this.metadata(), callOptions(settings));
  }

  generateBidi(settings?: CallSettings): ClientDuplexStream<BidiClientMsg, BidiServerMsg> {
    return this.raw.GenerateBidi(this.metadata(), callOptions(settings));
  }

  tokenize(
    request: TokenizeRequestMsg,
    settings?: CallSettings,
  ): Promise<{ token_count: number; token_ids: number[]; tokens: string[] }> {
    return unary(this.raw.Tokenize, this.raw, request, settings, this.metadata());
  }

  modelInfo(model = '', settings?: CallSettings): Promise<ModelInfoResponseMsg> {
    return unary(this.raw.ModelInfo, this.raw, { model }, settings, this.metadata());
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
