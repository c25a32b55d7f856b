// Starts `kvferry simulate` as a child process and learns its port from its readiness log
// line, the way spawn-daemon.ts does for `kvferry daemon`. Used by the tests (and by
// anything that wants a simulated engine as a real process).
import { spawn, type ChildProcess } from "node:child_process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

const BIN = fileURLToPath(new URL("../../bin/kvferry.js", import.meta.url));

/** The message of the simulator's readiness line; its `listen` field is the bound address. */
export const SIMULATOR_SERVING = "kvferry simulator serving";

export interface SpawnedSimulator {
  readonly child: ChildProcess;
  readonly port: number;
  /** "127.0.0.1:PORT". */
  readonly address: string;
  /** "http://127.0.0.1:PORT". */
  readonly url: string;
  /** Every JSON log line so far. */
  readonly logs: Record<string, unknown>[];
  /** What it wrote to stderr so far. */
  stderr(): string;
  /** SIGTERM, then waits for the exit code (SIGKILL after killAfterMs). */
  stop(killAfterMs?: number): Promise<number | null>;
  readonly exited: Promise<number | null>;
}

export interface SpawnSimulatorOptions {
  env?: NodeJS.ProcessEnv;
  /** How long to wait for the readiness line (default 10 s). */
  startTimeoutMs?: number;
}

/** Runs `kvferry simulate ...args` (add `--listen 127.0.0.1:0` for a free port). */
export function spawnSimulator(args: string[], options: SpawnSimulatorOptions = {}): Promise<SpawnedSimulator> {
  const child = spawn(process.execPath, [BIN, "simulate", ...args], {
    env: { ...process.env, NO_PRETTY: "1", ...options.env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const logs: Record<string, unknown>[] = [];
  let stderr = "";
  child.stderr!.on("data", (d) => (stderr += d));
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  const startTimeoutMs = options.startTimeoutMs ?? 10_000;

  return new Promise<SpawnedSimulator>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`simulator did not start within ${startTimeoutMs} ms; stderr: ${stderr}`));
    }, startTimeoutMs);
    exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`simulator exited with code ${code} before serving; stderr: ${stderr.trim()}`));
    });
    createInterface({ input: child.stdout! }).on("line", (line) => {
      let rec: Record<string, unknown>;
      try {
        rec = JSON.parse(line);
      } catch {
        return;
      }
      logs.push(rec);
      if (rec.msg !== SIMULATOR_SERVING) return;
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
      resolve({
        child, port, address: `127.0.0.1:${port}`, url: `http://127.0.0.1:${port}`, logs, stderr: () => stderr, stop, exited,
      });
    });
  });
}
