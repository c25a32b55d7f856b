// A real redis-server (Debian's /usr/bin/redis-server) on a free loopback port, for the
// redis registry's tests: no persistence, so a restart comes back empty, as after a crash.
// The port is chosen below the ephemeral range (32768+) so that no client socket takes it
// while the server is down between a kill and a restart.
import { spawn, type ChildProcess } from "node:child_process";
import { createInterface } from "node:readline";
import { freePort } from "./ports.js";

export const REDIS_SERVER = "/usr/bin/redis-server";

export interface RedisServer {
  readonly port: number;
  /** "127.0.0.1:PORT" */
  readonly address: string;
  /** "redis://127.0.0.1:PORT" */
  readonly url: string;
  /** SIGTERM; resolves once the process is gone. */
  stop(): Promise<void>;
  /** SIGKILL, as in a crash; resolves once the process is gone. */
  kill(): Promise<void>;
  /** Starts again on the same port, empty (after stop() or kill()). */
  restart(): Promise<void>;
}

const START_TIMEOUT_MS = 60_000; // a bound on a hang, generous for a busy machine

/** Runs redis-server on `port` and resolves once it accepts connections. */
function launch(port: number): Promise<ChildProcess> {
  const child = spawn(
    REDIS_SERVER,
    ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--protected-mode", "no"],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  let output = "";
  return new Promise<ChildProcess>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`redis-server on port ${port} not ready within ${START_TIMEOUT_MS} ms: ${output}`));
    }, START_TIMEOUT_MS);
    child.once("error", (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`redis-server on port ${port} exited with code ${code}: ${output}`));
    });
    createInterface({ input: child.stdout! }).on("line", (line) => {
      output += `${line}\n`;
      if (line.includes("Ready to accept connections")) {
        clearTimeout(timer);
        resolve(child);
      }
    });
    child.stderr!.on("data", (d) => (output += d));
  });
}

function ended(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => child.once("exit", () => resolve()));
}

/** Starts redis-server on a free 127.0.0.1 port (another one if it loses a race for it). */
export async function startRedis(): Promise<RedisServer> {
  let port = 0;
  let child: ChildProcess | undefined;
  for (let attempt = 1; child === undefined; attempt++) {
    port = await freePort();
    try {
      child = await launch(port);
    } catch (err) {
      if (attempt >= 3) throw err;
    }
  }
  let current: ChildProcess = child;
  const signal = async (sig: NodeJS.Signals) => {
    const done = ended(current);
    current.kill(sig);
    await done;
  };
  return {
    port,
    address: `127.0.0.1:${port}`,
    url: `redis://127.0.0.1:${port}`,
    stop: () => signal("SIGTERM"),
    kill: () => signal("SIGKILL"),
    async restart() {
      await ended(current);
      current = await launch(port);
    },
  };
}
