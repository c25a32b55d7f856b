// How every serving command ends. Signals are caught from before the command starts (a
// SIGTERM that arrives between the readiness line and the end of start-up must not kill
// the process with the default action), and acted on once it serves: the first SIGTERM
// or SIGINT runs its `stop` (drain, close) and resolves the exit code — 0 after a clean
// stop, 1 if stopping failed; a second signal while stopping exits 1 at once.
import type { Logger } from "pino";

export class ShutdownSignals {
  /** A signal that came before until() was called. */
  #early: NodeJS.Signals | undefined;
  #onSignal: ((signal: NodeJS.Signals) => void) | undefined;
  readonly #handler = (signal: NodeJS.Signals) => {
    if (this.#onSignal) this.#onSignal(signal);
    else this.#early ??= signal;
  };

  constructor(private readonly log: Logger) {
    process.on("SIGTERM", this.#handler);
    process.on("SIGINT", this.#handler);
  }

  /** Serves until the first signal (or at once, if one came already), then stops. */
  until(stop: () => Promise<void>): Promise<number> {
    return new Promise<number>((resolve) => {
      let signals = 0;
      this.#onSignal = (signal) => {
        signals++;
        if (signals > 1) {
          this.log.warn({ signal }, "second signal: exiting without draining");
          process.exit(1);
        }
        this.log.info({ signal }, "shutting down");
        stop().then(
          () => {
            this.dispose();
            this.log.info("stopped");
            resolve(0);
          },
          (err) => {
            this.log.error({ err }, "shutdown failed");
            resolve(1);
          },
        );
      };
      if (this.#early !== undefined) this.#onSignal(this.#early);
    });
  }

  /** Stops catching signals (a command that could not start). */
  dispose(): void {
    process.off("SIGTERM", this.#handler);
    process.off("SIGINT", this.#handler);
  }
}
