/** Server reflection's list of services (v1 or v1alpha), as grpcurl's `list` asks for it, with no metadata. */
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import {
  type ChannelCredentials,
  credentials,
  type GrpcObject,
  loadPackageDefinition,
  type ServiceClientConstructor,
} from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';

export async function reflectedServices(
  address: string,
  version: 'v1' | 'v1alpha' = 'v1',
  channel: ChannelCredentials = credentials.createInsecure(),
): Promise<string[]> {
  const require = createRequire(import.meta.url);
  const protoDir = join(dirname(require.resolve('@grpc/reflection/package.json')), 'build', 'proto');
  const definition = loadSync(join(protoDir, `grpc/reflection/${version}/reflection.proto`), {
    keepCase: true,
    includeDirs: [protoDir],
  });
  const reflection = ((loadPackageDefinition(definition)['grpc'] as GrpcObject)['reflection'] as GrpcObject)[
    version
  ] as GrpcObject;
  const Client = reflection['ServerReflection'] as ServiceClientConstructor;
  const client = new Client(address, channel) as unknown as {
    ServerReflectionInfo(): NodeJS.ReadWriteStream & { end(): void };
    close(): void;
  };
  try {
    const call = client.ServerReflectionInfo();
    const reply = new Promise<{ list_services_response: { service: { name: string }[] } }>((resolve, reject) => {
      call.on('data', resolve);
      call.on('error', reject);
    });
    call.write({ list_services: '*' } as never);
    const response = await reply;
    call.end();
    return response.list_services_response.service.map((s) => s.name);
  } finally {
    client.close();
  }
}
