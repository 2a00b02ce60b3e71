/**
 * Bearer-token check for the gRPC port (`--api-key-file`): a server interceptor, so every method of
 * every protected service is covered by construction — unary, server-streaming and bidi alike —
 * before a handler runs (a rejected call never takes a slot or starts a span).
 */
import {
  ResponderBuilder,
  type ServerInterceptingCallInterface,
  ServerInterceptingCall,
  type ServerInterceptor,
  ServerListenerBuilder,
  type ServerMethodDefinition,
} from '@grpc/grpc-js';
import { BearerTokenCheck } from '../bearer-token.js';
import { toGrpcStatus } from './status.js';

/**
 * Services that stay open with a key set: probes (kubelet, `anpd health`, load balancers) carry no
 * token, and reflection only describes the API. Everything else, including any service added
 * later, needs the key.
 */
export const OPEN_SERVICES: readonly string[] = [
  'grpc.health.v1.Health',
  'grpc.reflection.v1.ServerReflection',
  'grpc.reflection.v1alpha.ServerReflection',
];

function serviceOf(path: string): string {
  // '/package.Service/Method'
  return path.slice(1, path.lastIndexOf('/'));
}

/** A grpc-js server interceptor that answers UNAUTHENTICATED before the handler sees the call. */
export function bearerTokenInterceptor(
  keys: readonly string[],
  open: readonly string[] = OPEN_SERVICES,
): ServerInterceptor {
  const tokens = new BearerTokenCheck(keys);
  const openServices = new Set(open);
  return (method: ServerMethodDefinition<unknown, unknown>, call: ServerInterceptingCallInterface) => {
    if (openServices.has(serviceOf(method.path))) return new ServerInterceptingCall(call);
    const listener = new ServerListenerBuilder()
      .withOnReceiveMetadata((metadata, next) => {
        const error = tokens.check(metadata.get('authorization'), 'metadata');
        if (error === undefined) {
          next(metadata);
          return;
        }
        // The handler never gets the metadata, so it never starts (grpc-js runs handlers from it).
        const mapped = toGrpcStatus(error);
        call.sendStatus({ code: mapped.code, details: mapped.details });
      })
      .build();
    return new ServerInterceptingCall(call, new ResponderBuilder().withStart((next) => next(listener)).build());
  };
}
