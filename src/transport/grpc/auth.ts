/**
 * Bearer-token check for the gRPC port (`--api-key-file`): a server interceptor, so every method of
 * every protected service is covered by construction — unary, server-streaming and bidi alike —
 * before a handler runs (a rejected call never takes a slot or starts a span).
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import {
  type Metadata,
  ResponderBuilder,
  type ServerInterceptingCallInterface,
  ServerInterceptingCall,
  type ServerInterceptor,
  ServerListenerBuilder,
  type ServerMethodDefinition,
} from '@grpc/grpc-js';
import { UnauthenticatedError } from '../../errors.js';
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

const digest = (value: string): Buffer => createHash('sha256').update(value, 'utf8').digest();

/**
 * Checks `authorization: Bearer <key>` against the configured keys. Comparisons are of SHA-256
 * digests (equal length, so neither the key's length nor where it differs shows in the timing),
 * and every key is compared, so which one matched does not show either.
 */
export class BearerTokenCheck {
  private readonly digests: readonly Buffer[];

  constructor(keys: readonly string[]) {
    if (keys.length === 0) throw new Error('BearerTokenCheck needs at least one key');
    this.digests = keys.map(digest);
  }

  /** Undefined when the call may go on; else the error to answer with (never containing the token). */
  check(metadata: Metadata): UnauthenticatedError | undefined {
    const values = metadata.get('authorization');
    const header = values.length === 1 && typeof values[0] === 'string' ? values[0] : undefined;
    if (header === undefined) {
      return new UnauthenticatedError(
        values.length > 1
          ? 'send one authorization header, not several'
          : 'a bearer token is required: send the metadata "authorization: Bearer <key>"',
      );
    }
    const match = /^Bearer +(\S+)\s*$/i.exec(header);
    if (match === null) return new UnauthenticatedError('the authorization metadata must be "Bearer <key>"');
    const presented = digest(match[1]!);
    let ok = false;
    for (const d of this.digests) ok = timingSafeEqual(presented, d) || ok;
    return ok ? undefined : new UnauthenticatedError('invalid bearer token');
  }
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
        const error = tokens.check(metadata);
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
