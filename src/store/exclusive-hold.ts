// An exclusive hold on an entry: the one consuming Get, or the one transfer moving the
// entry to another daemon. While an entry is held nobody else gets a lease on it; they
// wait for the outcome.
//
// Lifecycle (one way only):
//   reading ──the bytes went out (consume)──▶ delivered
//   reading | delivered ──confirmed (consume) | moved (move)──▶ dropped   (the entry goes)
//   reading | delivered ──call failed | lease lapsed──▶ returned          (readable again)
// A consume hold carries a lease: it returns by itself when its reader has not confirmed
// in time, so a reply lost to a deadline or a dead client never loses the entry.
import { randomBytes } from "node:crypto";

export type HoldPurpose = "consume" | "move";
export type HoldState = "reading" | "delivered" | "dropped" | "returned";
/** Why a hold was given back. */
export type ReturnCause = "failed" | "lapsed";

/** The most, and the default, a consume hold lasts unconfirmed. */
export const DEFAULT_CONSUME_LEASE_MS = 30_000;

export class ExclusiveHold {
  state: HoldState = "reading";
  /**
   * What the consumer confirms with; unguessable, so only the reader that got it can.
   * Only a consume hold has one ("" for a move, which nobody confirms).
   */
  readonly token: string;
  readonly startedAtMs: number;
  timer: NodeJS.Timeout | undefined;
  // Made when first asked for: a move hold (one per entry of a batch transfer) never is.
  #lapse: AbortController | undefined;
  /** It ended by running out: a `lapsed` asked for later is already aborted. */
  #lapsedOut = false;

  constructor(readonly purpose: HoldPurpose, readonly leaseMs: number | undefined, now: number) {
    this.startedAtMs = now;
    this.token = purpose === "consume" ? randomBytes(18).toString("base64url") : "";
  }

  get ended(): boolean {
    return this.state === "dropped" || this.state === "returned";
  }

  /** Aborts when the hold lapsed unconfirmed (the entry was given back to others). */
  get lapsed(): AbortSignal {
    this.#lapse ??= new AbortController();
    if (this.#lapsedOut) this.#lapse.abort();
    return this.#lapse.signal;
  }

  /** Ends the hold; `lapsed` fires when it ran out. */
  end(state: "dropped" | "returned", cause?: ReturnCause): void {
    if (this.ended) return;
    this.state = state;
    clearTimeout(this.timer);
    this.timer = undefined;
    if (cause === "lapsed") {
      this.#lapsedOut = true;
      this.#lapse?.abort();
    }
  }


  /** What a Get that finds the entry held is told. */
  describe(transferId: string): string {
    return this.purpose === "consume"
      ? `entry ${transferId} is being consumed by another reader and its outcome is not known yet`
      : `entry ${transferId} is being moved to another daemon and its outcome is not known yet`;
  }
}
