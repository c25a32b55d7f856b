// The peer API server's sessions: challenge → proven → forgotten.
//
//   OpenSession     a pending challenge: nonce_c, nonce_s; lives PENDING_TTL_MS, one try
//   ConfirmSession  proof right → an authenticated session (session key S); wrong → gone
//   each call       session id + counter + MAC under S; the counter is accepted once
//   forgotten       idle for IDLE_MS, older than LIFETIME_MS, or the least recently used
//                   when MAX_SESSIONS are held; the caller then authenticates again
//
// Pending challenges and sessions are bounded apart: anyone may open challenges (the
// oldest is dropped when MAX_PENDING are open), only token holders create sessions.
import { randomBytes } from "node:crypto";
import { InvalidArgumentError, PermissionDeniedError, UnauthenticatedError } from "../errors.js";
import { COUNTER_METADATA, MAC_METADATA, NONCE_BYTES, callMac, clientProof, newNonce, sameProof, serverProof, sessionKey } from "./peer-auth.js";

export interface SessionLimits {
  maxPending: number;
  pendingTtlMs: number;
  maxSessions: number;
  idleMs: number;
  lifetimeMs: number;
}

export const DEFAULT_SESSION_LIMITS: SessionLimits = {
  maxPending: 1024,
  pendingTtlMs: 10_000,
  maxSessions: 4096,
  idleMs: 10 * 60_000,
  lifetimeMs: 60 * 60_000,
};

/** A call counter at most this far below the highest seen is still accepted (once). */
export const REPLAY_WINDOW = 4096;

interface Pending {
  clientNonce: Buffer;
  serverNonce: Buffer;
  at: number;
}

interface Session {
  key: Buffer;
  createdAt: number;
  usedAt: number;
  /** The highest counter accepted, and the counters accepted within REPLAY_WINDOW of it. */
  high: number;
  seen: Set<number>;
}

export interface Challenge {
  sessionId: string;
  serverNonce: Buffer;
  serverProof: Buffer;
}

const SESSION_ID = /^[0-9a-f]{32}$/;
const COUNTER = /^[1-9][0-9]{0,15}$/;

export class PeerSessions {
  /** Both in insertion order: pending by age, sessions by last use (re-inserted on use). */
  readonly #pending = new Map<string, Pending>();
  readonly #sessions = new Map<string, Session>();

  constructor(
    private readonly k: Buffer,
    readonly limits: SessionLimits = DEFAULT_SESSION_LIMITS,
    private readonly now: () => number = Date.now,
  ) {}

  get size(): { pending: number; sessions: number } {
    return { pending: this.#pending.size, sessions: this.#sessions.size };
  }

  /** OpenSession: answers a caller's nonce with ours and our proof. */
  open(clientNonce: Uint8Array): Challenge {
    if (clientNonce.length !== NONCE_BYTES) {
      throw new InvalidArgumentError("client_nonce", `must be ${NONCE_BYTES} random bytes, got ${clientNonce.length}`);
    }
    const now = this.now();
    for (const [id, p] of this.#pending) {
      if (now - p.at <= this.limits.pendingTtlMs && this.#pending.size < this.limits.maxPending) break;
      this.#pending.delete(id); // expired, or the oldest of too many
    }
    const sessionId = randomBytes(16).toString("hex");
    const serverNonce = newNonce();
    const nonceC = Buffer.from(clientNonce);
    this.#pending.set(sessionId, { clientNonce: nonceC, serverNonce, at: now });
    return { sessionId, serverNonce, serverProof: serverProof(this.k, nonceC, serverNonce) };
  }

  /**
   * ConfirmSession: the caller's proof. One try per challenge.
   * @throws UnauthenticatedError for an unknown or expired challenge
   * @throws PermissionDeniedError for a wrong proof
   */
  confirm(sessionId: string, proof: Uint8Array): void {
    const pending = this.#pending.get(sessionId);
    if (pending === undefined) throw new UnauthenticatedError("session_id: no such challenge (expired, or already answered): call OpenSession again");
    this.#pending.delete(sessionId);
    const now = this.now();
    if (now - pending.at > this.limits.pendingTtlMs) throw new UnauthenticatedError(`session_id: the challenge expired (answer within ${this.limits.pendingTtlMs} ms): call OpenSession again`);
    if (!sameProof(proof, clientProof(this.k, pending.clientNonce, pending.serverNonce))) {
      throw new PermissionDeniedError("client_proof: wrong proof of the cluster token");
    }
    while (this.#sessions.size >= this.limits.maxSessions) {
      this.#sessions.delete(this.#sessions.keys().next().value!); // least recently used
    }
    this.#sessions.set(sessionId, {
      key: sessionKey(this.k, pending.clientNonce, pending.serverNonce),
      createdAt: now,
      usedAt: now,
      high: 0,
      seen: new Set(),
    });
  }

  /**
   * Accepts one call of an authenticated session, or throws: metadata values as given.
   * @throws UnauthenticatedError without a usable session or with a counter already used
   * @throws PermissionDeniedError for a wrong MAC
   */
  verify(sessionId: string | undefined, counter: string | undefined, mac: string | undefined, path: string, body: Buffer): void {
    if (sessionId === undefined || !SESSION_ID.test(sessionId)) {
      throw new UnauthenticatedError("this peer API needs a session: authenticate with OpenSession and ConfirmSession");
    }
    const now = this.now();
    const s = this.#sessions.get(sessionId);
    if (s === undefined || now - s.usedAt > this.limits.idleMs || now - s.createdAt > this.limits.lifetimeMs) {
      if (s !== undefined) this.#sessions.delete(sessionId);
      throw new UnauthenticatedError("unknown or expired session: authenticate again");
    }
    if (counter === undefined || !COUNTER.test(counter) || mac === undefined || !/^[0-9a-f]{64}$/.test(mac)) {
      throw new UnauthenticatedError(`a session's call needs ${COUNTER_METADATA} (a counter from 1) and ${MAC_METADATA} (64 hex digits)`);
    }
    const n = Number(counter);
    if (!sameProof(Buffer.from(mac, "hex"), callMac(s.key, path, n, body))) {
      throw new PermissionDeniedError("wrong call MAC for this session");
    }
    if (n <= s.high - REPLAY_WINDOW || s.seen.has(n)) {
      throw new UnauthenticatedError(`call counter ${n} already used or too old in this session: authenticate again`);
    }
    s.seen.add(n);
    if (n > s.high) s.high = n;
    if (s.seen.size > 2 * REPLAY_WINDOW) {
      for (const c of s.seen) if (c <= s.high - REPLAY_WINDOW) s.seen.delete(c);
    }
    s.usedAt = now;
    this.#sessions.delete(sessionId);
    this.#sessions.set(sessionId, s);
  }
}
