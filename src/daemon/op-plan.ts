// The engine ops of one step of a batch transfer, remembered by entry: an op that fails
// fails its entry, and a batch the engine refuses fails every entry of it.
import { DeadlineExceededError } from "../errors.js";
import type { OpSpec, TransferEngine } from "../engine/transfer-engine.js";

/** Where an entry's failure is recorded; an entry keeps its first error. */
export interface Failures {
  fail(transferId: string, error: unknown): void;
}

/** The ops of a batch, remembered by entry so failures map back to entries. */
export class OpPlan {
  readonly #ops: OpSpec[] = [];
  readonly #owners: string[] = [];

  add(transferId: string, op: OpSpec): void {
    this.#ops.push(op);
    this.#owners.push(transferId);
  }

  /**
   * Runs every op to its terminal completion; an entry whose op failed fails in `out`
   * (its first error). When nothing could be moved — the engine refused the batch, or the
   * deadline had passed — every entry of `all` fails with that.
   */
  async run(engine: TransferEngine, peer: string, deadlineAt: number, out: Failures, all: Iterable<string>): Promise<void> {
    if (this.#ops.length === 0) return;
    let results: Awaited<ReturnType<TransferEngine["run"]>>;
    try {
      results = await engine.run(peer, this.#ops, remaining(deadlineAt));
    } catch (err) {
      for (const id of all) out.fail(id, err);
      return;
    }
    results.forEach((r, i) => {
      if (r.error) out.fail(this.#owners[i]!, r.error); // fail() keeps an entry's first error
    });
  }
}

/** Milliseconds left until `deadlineAt`; none left is DEADLINE_EXCEEDED. */
export function remaining(deadlineAt: number): number {
  const left = deadlineAt - Date.now();
  if (left <= 0) throw new DeadlineExceededError("the transfer's deadline passed");
  return left;
}

