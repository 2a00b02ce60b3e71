/**
 * The files behind --tls-cert, --tls-key, --tls-client-ca and --api-key-file: read and checked once
 * at startup. Kept apart from server-config.ts so `anpd client` / `anpd health` can use it without
 * loading the engine modules the server config imports.
 */
import { createPrivateKey, X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { ConfigError } from '../errors.js';

/** The ServerConfig fields that name the files. */
export interface TransportSecurityFiles {
  readonly tlsCertFile: string | undefined;
  readonly tlsKeyFile: string | undefined;
  readonly tlsClientCaFile: string | undefined;
  readonly apiKeyFile: string | undefined;
}

/** What the gRPC port enforces, read from the files the config names (GrpcServerOptions takes it as is). */
export interface TransportSecurity {
  /** Absent: plaintext. */
  readonly tls?: {
    readonly certChain: Buffer;
    readonly privateKey: Buffer;
    /** Present: mutual TLS, a client certificate signed by one of these is required. */
    readonly clientCa?: Buffer;
  };
  /** Absent: TextGeneration is open. Several keys so one can be rotated in before the old one goes. */
  readonly apiKeys?: readonly string[];
}

/** The file's bytes, or a ConfigError naming the flag, the path and why (no stack). */
export function readSettingFile(flag: string, path: string): Buffer {
  try {
    return readFileSync(path);
  } catch (cause) {
    const code = (cause as NodeJS.ErrnoException).code;
    const why =
      code === 'ENOENT'
        ? 'no such file'
        : code === 'EACCES'
          ? 'permission denied'
          : code === 'EISDIR'
            ? 'is a directory'
            : (cause as Error).message;
    throw new ConfigError(`--${flag} ${path}: cannot read (${why})`);
  }
}

export function certificates(flag: string, path: string, pem: Buffer): X509Certificate[] {
  const blocks = pem.toString('utf8').match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
  if (blocks.length === 0)
    throw new ConfigError(`--${flag} ${path}: no PEM certificate in it (expected -----BEGIN CERTIFICATE-----)`);
  return blocks.map((block) => {
    try {
      return new X509Certificate(block);
    } catch (cause) {
      throw new ConfigError(`--${flag} ${path}: not a valid certificate (${(cause as Error).message})`);
    }
  });
}

/**
 * Keys of an --api-key-file: one a line, surrounding whitespace trimmed, blank lines and `#`
 * comments skipped. A key must be printable ASCII without spaces (it travels in a header); errors
 * name the line, never the key.
 */
export function parseApiKeys(text: string, path: string, flag = 'api-key-file'): string[] {
  const keys: string[] = [];
  text.split(/\r?\n/).forEach((line, index) => {
    const key = line.trim();
    if (key === '' || key.startsWith('#')) return;
    if (!/^[\x21-\x7e]+$/.test(key))
      throw new ConfigError(
        `--${flag} ${path}: line ${index + 1} is not a usable key (printable ASCII without spaces)`,
      );
    keys.push(key);
  });
  if (keys.length === 0)
    throw new ConfigError(`--${flag} ${path}: no key in it (one key a line; blank lines and # comments are skipped)`);
  return keys;
}

/**
 * Reads and checks the files the config names, once at startup, so a wrong path, a key that is not
 * the certificate's or an empty key file stops the start with the flag and path named, not the first call.
 */
export function loadTransportSecurity(config: TransportSecurityFiles): TransportSecurity {
  let tls: TransportSecurity['tls'];
  if (config.tlsCertFile !== undefined && config.tlsKeyFile !== undefined) {
    const certChain = readSettingFile('tls-cert', config.tlsCertFile);
    const privateKey = readSettingFile('tls-key', config.tlsKeyFile);
    const [leaf] = certificates('tls-cert', config.tlsCertFile, certChain);
    let key;
    try {
      key = createPrivateKey(privateKey);
    } catch (cause) {
      throw new ConfigError(
        `--tls-key ${config.tlsKeyFile}: not a usable PEM private key (${(cause as Error).message}); it must not need a passphrase`,
      );
    }
    if (!leaf!.checkPrivateKey(key))
      throw new ConfigError(
        `--tls-key ${config.tlsKeyFile} is not the private key of --tls-cert ${config.tlsCertFile}`,
      );
    let clientCa: Buffer | undefined;
    if (config.tlsClientCaFile !== undefined) {
      clientCa = readSettingFile('tls-client-ca', config.tlsClientCaFile);
      certificates('tls-client-ca', config.tlsClientCaFile, clientCa);
    }
    tls = { certChain, privateKey, ...(clientCa !== undefined ? { clientCa } : {}) };
  }
  const apiKeys =
    config.apiKeyFile !== undefined
      ? parseApiKeys(readSettingFile('api-key-file', config.apiKeyFile).toString('utf8'), config.apiKeyFile)
      : undefined;
  return { ...(tls !== undefined ? { tls } : {}), ...(apiKeys !== undefined ? { apiKeys } : {}) };
}
