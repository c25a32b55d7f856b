// A bounded memory of removed transfer ids and why they went, so that a late reader
// hears "released" or "evicted" rather than a bare "not found".
import type { RemovalReason } from "../errors.js";

export interface Removal {
  reason: RemovalReason;
  /** For "consumed": the token that confirmed it (a repeated confirmation is a no-op). */
  token?: string;
  /** For "incomplete": which part was abandoned. */
  detail?: string;
}

export class RecentlyRemoved {
  readonly #removals = new Map<string, Removal>();

  constructor(readonly limit: number) {}

  add(transferId: string, reason: RemovalReason, note: { token?: string; detail?: string } = {}): void {
    this.#removals.delete(transferId);
    this.#removals.set(transferId, { reason, ...note });
    if (this.#removals.size > this.limit) {
      // Maps iterate in insertion order: the first key is the oldest.
      this.#removals.delete(this.#removals.keys().next().value!);
    }
  }

  get(transferId: string): RemovalReason | undefined {
    return this.#removals.get(transferId)?.reason;
  }

  record(transferId: string): Removal | undefined {
    return this.#removals.get(transferId);
  }

  /** A new entry under the same id makes the old reason stale. */
  forget(transferId: string): void {
    this.#removals.delete(transferId);
  }
}
