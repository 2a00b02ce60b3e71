/**
 * The llm.v1.TextGeneration handlers, each a small function wrapped once for telemetry and error
 * mapping (rpc-wrapper.ts); the three generate RPCs share one generation path
 * (generation-adapter.ts).
 */
import type { UntypedServiceImplementation } from '@grpc/grpc-js';
import type { InferenceService } from '../../engine/inference-service.js';
import { InvalidRequestError } from '../../errors.js';
import type { Logger } from '../../log.js';
import type { GenerationTelemetry } from '../../telemetry/generation-telemetry.js';
import { BidiCall } from './bidi-call.js';
import type { CallWriter } from './call-context.js';
import { GenerationAdapter } from './generation-adapter.js';
import {
  type BidiClientMsg,
  type BidiServerMsg,
  type GenerateChunkMsg,
  type GenerateRequestMsg,
  type GenerateResponseMsg,
  type ModelInfoResponseMsg,
  type TokenizeRequestMsg,
  type TokenizeResponseMsg,
  type TokenLogprobMsg,
  parseChatMessages,
  toGenerateResponse,
  toModelInfo,
} from './messages.js';
import { RpcWrapper, type RpcScope } from './rpc-wrapper.js';

export interface TextGenerationDeps {
  readonly service: InferenceService;
  readonly logger: Logger;
  readonly telemetry?: GenerationTelemetry;
  /** Aborts when the server starts draining: idle bidi calls end. */
  readonly drainSignal: AbortSignal;
}

export function textGenerationHandlers({
  service,
  logger,
  telemetry,
  drainSignal,
}: TextGenerationDeps): UntypedServiceImplementation {
  const rpc = new RpcWrapper(logger, telemetry);
  const generations = new GenerationAdapter(service, telemetry);
  const requestId = (request: GenerateRequestMsg) => ({ requestId: request.request_id ?? '' });
  return {
    Generate: rpc.unary<GenerateRequestMsg, GenerateResponseMsg>(
      'Generate',
      (request, scope) => generate(generations, request, scope),
      requestId,
    ),
    GenerateStream: rpc.serverStream<GenerateRequestMsg, GenerateChunkMsg>(
      'GenerateStream',
      (request, writer, scope) => generateStream(generations, request, writer, scope),
      requestId,
    ),
    GenerateBidi: rpc.bidiStream<BidiClientMsg, BidiServerMsg>('GenerateBidi', (call, scope) => {
      new BidiCall(call, scope, generations, logger, drainSignal); // lives on the call's events
    }),
    Tokenize: rpc.unary<TokenizeRequestMsg, TokenizeResponseMsg>('Tokenize', (request) => tokenize(service, request)),
    ModelInfo: rpc.unary<{ model?: string }, ModelInfoResponseMsg>('ModelInfo', (request) =>
      toModelInfo(service.modelInfo(request.model ?? ''), service.pool),
    ),
  };
}

/** Unary: the chunks folded into one response, one output per sample (the top level is sample 0's). */
async function generate(
  generations: GenerationAdapter,
  request: GenerateRequestMsg,
  scope: RpcScope,
): Promise<GenerateResponseMsg> {
  let response: GenerateResponseMsg | undefined;
  await generations.run(
    request,
    {
      method: 'Generate',
      stream: false,
      signal: scope.signal,
      parent: scope.parent,
      authorization: scope.authorization,
    },
    (parsed) => {
      const outputs = Array.from({ length: parsed.request.n ?? 1 }, (_, index) => ({
        index,
        text: '',
        token_ids: [] as number[],
        logprobs: [] as TokenLogprobMsg[],
      }));
      let promptLogprobs: TokenLogprobMsg[] | undefined;
      return {
        write: (chunk) => {
          if (chunk.final !== undefined) {
            response = toGenerateResponse(
              parsed.requestId,
              outputs,
              chunk.final,
              parsed.request.logprobs !== undefined,
              promptLogprobs,
            );
            return true;
          }
          const out = outputs[chunk.index ?? 0]!;
          out.text += chunk.text;
          for (const id of chunk.token_ids) out.token_ids.push(id);
          if (chunk.logprobs !== undefined) out.logprobs.push(...chunk.logprobs);
          if (chunk.prompt_logprobs !== undefined) promptLogprobs = chunk.prompt_logprobs;
          return true;
        },
      };
    },
  );
  if (response === undefined) throw new Error('the generation ended without a final event');
  return response;
}

function generateStream(
  generations: GenerationAdapter,
  request: GenerateRequestMsg,
  writer: CallWriter<GenerateChunkMsg>,
  scope: RpcScope,
): Promise<void> {
  return generations.run(
    request,
    {
      method: 'GenerateStream',
      stream: true,
      signal: scope.signal,
      parent: scope.parent,
      authorization: scope.authorization,
    },
    () => writer,
  );
}

function tokenize(service: InferenceService, msg: TokenizeRequestMsg): TokenizeResponseMsg {
  const model = msg.model ?? '';
  let ids: number[];
  if (msg.prompt === 'text') {
    if (!msg.text) throw new InvalidRequestError('text is empty');
    ids = service.tokenize(model, { kind: 'text', text: msg.text });
  } else if (msg.prompt === 'messages') {
    ids = service.tokenize(model, { kind: 'messages', messages: parseChatMessages('messages.messages', msg.messages) });
  } else {
    throw new InvalidRequestError('prompt is missing: set one of text, messages');
  }
  return { token_count: ids.length, token_ids: ids, tokens: msg.return_tokens ? service.decodeTokens(model, ids) : [] };
}
