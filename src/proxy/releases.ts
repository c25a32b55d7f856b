// Freeing the transfer ids that requests, and the attempts they gave up on, may have left
// on daemons.
//
// Nothing here is ever awaited by a client's answer. Each (transfer id, daemon) is
// released at once; NOT_FOUND (nothing there: the usual answer after a decode consumed
// the KV) ends it. A release that fails (the daemon is down or slow) is tried again after
// RETRY_DELAYS_MS, RELEASE_TRIES times in all, then given up with a warning: the entry's
// lease (the daemon's --lease-ttl-ms) expires it. An id of something that failed is
// released once more LATE_RELEASE_MS later, for KV stored after the proxy gave up on it
// (an engine that answered too late, a put the daemon was still taking in). At shutdown
// the waits are cut short: late releases and pending retries run at once, each bounded by
// SHUTDOWN_RELEASE_MS, and settle() resolves when every one has ended.
import type { Logger } from "pino";
import type { DaemonLink } from "./daemons.js";
import type { ProxyMetrics } from "./metrics.js";

/** How what left the id ended: a request that succeeded, or a request or attempt that failed. */
export type ReleaseAfter = "ok" | "failed";

/** When the second, late release of a failed request's (or attempt's) transfer id happens. */
export const LATE_RELEASE_MS = 10_000;
/** How long one release call may take. */
const RELEASE_TIMEOUT_MS = 5000;
/** How long each release run at shutdown may take. */
const SHUTDOWN_RELEASE_MS = 2000;
/** Tries of one release (the first and the retries after a failure). */
export const RELEASE_TRIES = 4;
/** The pauses before the second, third, ... try. */
const RETRY_DELAYS_MS = [500, 2000, 5000];

export class Releaser {
  /** Release runs not ended yet. */
  readonly #running = new Set<Promise<void>>();
  /** Late releases not yet due: each runs its release now when called. */
  readonly #late = new Set<() => void>();
  /** Pauses between tries: each ends when called. */
  readonly #pauses = new Set<() => void>();
  #stopping = false;

  constructor(private readonly metrics: ProxyMetrics) {}

  /**
   * Releases `transferId` on each daemon now, retrying a failed release a bounded number
   * of times, and once more later when `after` is "failed". Never throws, never waits.
   * `log` names the transfer id.
   */
  release(transferId: string, daemons: Iterable<DaemonLink>, after: ReleaseAfter, log: Logger): void {
    const links = [...daemons];
    if (links.length === 0) return;
    this.#run(transferId, links, after, log);
    if (after === "ok" || this.#stopping) return;
    const fire = () => {
      clearTimeout(timer);
      if (!this.#late.delete(fire)) return;
      this.#run(transferId, links, after, log);
    };
    const timer = setTimeout(fire, LATE_RELEASE_MS);
    timer.unref();
    this.#late.add(fire);
  }

  /** At shutdown: runs the late releases and the pending retries now (each bounded), and waits for every release. */
  async settle(): Promise<void> {
    this.#stopping = true;
    for (const fire of [...this.#late]) fire();
    for (const end of [...this.#pauses]) end();
    await Promise.all([...this.#running]);
  }

  #run(transferId: string, daemons: DaemonLink[], after: ReleaseAfter, log: Logger): void {
    const done = Promise.all(daemons.map((d) => this.#releaseOn(d, transferId, after, log))).then(() => undefined);
    this.#running.add(done);
    void done.finally(() => this.#running.delete(done));
  }

  async #releaseOn(daemon: DaemonLink, transferId: string, after: ReleaseAfter, log: Logger): Promise<void> {
    for (let tries = 1; ; tries++) {
      const r = await daemon.release(transferId, this.#stopping ? SHUTDOWN_RELEASE_MS : RELEASE_TIMEOUT_MS);
      this.metrics.releases.inc({ after, result: r.result });
      const fields = { daemon: daemon.address };
      if (r.result === "released") {
        if (after === "ok") log.debug(fields, "released a transfer id the engines left behind");
        else log.info(fields, "released the transfer id of a failed request");
        return;
      }
      if (r.result === "absent") return;
      if (tries >= RELEASE_TRIES || this.#stopping) {
        log.warn({ ...fields, tries, err: r.error }, "gave up releasing a transfer id: the daemon's lease will expire the entry");
        return;
      }
      log.debug({ ...fields, tries, err: r.error }, "release failed: trying again");
      await this.#pause(RETRY_DELAYS_MS[Math.min(tries, RETRY_DELAYS_MS.length) - 1]!);
    }
  }

  #pause(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const end = () => {
        clearTimeout(timer);
        this.#pauses.delete(end);
        resolve();
      };
      const timer = setTimeout(end, ms);
      timer.unref();
      this.#pauses.add(end);
    });
  }
}
