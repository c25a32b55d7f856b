// The simulated KV cache: its layout, its size, and its bytes.
//
// A real model's KV cache holds, for every layer, a key and a value vector per token and
// KV head. The simulator keeps that shape and size so that transfers weigh what they would
// in production (the defaults, 32 layers × 2 × 8 heads × 128 dims × 2 bytes, are 128 KiB per
// token, a 7-8B model with grouped-query attention), and stores one daemon entry per
// request with one part per layer, `layer.{i}`, laid out token-major:
// [token][K|V][head][dim] × dtype bytes.
//
// The bytes are AES-128-CTR keystream (OpenSSL, GB/s) keyed by a SHA-256 of the layer
// number and the token ids: deterministic, different for every prompt and layer, and
// cheap to recompute, so a decode instance can check every byte it received.
import { createCipheriv, createHash } from "node:crypto";

export interface KvLayout {
  layers: number;
  kvHeads: number;
  headDim: number;
  dtypeBytes: number;
}

export const DEFAULT_LAYOUT: KvLayout = { layers: 32, kvHeads: 8, headDim: 128, dtypeBytes: 2 };

/** Bytes one token adds to one layer (its K and its V). */
export function tokenLayerBytes(l: KvLayout): number {
  return 2 * l.kvHeads * l.headDim * l.dtypeBytes;
}

/** Bytes one token adds to the whole KV cache. */
export function tokenBytes(l: KvLayout): number {
  return l.layers * tokenLayerBytes(l);
}

/** The size of one layer's part for a prompt of `tokens` tokens. */
export function layerSize(l: KvLayout, tokens: number): number {
  return tokens * tokenLayerBytes(l);
}

/** The daemon part name of layer `i`. */
export function partName(layer: number): string {
  return `layer.${layer}`;
}

// Keystream is produced by encrypting zeros; one shared zero buffer, grown on demand.
const CHUNK = 16 << 20;
let zeros = Buffer.alloc(0);

function zeroBuffer(n: number): Buffer {
  if (zeros.length < n) zeros = Buffer.alloc(Math.min(CHUNK, Math.max(n, 64 << 10)));
  return zeros.subarray(0, n);
}

/** The bytes of layer `layer` for a prompt: a pure function of (token ids, layer). */
export function layerBytes(l: KvLayout, tokens: Uint32Array, layer: number): Buffer {
  const size = layerSize(l, tokens.length);
  const header = Buffer.alloc(8);
  header.writeUInt32LE(layer, 0);
  header.writeUInt32LE(tokens.length, 4);
  const key = createHash("sha256")
    .update("kvferry-simulator kv\0")
    .update(header)
    .update(new Uint8Array(tokens.buffer, tokens.byteOffset, tokens.byteLength))
    .digest();
  const cipher = createCipheriv("aes-128-ctr", key.subarray(0, 16), key.subarray(16, 32));
  if (size <= CHUNK) return cipher.update(zeroBuffer(size));
  const out = Buffer.allocUnsafe(size);
  for (let offset = 0; offset < size; offset += CHUNK) {
    const n = Math.min(CHUNK, size - offset);
    cipher.update(zeroBuffer(n)).copy(out, offset);
  }
  return out;
}

/** The first offset where `a` and `b` differ (or the shorter length), -1 when equal. */
export function firstDifference(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  const STEP = 64 << 10;
  for (let start = 0; start < n; start += STEP) {
    const end = Math.min(start + STEP, n);
    if (Buffer.compare(a.subarray(start, end), b.subarray(start, end)) === 0) continue;
    for (let i = start; i < end; i++) if (a[i] !== b[i]) return i;
  }
  return a.length === b.length ? -1 : n;
}

/** Where a byte offset of a layer's part falls: its token, K or V, head and dimension. */
export function locate(l: KvLayout, offset: number): { token: number; kv: "K" | "V"; head: number; dim: number } {
  const perToken = tokenLayerBytes(l);
  const token = Math.floor(offset / perToken);
  const inToken = Math.floor((offset % perToken) / l.dtypeBytes);
  const perKv = l.kvHeads * l.headDim;
  return {
    token,
    kv: inToken < perKv ? "K" : "V",
    head: Math.floor((inToken % perKv) / l.headDim),
    dim: inToken % l.headDim,
  };
}
