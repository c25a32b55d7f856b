// Mooncake's own transfer engine (PyPI: mooncake-transfer-engine-non-cuda) as a real client,
// one engine per Python process (mooncake-engine.py beside this file), in the virtual
// environment scripts/mooncake-venv.sh makes once and caches.
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { fileURLToPath } from "node:url";
import { jsonLines } from "./json-lines.js";

const VENV_SCRIPT = fileURLToPath(new URL("../../scripts/mooncake-venv.sh", import.meta.url));
const ENGINE_SCRIPT = fileURLToPath(new URL("./mooncake-engine.py", import.meta.url));
/** Creating the environment the first time (a download of ~60 MB and an install). */
const VENV_TIMEOUT_MS = 600_000;
/** One answer of an engine (its start included): generous for a busy 2-core machine. */
const ANSWER_TIMEOUT_MS = 30_000;
/** mooncake-venv.sh's status for "the package cannot be installed". */
const CANNOT_INSTALL = 3;

export type MooncakePython = { python: string } | { skip: string } | { error: string };

/** Runs scripts/mooncake-venv.sh: the venv's python, a reason to skip (its last line), or what went wrong. */
export function mooncakePython(): Promise<MooncakePython> {
  return new Promise((resolve) => {
    execFile("bash", [VENV_SCRIPT], { timeout: VENV_TIMEOUT_MS }, (err, stdout, stderr) => {
      if (err === null) return resolve({ python: stdout.trim() });
      if (err.code === CANNOT_INSTALL) return resolve({ skip: stderr.trim().split("\n").at(-1)! });
      resolve({ error: `scripts/mooncake-venv.sh: ${stderr.trim() || err.message}` });
    });
  });
}

export interface MooncakeEngine {
  /** Its first line: {"initialized": true, "rpc_port": N} or {"initialized": false, "rc": RC}. */
  readonly started: Record<string, unknown>;
  /** Sends a command line, resolves to its JSON answer. */
  ask(command: string): Promise<Record<string, unknown>>;
  /** What Mooncake logged so far (glog, on stderr). */
  stderr(): string;
  /** Ends its stdin (the engine's clean-up removes its records) and resolves to its exit code. */
  quit(): Promise<number | null>;
  kill(): void;
}

/**
 * Starts `mooncake-engine.py NAME METADATA_URL SIZE` and waits for its first line. Its
 * published RPC address is 127.0.0.1 (MC_TCP_BIND_ADDRESS), so its peers reach it over
 * loopback; Mooncake's own listening sockets take the wildcard address, which it does not
 * let a caller choose.
 */
export async function startMooncakeEngine(python: string, name: string, metadataUrl: string, size: number): Promise<MooncakeEngine> {
  const child: ChildProcess = spawn(python, [ENGINE_SCRIPT, name, metadataUrl, String(size)], {
    stdio: ["pipe", "pipe", "pipe"],
    env: { ...process.env, MC_TCP_BIND_ADDRESS: "127.0.0.1", PYTHONUNBUFFERED: "1" },
  });
  let stderr = "";
  child.stderr!.on("data", (d) => (stderr += d));
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  const next = jsonLines(
    child.stdout!,
    ANSWER_TIMEOUT_MS,
    (why, what) => `mooncake engine ${name}: ${why === "exited before answering" ? `exited (code ${child.exitCode}) before answering` : why} (${what}); stderr:\n${stderr}`,
  );
  const started = await next("start").catch((err: unknown) => {
    child.kill("SIGKILL");
    throw err;
  });
  return {
    started,
    ask(command) {
      child.stdin!.write(`${command}\n`);
      return next(command);
    },
    stderr: () => stderr,
    quit() {
      child.stdin!.end();
      const timer = setTimeout(() => child.kill("SIGKILL"), ANSWER_TIMEOUT_MS);
      return exited.finally(() => clearTimeout(timer));
    },
    kill() {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    },
  };
}
