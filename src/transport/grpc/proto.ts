/**
 * Loads proto/llm/v1/generation.proto and proto/grpc/health/v1/health.proto at run time
 * (reflection describes both).
 */
import { fileURLToPath } from 'node:url';
import { type GrpcObject, type ServiceClientConstructor, loadPackageDefinition } from '@grpc/grpc-js';
import { type Options, type PackageDefinition, type ServiceDefinition, loadSync } from '@grpc/proto-loader';

/** From dist/src/transport/grpc/ up to the package root. */
export const PROTO_DIR = fileURLToPath(new URL('../../../../proto/', import.meta.url));
export const GENERATION_PROTO = 'llm/v1/generation.proto';
export const SERVICE_NAME = 'llm.v1.TextGeneration';
/**
 * Check + Watch only: grpc-health-check's own proto also has List, whose map field
 * @grpc/reflection describes in a way grpcurl rejects ("invalid map").
 */
export const HEALTH_PROTO = 'grpc/health/v1/health.proto';

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
  const packageDefinition = loadSync([GENERATION_PROTO, HEALTH_PROTO], PROTO_LOADER_OPTIONS);
  const service = packageDefinition[SERVICE_NAME] as ServiceDefinition;
  const grpcObject = loadPackageDefinition(packageDefinition);
  const llm = (grpcObject['llm'] as GrpcObject)['v1'] as GrpcObject;
  cached = { packageDefinition, service, clientConstructor: llm['TextGeneration'] as ServiceClientConstructor };
  return cached;
}
