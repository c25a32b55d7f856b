// Starts a `kvferry <command>` as a child process and waits for its readiness log line
// (a JSON line whose msg is `ready`, with the bound address in `listen`). Every command
// that serves — daemon, simulate, proxy, metadata-server — logs such a line, so one
// launcher serves the demo, the tests and the benchmarks: real processes, learned ports.
import { spawn, type ChildProcess } from "node:child_process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

export const BIN = fileURLToPath(new URL("../../bin/kvferry.js", import.meta.url));

export interface SpawnedService {
  readonly child: ChildProcess;
  /** The port in the readiness line's `listen`. */
  readonly port: number;
  /** "127.0.0.1:PORT". */
  readonly address: string;
  /** The readiness line itself (other addresses a command reports live there). */
  readonly ready: Record<string, unknown>;
  /** Every JSON log line so far. */
  readonly logs: Record<string, unknown>[];
  /** What it wrote to stderr so far. */
  stderr(): string;
  /** SIGTERM, then waits for the exit code (SIGKILL after killAfterMs). */
  stop(killAfterMs?: number): Promise<number | null>;
  readonly exited: Promise<number | null>;
}

export interface SpawnOptions {
  env?: NodeJS.ProcessEnv;
  /** How long to wait for the readiness line (default 10 s). */
  startTimeoutMs?: number;
  /** Extra node flags, e.g. ["--cpu-prof"] for profiling. */
  nodeArgs?: string[];
  /** Told of the child as soon as it exists (before it is ready), e.g. to stop it on any exit path. */
  onSpawn?: (child: ChildProcess) => void;
}

/** Runs `kvferry <command> ...args` and resolves once it logs `ready`. */
export function spawnService(command: string, args: string[], ready: string, options: SpawnOptions = {}): Promise<SpawnedService> {
  const child = spawn(process.execPath, [...(options.nodeArgs ?? []), BIN, command, ...args], {
    env: { ...process.env, NO_PRETTY: "1", ...options.env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  options.onSpawn?.(child);
  const logs: Record<string, unknown>[] = [];
  let stderr = "";
  child.stderr!.on("data", (d) => (stderr += d));
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  const startTimeoutMs = options.startTimeoutMs ?? 10_000;

  return new Promise<SpawnedService>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`kvferry ${command} did not start within ${startTimeoutMs} ms; stderr: ${stderr}`));
    }, startTimeoutMs);
    // Reported at "close", when its last log lines have been read; or half a second after
    // "exit" if something it started still holds its pipes open.
    const closed = new Promise<void>((resolve) => child.once("close", () => resolve()));
    exited.then(async (code) => {
      await Promise.race([closed, new Promise((resolve) => setTimeout(resolve, 500).unref())]);
      clearTimeout(timer);
      // Its own account (the last error it logged) first, then whatever else it wrote.
      const fatal = [...logs].reverse().find((r) => Number(r.level) >= 50);
      const why = fatal === undefined ? "" : ` (${(fatal.err as { message?: string } | undefined)?.message ?? fatal.msg})`;
      reject(new Error(`kvferry ${command} exited with code ${code} before serving${why}; stderr: ${stderr.trim()}`));
    });
    createInterface({ input: child.stdout! }).on("line", (line) => {
      let rec: Record<string, unknown>;
      try {
        rec = JSON.parse(line);
      } catch {
        return;
      }
      logs.push(rec);
      if (rec.msg !== ready) return;
      clearTimeout(timer);
      const port = Number(String(rec.listen).split(":").pop());
      const stop = async (killAfterMs = 15_000) => {
        if (child.exitCode !== null || child.signalCode !== null) return child.exitCode;
        child.kill("SIGTERM");
        const kill = setTimeout(() => child.kill("SIGKILL"), killAfterMs);
        const code = await exited;
        clearTimeout(kill);
        return code;
      };
      resolve({ child, port, address: `127.0.0.1:${port}`, ready: rec, logs, stderr: () => stderr, stop, exited });
    });
  });
}
