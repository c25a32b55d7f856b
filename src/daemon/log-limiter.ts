// A complaint about one peer logged at most once a minute: peers retry every few seconds,
// and an operator needs the first report, not a line per retry.
const EVERY_MS = 60_000;
/** Peers remembered at most (then forgotten all at once). */
const MAX_KEYS = 1024;

export class LogLimiter {
  readonly #at = new Map<string, number>();

  /** Runs `log` unless it ran for `key` within the last minute. */
  report(key: string, log: () => void): void {
    const now = Date.now();
    if (now - (this.#at.get(key) ?? -Infinity) < EVERY_MS) return;
    if (this.#at.size >= MAX_KEYS) this.#at.clear();
    this.#at.set(key, now);
    log();
  }
}
