/** TLS for the gRPC port: plaintext (behind a mesh sidecar), TLS, or mutual TLS. */
import { ServerCredentials } from '@grpc/grpc-js';

export interface ServerTls {
  readonly certChain: Buffer;
  readonly privateKey: Buffer;
  /** Set: clients must present a certificate it signed (mutual TLS). */
  readonly clientCa?: Buffer;
}

export function serverCredentials(tls: ServerTls | undefined): ServerCredentials {
  if (tls === undefined) return ServerCredentials.createInsecure();
  return ServerCredentials.createSsl(
    tls.clientCa ?? null,
    [{ cert_chain: tls.certChain, private_key: tls.privateKey }],
    tls.clientCa !== undefined,
  );
}

/** For the log: 'off', 'on' or 'mutual'. */
export function tlsMode(tls: ServerTls | undefined): 'off' | 'on' | 'mutual' {
  return tls === undefined ? 'off' : tls.clientCa !== undefined ? 'mutual' : 'on';
}
