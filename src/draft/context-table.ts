/**
 * The n-gram drafter's and the draft pools' index: a map from a context's 32-bit rolling hash to an
 * int (entry or position), open addressing over typed arrays (no boxed keys, no garbage).
 */

/** One level's map from a context's 32-bit hash to its entry: open addressing over typed arrays (no boxed keys, no garbage). */
export class ContextTable {
  size = 0;
  private keys: Int32Array;
  /** Entry index + 1; 0: empty. */
  private values: Int32Array;

  constructor(capacity: number) {
    let n = 16;
    while (n < capacity * 2) n *= 2;
    this.keys = new Int32Array(n);
    this.values = new Int32Array(n);
  }

  /** The entry of `hash`, or −1. */
  get(hash: number): number {
    const mask = this.keys.length - 1;
    const key = hash | 0;
    for (let i = key & mask; ; i = (i + 1) & mask) {
      const v = this.values[i]!;
      if (v === 0) return -1;
      if (this.keys[i] === key) return v - 1;
    }
  }

  /** `hash` → `entry`, replacing what `hash` held. */
  put(hash: number, entry: number): void {
    const mask = this.keys.length - 1;
    const key = hash | 0;
    for (let i = key & mask; ; i = (i + 1) & mask) {
      const v = this.values[i]!;
      if (v === 0) break;
      if (this.keys[i] === key) {
        this.values[i] = entry + 1;
        return;
      }
    }
    this.set(hash, entry);
  }

  /** Adds `hash` (absent) → `entry`. */
  set(hash: number, entry: number): void {
    // At most half full: probes stay short and get() always meets an empty slot.
    if (2 * (this.size + 1) > this.keys.length) this.rehash();
    this.insert(hash | 0, entry + 1);
    this.size++;
  }

  private insert(key: number, value: number): void {
    const mask = this.keys.length - 1;
    let i = key & mask;
    while (this.values[i] !== 0) i = (i + 1) & mask;
    this.keys[i] = key;
    this.values[i] = value;
  }

  private rehash(): void {
    const { keys, values } = this;
    this.keys = new Int32Array(keys.length * 2);
    this.values = new Int32Array(values.length * 2);
    for (let i = 0; i < keys.length; i++) if (values[i] !== 0) this.insert(keys[i]!, values[i]!);
  }
}

/** 32-bit rolling hash step (murmur-style, exact integer arithmetic via Math.imul). */
export function mix(h: number, token: number): number {
  let x = (h ^ Math.imul(token + 1, 0x9e3779b1)) >>> 0;
  x = Math.imul(x ^ (x >>> 16), 0x85ebca6b);
  x = Math.imul(x ^ (x >>> 13), 0xc2b2ae35);
  return (x ^ (x >>> 16)) >>> 0;
}
