// `kvferry metadata-server` as a real process (built from dist/), for the http registry's
// tests: started on a given port, killed as in a crash, and started again on the same port
// (empty: it keeps everything in memory). Also the raw protocol calls a test checks with.
import { spawn } from "node:child_process";
import { expect } from "vitest";
import { BIN, spawnService, type SpawnedService } from "../../src/launch/spawn-service.js";

/** How long the flag-error runs may take: a bound on a hang, generous for a busy machine. */
const RUN_TIMEOUT_MS = 60_000;

export interface MetadataServerProcess {
  readonly port: number;
  /** "http://127.0.0.1:PORT/PATH", as its "serving" line says. */
  readonly url: string;
  /** SIGTERM; resolves to the exit code. */
  stop(): Promise<number | null>;
  /** SIGKILL, as in a crash; resolves once gone. */
  kill(): Promise<void>;
  /** Starts again on the same port, empty (after stop() or kill()). */
  restart(): Promise<void>;
}

const launch = (args: string[]): Promise<SpawnedService> => spawnService("metadata-server", args, "kvferry metadata-server serving");

/**
 * Runs `kvferry metadata-server ...args` and waits for its "serving" line. restart() runs
 * it again with the same arguments, on the port it had (pick one below the ephemeral
 * range with freePort() if it is to be restarted: "127.0.0.1:0" may be taken meanwhile).
 */
export async function spawnMetadataServer(args: string[]): Promise<MetadataServerProcess> {
  let current = await launch(args);
  const { port } = current;
  const url = String(current.ready.url);
  const listen = ["--listen", `127.0.0.1:${port}`];
  const again = args.flatMap((arg, i) => (arg === "--listen" || args[i - 1] === "--listen" ? [] : [arg]));
  return {
    port,
    url,
    stop: () => current.stop(),
    async kill() {
      if (current.child.exitCode === null && current.child.signalCode === null) current.child.kill("SIGKILL");
      await current.exited;
    },
    async restart() {
      await current.exited;
      current = await launch([...listen, ...again]);
    },
  };
}

/** Runs `kvferry metadata-server ...args` to its exit; for the flag errors. */
export function runMetadataServer(args: string[]): Promise<{ code: number | null; stderr: string }> {
  return new Promise((resolve) => {
    const proc = spawn(process.execPath, [BIN, "metadata-server", ...args], { stdio: ["ignore", "ignore", "pipe"] });
    let stderr = "";
    proc.stderr!.on("data", (d) => (stderr += d));
    const timer = setTimeout(() => proc.kill("SIGKILL"), RUN_TIMEOUT_MS);
    proc.once("exit", (code) => {
      clearTimeout(timer);
      resolve({ code, stderr });
    });
  });
}

/** `url` with `?key=K`, as the protocol addresses a key. */
export const keyUrl = (url: string, key: string) => `${url}?key=${encodeURIComponent(key)}`;

/** GET: the value, or undefined for a 404. */
export async function rawGet(url: string, key: string): Promise<string | undefined> {
  const res = await fetch(keyUrl(url, key), { signal: AbortSignal.timeout(2_000) });
  const text = await res.text();
  if (res.status === 404) return undefined;
  expect(res.status).toBe(200);
  return text;
}

/** PUT, expecting 200. */
export async function rawPut(url: string, key: string, value: string): Promise<void> {
  const res = await fetch(keyUrl(url, key), { method: "PUT", body: value, signal: AbortSignal.timeout(2_000) });
  await res.text();
  expect(res.status).toBe(200);
}

/** The node ids in the http registry's index under `prefix` (none when it is absent). */
export const indexOf = async (url: string, prefix: string) => JSON.parse((await rawGet(url, `${prefix}nodes`)) ?? "[]") as string[];
