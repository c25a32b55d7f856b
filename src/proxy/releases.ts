// Freeing the transfer ids that requests, and the attempts they gave up on, may have left
// on daemons.
//
// Nothing here is ever awaited by a client's answer. Each (transfer id, daemon) is
// released at once; NOT_FOUND (nothing there: the usual answer after a decode consumed
// the KV) ends it. A release that fails (the daemon is down or slow) is tried again after
// each of retryDelaysMs (4 tries by default, 0.5, 2 and 5 s apart), then given up with a
// warning: the entry's lease (the daemon's --lease-ttl-ms) expires it. An id of something
// that failed is released once more a little later (lateReleaseMs), for KV stored after
// the proxy gave up on it (an engine that answered too late, a put the daemon was still
// taking in). At shutdown the waits are cut short: late releases and pending retries run
// at once, each bounded by shutdownTimeoutMs, and settle() resolves when every one has ended.
import type { Logger } from "pino";
import type { DaemonLink } from "./daemons.js";
import type { ProxyMetrics } from "./metrics.js";

/** How what left the id ended: a request that succeeded, or a request or attempt that failed. */
export type ReleaseAfter = "ok" | "failed";

/** How releases are tried; the defaults are the proxy's. */
export interface ReleasePolicy {
  /** When the second, late release of what failed happens. */
  lateReleaseMs: number;
  /** How long one release call may take. */
  timeoutMs: number;
  /** How long each release call at shutdown may take. */
  shutdownTimeoutMs: number;
  /** The pauses before the second, third, ... try: one try more than pauses in all. */
  retryDelaysMs: readonly number[];
}

export const DEFAULT_RELEASE_POLICY: ReleasePolicy = {
  lateReleaseMs: 10_000,
  timeoutMs: 5000,
  shutdownTimeoutMs: 2000,
  retryDelaysMs: [500, 2000, 5000],
};

export class Releaser {
  /** Release runs not ended yet. */
  readonly #running = new Set<Promise<void>>();
  /** Late releases not yet due: each runs its release now when called. */
  readonly #late = new Set<() => void>();
  /** Pauses between tries: each ends when called. */
  readonly #pauses = new Set<() => void>();
  #stopping = false;

  constructor(
    private readonly metrics: ProxyMetrics,
    private readonly policy: ReleasePolicy = DEFAULT_RELEASE_POLICY,
  ) {}

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
    const timer = setTimeout(fire, this.policy.lateReleaseMs);
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
      const r = await daemon.release(transferId, this.#stopping ? this.policy.shutdownTimeoutMs : this.policy.timeoutMs);
      this.metrics.releases.inc({ after, result: r.result });
      const fields = { daemon: daemon.address };
      if (r.result === "released") {
        if (after === "ok") log.debug(fields, "released a transfer id the engines left behind");
        else log.info(fields, "released the transfer id of a failed request");
        return;
      }
      if (r.result === "absent") return;
      const delays = this.policy.retryDelaysMs;
      if (tries > delays.length || this.#stopping) {
        log.warn({ ...fields, tries, err: r.error }, "gave up releasing a transfer id: the daemon's lease will expire the entry");
        return;
      }
      log.debug({ ...fields, tries, err: r.error }, "release failed: trying again");
      await this.#pause(delays[tries - 1]!);
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
