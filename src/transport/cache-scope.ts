/**
 * The cache scope of a request (issue 34): which earlier requests' text its shared draft pool holds.
 * Both transports make it here, of the caller's API key and the salt the request names, so tenants
 * never share a pool: what a pool drafts (and how fast) would tell one tenant about another's text.
 * Without API keys every caller is one tenant; the salt still separates.
 */
import { createHash } from 'node:crypto';

/** Longest cache salt (a scope name, not data). */
export const CACHE_SALT_CHARS_MAX = 256;

/**
 * `authorization`: the request's authorization header or metadata value (its key, already checked
 * where keys are required); `salt`: CacheOptions.salt / cache_salt; `off`: the request opts out.
 * Undefined: no pool.
 */
export function cacheScopeOf(authorization: unknown, salt: string, off: boolean): string | undefined {
  if (off) return undefined;
  // Only a digest of the key is kept (a scope name shows up in no output, but need not hold a secret).
  const tenant =
    typeof authorization === 'string' && authorization !== ''
      ? createHash('sha256').update(authorization, 'utf8').digest('hex').slice(0, 32)
      : 'anonymous';
  return `${tenant}/${salt}`;
}
