// Starts `kvferry daemon` as a child process and learns its port from its first log
// lines. Used by the demo, the integration tests and the benchmarks: real processes.
import { spawn, type ChildProcess } from "node:child_process";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";

const BIN = fileURLToPath(new URL("../../bin/kvferry.js", import.meta.url));

export interface SpawnedDaemon {
  readonly child: ChildProcess;
  readonly port: number;
  readonly address: string;
  /** The peer API's address (what another daemon's BatchTransfer names as target). */
  readonly peerAddress: string;
  /** The native data plane's address. */
  readonly dataAddress: string;
  /** Every log line so far (JSON objects). */
  readonly logs: Record<string, unknown>[];
  /** SIGTERM, then waits for the exit code (SIGKILL after killAfterMs). */
  stop(killAfterMs?: number): Promise<number | null>;
  exited: Promise<number | null>;
}

export interface SpawnOptions {
  env?: NodeJS.ProcessEnv;
  /** How long to wait for "serving". */
  startTimeoutMs?: number;
  /** Extra node flags, e.g. ["--cpu-prof"] for profiling. */
  nodeArgs?: string[];
}

/** Runs `kvferry daemon ...args` (add `--listen 127.0.0.1:0` for a free port). */
export function spawnDaemon(args: string[], options: SpawnOptions = {}): Promise<SpawnedDaemon> {
  const child = spawn(process.execPath, [...(options.nodeArgs ?? []), BIN, "daemon", ...args], {
    env: { ...process.env, NO_PRETTY: "1", ...options.env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const logs: Record<string, unknown>[] = [];
  let stderr = "";
  child.stderr!.on("data", (d) => (stderr += d));
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));

  return new Promise<SpawnedDaemon>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`daemon did not start within ${options.startTimeoutMs ?? 10000} ms; stderr: ${stderr}`));
    }, options.startTimeoutMs ?? 10000);
    exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`daemon exited with code ${code} before serving; stderr: ${stderr.trim()}`));
    });
    createInterface({ input: child.stdout! }).on("line", (line) => {
      let rec: Record<string, unknown>;
      try {
        rec = JSON.parse(line);
      } catch {
        return;
      }
      logs.push(rec);
      if (rec.msg === "kvferry daemon serving") {
        clearTimeout(timer);
        const port = Number(String(rec.listen).split(":").pop());
        const stop = async (killAfterMs = 15000) => {
          if (child.exitCode !== null || child.signalCode !== null) return child.exitCode;
          child.kill("SIGTERM");
          const kill = setTimeout(() => child.kill("SIGKILL"), killAfterMs);
          const code = await exited;
          clearTimeout(kill);
          return code;
        };
        resolve({
          child, port, address: `127.0.0.1:${port}`, peerAddress: String(rec.peer), dataAddress: String(rec.data),
          logs, stop, exited,
        });
      }
    });
  });
}
