// A bounded memory of removed transfer ids and why they went, so that a late reader
// hears "released" or "evicted" rather than a bare "not found".
import type { RemovalReason } from "../errors.js";

export class RecentlyRemoved {
  readonly #reasons = new Map<string, RemovalReason>();

  constructor(readonly limit: number) {}

  add(transferId: string, reason: RemovalReason): void {
    this.#reasons.delete(transferId);
    this.#reasons.set(transferId, reason);
    if (this.#reasons.size > this.limit) {
      // Maps iterate in insertion order: the first key is the oldest.
      this.#reasons.delete(this.#reasons.keys().next().value!);
    }
  }

  get(transferId: string): RemovalReason | undefined {
    return this.#reasons.get(transferId);
  }

  /** A new entry under the same id makes the old reason stale. */
  forget(transferId: string): void {
    this.#reasons.delete(transferId);
  }
}
