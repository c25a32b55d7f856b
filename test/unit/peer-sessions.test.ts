// The peer API server's session table with a controlled clock: one try per challenge,
// challenges and sessions bounded apart, idle and lifetime expiry, the replay window.
import { describe, expect, it } from "vitest";
import { InvalidArgumentError, PermissionDeniedError, UnauthenticatedError } from "../../src/errors.js";
import { PEER_API_PURPOSE, bodyDigest, callMac, clientProof, newNonce, purposeKey, serverProof, sessionKey } from "../../src/daemon/peer-auth.js";
import { PeerSessions, REPLAY_WINDOW, type SessionLimits } from "../../src/daemon/peer-sessions.js";

const K = purposeKey("unit-token", PEER_API_PURPOSE);
const LIMITS: SessionLimits = { maxPending: 4, pendingTtlMs: 1_000, maxSessions: 3, idleMs: 5_000, lifetimeMs: 20_000 };
const PATH = "/kvferry.v1.KvFerryPeer/Hello";
const BODY = bodyDigest(Buffer.from("hello"));

function table() {
  let now = 1_000_000;
  const sessions = new PeerSessions(K, LIMITS, () => now);
  return { sessions, advance: (ms: number) => (now += ms) };
}

/** A full handshake as an honest caller makes it; returns the session and a signer of calls. */
function authenticate(sessions: PeerSessions) {
  const nc = newNonce();
  const c = sessions.open(nc);
  expect(c.serverProof.equals(serverProof(K, nc, c.serverNonce))).toBe(true);
  sessions.confirm(c.sessionId, clientProof(K, nc, c.serverNonce));
  const s = sessionKey(K, nc, c.serverNonce);
  const call = (n: number) => sessions.verify(c.sessionId, String(n), callMac(s, PATH, n, BODY).toString("hex"), PATH, BODY);
  return { id: c.sessionId, call };
}

describe("peer sessions", () => {
  it("refuses a nonce that is not 32 bytes, a wrong proof, and a second answer to one challenge", () => {
    const { sessions } = table();
    expect(() => sessions.open(Buffer.alloc(31))).toThrow(InvalidArgumentError);
    const nc = newNonce();
    const c = sessions.open(nc);
    expect(() => sessions.confirm(c.sessionId, clientProof(purposeKey("other", PEER_API_PURPOSE), nc, c.serverNonce))).toThrow(PermissionDeniedError);
    expect(() => sessions.confirm(c.sessionId, clientProof(K, nc, c.serverNonce))).toThrow(UnauthenticatedError);
  });

  it("a server's proof is no client proof (the labels differ)", () => {
    const { sessions } = table();
    const nc = newNonce();
    const c = sessions.open(nc);
    expect(() => sessions.confirm(c.sessionId, serverProof(K, c.serverNonce, nc))).toThrow(PermissionDeniedError);
  });

  it("keeps at most maxPending challenges (the oldest goes) and each for pendingTtlMs", () => {
    const { sessions, advance } = table();
    const first = newNonce();
    const old = sessions.open(first);
    for (let i = 0; i < LIMITS.maxPending; i++) sessions.open(newNonce());
    expect(sessions.size.pending).toBe(LIMITS.maxPending);
    expect(() => sessions.confirm(old.sessionId, clientProof(K, first, old.serverNonce))).toThrow(UnauthenticatedError);
    const nc = newNonce();
    const late = sessions.open(nc);
    advance(LIMITS.pendingTtlMs + 1);
    expect(() => sessions.confirm(late.sessionId, clientProof(K, nc, late.serverNonce))).toThrow(/expired/);
  });

  it("accepts each call counter once, within the replay window, and refuses a wrong MAC without using the counter", () => {
    const { sessions } = table();
    const s = authenticate(sessions);
    s.call(2);
    s.call(1); // out of order is fine
    expect(() => s.call(2)).toThrow(UnauthenticatedError);
    expect(() => sessions.verify(s.id, "3", "00".repeat(32), PATH, BODY)).toThrow(PermissionDeniedError);
    s.call(3);
    s.call(3 + REPLAY_WINDOW + 10);
    expect(() => s.call(4)).toThrow(/too old/);
    expect(() => sessions.verify(s.id, "0", "00".repeat(32), PATH, BODY)).toThrow(UnauthenticatedError);
  });

  it("forgets the least recently used session beyond maxSessions, an idle one after idleMs and any after lifetimeMs", () => {
    const { sessions, advance } = table();
    const all = Array.from({ length: LIMITS.maxSessions }, () => authenticate(sessions));
    all[0]!.call(1); // the first is now the most recently used
    const extra = authenticate(sessions);
    expect(() => all[1]!.call(1)).toThrow(UnauthenticatedError);
    all[0]!.call(2);
    extra.call(1);
    advance(LIMITS.idleMs + 1);
    expect(() => extra.call(2)).toThrow(/expired/);
    const young = authenticate(sessions);
    for (let t = 0; t < LIMITS.lifetimeMs; t += LIMITS.idleMs - 1) {
      young.call(t + 1);
      advance(LIMITS.idleMs - 1);
    }
    expect(() => young.call(999_999)).toThrow(/expired/);
  });
});
