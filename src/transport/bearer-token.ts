/**
 * The bearer-token check both transports share (`--api-key-file`): gRPC metadata and the HTTP
 * `Authorization` header carry the same "Bearer <key>".
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { UnauthenticatedError } from '../errors.js';

const digest = (value: string): Buffer => createHash('sha256').update(value, 'utf8').digest();

/**
 * Comparisons are of SHA-256 digests (equal length, so neither the key's length nor where it
 * differs shows in the timing), and every key is compared, so which one matched does not show either.
 */
export class BearerTokenCheck {
  private readonly digests: readonly Buffer[];

  constructor(keys: readonly string[]) {
    if (keys.length === 0) throw new Error('BearerTokenCheck needs at least one key');
    this.digests = keys.map(digest);
  }

  /** `values`: every authorization header (or metadata entry) sent. Undefined when the call may go on; else the error (never containing the token). */
  check(values: readonly unknown[], where: 'metadata' | 'header'): UnauthenticatedError | undefined {
    const header = values.length === 1 && typeof values[0] === 'string' ? values[0] : undefined;
    if (header === undefined) {
      return new UnauthenticatedError(
        values.length > 1
          ? 'send one authorization header, not several'
          : `a bearer token is required: send the ${where} "authorization: Bearer <key>"`,
      );
    }
    const match = /^Bearer +(\S+)\s*$/i.exec(header);
    if (match === null) return new UnauthenticatedError(`the authorization ${where} must be "Bearer <key>"`);
    const presented = digest(match[1]!);
    let ok = false;
    for (const d of this.digests) ok = timingSafeEqual(presented, d) || ok;
    return ok ? undefined : new UnauthenticatedError('invalid bearer token');
  }
}
