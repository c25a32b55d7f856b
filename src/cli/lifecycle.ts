// How every serving command ends. Signals are caught from before the command starts (a
// SIGTERM that arrives between the readiness line and the end of start-up must not kill
// the process with the default action); one during start-up aborts `startup` (a start-up
// that waits, e.g. for an unreachable metadata backend, gives up), a second exits at once;
// once the command serves, the first SIGTERM
// or SIGINT runs its `stop` (drain, close) and resolves the exit code — 0 after a clean
// stop, 1 if stopping failed; a second signal while stopping exits 1 at once.
import { readFileSync } from "node:fs";
import type { Logger } from "pino";

/** How often a command started by npm checks that npm is still there. */
const LAUNCHER_CHECK_MS = 1_000;

/**
 * A command started by `npx kvferry …` or `npm run …` runs as npm → sh → node, and a signal
 * sent to npm's pid does not reach node: npm passes it to the shell, which dies of it and
 * leaves node running, orphaned. So a command that npm itself started (its parent or the
 * parent's parent is npm) stops as if it had been sent SIGTERM when its parent goes.
 * Nothing else is watched: a parent may go on purpose (`nohup kvferry daemon &` from a
 * shell that exits), and npm's variables alone say nothing (every process under `npx
 * vitest` has them).
 */
export function stopWithNpm(say: (message: string) => void): void {
  const launcher = process.env.npm_command;
  if (launcher === undefined) return;
  const parent = process.ppid;
  const grandparent = parentOf(parent);
  if (!isNpm(parent) && (grandparent === undefined || !isNpm(grandparent))) return;
  const timer = setInterval(() => {
    if (process.ppid === parent) return;
    clearInterval(timer);
    say(`the npm ${launcher} process that started this one is gone: stopping as on SIGTERM`);
    process.kill(process.pid, "SIGTERM");
  }, LAUNCHER_CHECK_MS);
  timer.unref();
}

/** npm names its process "npm <command> …" (Linux /proc; false where that cannot be read). */
function isNpm(pid: number): boolean {
  try {
    return readFileSync(`/proc/${pid}/comm`, "utf8").startsWith("npm ");
  } catch {
    return false;
  }
}

function parentOf(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // "pid (comm) state ppid …": comm may hold spaces and parentheses.
    const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
    return Number.isInteger(ppid) && ppid > 0 ? ppid : undefined;
  } catch {
    return undefined;
  }
}

export class ShutdownSignals {
  /** A signal that came before until() was called. */
  #early: NodeJS.Signals | undefined;
  #onSignal: ((signal: NodeJS.Signals) => void) | undefined;
  readonly #startup = new AbortController();
  readonly #handler = (signal: NodeJS.Signals) => {
    if (this.#onSignal) return this.#onSignal(signal);
    if (this.#early !== undefined) {
      this.log.warn({ signal }, "second signal during start-up: exiting at once");
      process.exit(1);
    }
    this.#early = signal;
    this.log.info({ signal }, "signal during start-up: stopping once started");
    this.#startup.abort(new Error(`interrupted by ${signal} during start-up`));
  };

  /** Aborted by the first signal before the command serves: long start-up waits give up on it. */
  get startup(): AbortSignal {
    return this.#startup.signal;
  }

  constructor(private readonly log: Logger) {
    process.on("SIGTERM", this.#handler);
    process.on("SIGINT", this.#handler);
    stopWithNpm((message) => log.warn(message));
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
