// Load-balancing policies: which healthy instance of a role serves the next request.
//
// A policy sees only the healthy candidates (in their configured order) and their
// in-flight counts; it keeps its own rotation so that equal choices are spread out.
// One policy object per role, so prefill and decode rotate independently.
import type { PolicyName } from "./config.js";

/** What a policy needs to know of an instance. */
export interface Candidate {
  /** Requests in flight on it now. */
  readonly outstanding: number;
}

export interface Policy {
  readonly name: PolicyName;
  /** One of the candidates, or undefined when there are none. */
  pick<T extends Candidate>(candidates: readonly T[]): T | undefined;
}

/** Each candidate in turn. */
export class RoundRobin implements Policy {
  readonly name = "round-robin";
  #next = 0;

  pick<T extends Candidate>(candidates: readonly T[]): T | undefined {
    if (candidates.length === 0) return undefined;
    return candidates[this.#next++ % candidates.length];
  }
}

/** The candidate with the fewest requests in flight; ties are taken in turn. */
export class LeastOutstanding implements Policy {
  readonly name = "least-outstanding";
  #next = 0;

  pick<T extends Candidate>(candidates: readonly T[]): T | undefined {
    if (candidates.length === 0) return undefined;
    let least = Infinity;
    for (const c of candidates) least = Math.min(least, c.outstanding);
    const ties = candidates.filter((c) => c.outstanding === least);
    return ties[this.#next++ % ties.length];
  }
}

export function createPolicy(name: PolicyName): Policy {
  return name === "round-robin" ? new RoundRobin() : new LeastOutstanding();
}
