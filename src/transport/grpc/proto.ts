/**
 * Loads proto/llm/v1/generation.proto (and the health proto, so reflection lists both) at run time.
 */
import { fileURLToPath } from 'node:url';
import { type GrpcObject, type ServiceClientConstructor, loadPackageDefinition } from '@grpc/grpc-js';
import { type Options, type PackageDefinition, type ServiceDefinition, loadSync } from '@grpc/proto-loader';
import { protoPath as healthProtoPath } from 'grpc-health-check';

/** From dist/src/transport/grpc/ up to the package root. */
export const PROTO_DIR = fileURLToPath(new URL('../../../../proto/', import.meta.url));
export const GENERATION_PROTO = 'llm/v1/generation.proto';
export const SERVICE_NAME = 'llm.v1.TextGeneration';

/** Decoding options: the message types in messages.ts assume exactly these. */
export const PROTO_LOADER_OPTIONS: Options = {
  keepCase: true,
  longs: String,
  enums: String,
  defaults: false,
  arrays: true,
  oneofs: true,
  includeDirs: [PROTO_DIR],
};

export interface LoadedProtos {
  readonly packageDefinition: PackageDefinition;
  readonly service: ServiceDefinition;
  readonly clientConstructor: ServiceClientConstructor;
}

let cached: LoadedProtos | undefined;

export function loadProtos(): LoadedProtos {
  if (cached) return cached;
  const packageDefinition = loadSync([GENERATION_PROTO, healthProtoPath], PROTO_LOADER_OPTIONS);
  const service = packageDefinition[SERVICE_NAME] as ServiceDefinition;
  const grpcObject = loadPackageDefinition(packageDefinition);
  const llm = (grpcObject['llm'] as GrpcObject)['v1'] as GrpcObject;
  cached = { packageDefinition, service, clientConstructor: llm['TextGeneration'] as ServiceClientConstructor };
  return cached;
}
