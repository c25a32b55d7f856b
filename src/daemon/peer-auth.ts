// The peer API's proof of the cluster token: derivations shared by the caller (peers.ts)
// and the server (peer-sessions.ts). The token itself is only ever an HMAC key.
//
//   K            = HMAC(token, "kvferry/v1 " + purpose)         purpose "peer-api" here
//   server proof = HMAC(K, "server" || nonce_c || nonce_s)
//   client proof = HMAC(K, "client" || nonce_s || nonce_c)
//   session key  = HMAC(K, "session" || nonce_c || nonce_s)
//   call MAC     = HMAC(S, "call" || u32be(len(path)) || path || u64be(counter) || sha256(request))
//
// Nonces are exactly NONCE_BYTES long, so the concatenations cannot be read two ways; the
// labels differ so that no proof serves as another (a server's proof is no client proof).
// The native data plane derives its own K with the purpose "data-plane".
import { createHash, createHmac, randomBytes, timingSafeEqual } from "node:crypto";

export const PEER_API_PURPOSE = "peer-api";
export const NONCE_BYTES = 32;
export const PROOF_BYTES = 32;

/** The metadata entries of an authenticated call (see proto/kvferry/v1/peer.proto). */
export const SESSION_METADATA = "kvferry-session";
export const COUNTER_METADATA = "kvferry-call";
export const MAC_METADATA = "kvferry-mac";

const hmac = (key: Uint8Array, ...parts: Uint8Array[]): Buffer => {
  const h = createHmac("sha256", key);
  for (const p of parts) h.update(p);
  return h.digest();
};
const label = (s: string) => Buffer.from(s, "ascii");

/** K for `purpose`: what both ends of one kind of connection prove they know. */
export function purposeKey(token: string, purpose: string): Buffer {
  return hmac(Buffer.from(token, "utf8"), label(`kvferry/v1 ${purpose}`));
}

export function newNonce(): Buffer {
  return randomBytes(NONCE_BYTES);
}

export function serverProof(k: Buffer, clientNonce: Uint8Array, serverNonce: Uint8Array): Buffer {
  return hmac(k, label("server"), clientNonce, serverNonce);
}

export function clientProof(k: Buffer, clientNonce: Uint8Array, serverNonce: Uint8Array): Buffer {
  return hmac(k, label("client"), serverNonce, clientNonce);
}

export function sessionKey(k: Buffer, clientNonce: Uint8Array, serverNonce: Uint8Array): Buffer {
  return hmac(k, label("session"), clientNonce, serverNonce);
}

/** sha256 of a serialized request: what a call MAC binds the request's contents by. */
export function bodyDigest(serialized: Uint8Array): Buffer {
  return createHash("sha256").update(serialized).digest();
}

export function callMac(s: Buffer, path: string, counter: number, body: Buffer): Buffer {
  const p = Buffer.from(path, "utf8");
  const len = Buffer.alloc(4);
  len.writeUInt32BE(p.length);
  const ctr = Buffer.alloc(8);
  ctr.writeBigUInt64BE(BigInt(counter));
  return hmac(s, label("call"), len, p, ctr, body);
}

/** Constant-time comparison of a proof or MAC with the expected one (any length given). */
export function sameProof(given: Uint8Array, expected: Buffer): boolean {
  return given.length === expected.length && timingSafeEqual(given, expected);
}
