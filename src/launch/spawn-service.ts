// Starts a `kvferry <command>` as a child process and waits for its readiness log line
// (a JSON line whose msg is `ready`, with the bound address in `listen`). Every command
// that serves — daemon, simulate, proxy, metadata-server — logs such a line, so one
// launcher serves the demo, the tests and the benchmarks: real processes, learned ports.
//
// The wait is generous (a busy machine starts Node slowly) and reports progress; a start
// that fails names the process by its role, how it ended (exit code or signal) and its
// last lines of output.
import { spawn, type ChildProcess } from "node:child_process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { ServiceStartError } from "../errors.js";

export const BIN = fileURLToPath(new URL("../../bin/kvferry.js", import.meta.url));

/** How long a launcher waits for the readiness line unless told otherwise. */
export const DEFAULT_START_TIMEOUT_MS = 90_000;
/** How often onWaiting hears of a start that is still under way. */
export const START_PROGRESS_EVERY_MS = 5_000;
/** How many of its last output lines a failed start reports. */
const LAST_LINES = 10;
/** A longer output line is cut to this many characters in the report. */
const LINE_CHARS = 400;

/** How a child ended: an exit code, or the signal that killed it. */
export interface ExitStatus {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** "exit code 1", "killed by SIGKILL". */
export function describeExit(s: ExitStatus): string {
  return s.signal !== null ? `killed by ${s.signal}` : `exit code ${s.code}`;
}

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
  /** Its last lines of output, stdout and stderr interleaved as they came, oldest first. */
  lastLines(): string[];
  /** SIGTERM, then waits for the exit code (SIGKILL after killAfterMs). */
  stop(killAfterMs?: number): Promise<number | null>;
  /** The exit code (null when a signal ended it). */
  readonly exited: Promise<number | null>;
  /** The exit code or the signal. */
  readonly exitStatus: Promise<ExitStatus>;
}

export interface SpawnOptions {
  env?: NodeJS.ProcessEnv;
  /** What a message calls it, by its role: "prefill daemon" (default "kvferry <command>"). */
  name?: string;
  /** How long to wait for the readiness line (default DEFAULT_START_TIMEOUT_MS). */
  startTimeoutMs?: number;
  /** Told every progressEveryMs while it has not served yet, with the time waited so far. */
  onWaiting?: (waitedMs: number) => void;
  /** How often onWaiting is told (default START_PROGRESS_EVERY_MS). */
  progressEveryMs?: number;
  /** Extra node flags, e.g. ["--cpu-prof"] for profiling. */
  nodeArgs?: string[];
  /** Told of the child as soon as it exists (before it is ready), e.g. to stop it on any exit path. */
  onSpawn?: (child: ChildProcess) => void;
}

const LEVELS: Record<number, string> = { 10: "TRACE", 20: "DEBUG", 30: "INFO", 40: "WARN", 50: "ERROR", 60: "FATAL" };

/** A pino JSON line as "WARN msg {the other fields}" (its message first, so a cut line keeps it); other text as is. */
function readable(line: string): string {
  try {
    const { level, msg, time: _time, pid: _pid, name: _name, hostname: _hostname, ...rest } = JSON.parse(line) as Record<string, unknown>;
    if (typeof msg !== "string") return line;
    return `${LEVELS[Number(level)] ?? level} ${msg}${Object.keys(rest).length > 0 ? ` ${JSON.stringify(rest)}` : ""}`;
  } catch {
    return line;
  }
}

/** The last `max` lines written, tagged by stream. */
class Tail {
  readonly #lines: string[] = [];
  constructor(private readonly max: number) {}
  add(stream: "stdout" | "stderr", raw: string): void {
    if (raw.trim() === "") return;
    const line = stream === "stdout" ? readable(raw) : raw;
    this.#lines.push(`${stream} | ${line.length > LINE_CHARS ? `${line.slice(0, LINE_CHARS)}…` : line}`);
    if (this.#lines.length > this.max) this.#lines.shift();
  }
  lines(): string[] {
    return [...this.#lines];
  }
}

/** Runs `kvferry <command> ...args` and resolves once it logs `ready`. @throws ServiceStartError */
export function spawnService(command: string, args: string[], ready: string, options: SpawnOptions = {}): Promise<SpawnedService> {
  const child = spawn(process.execPath, [...(options.nodeArgs ?? []), BIN, command, ...args], {
    env: { ...process.env, NO_PRETTY: "1", ...options.env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  options.onSpawn?.(child);
  const name = options.name ?? `kvferry ${command}`;
  const who = `${name} (kvferry ${command}, pid ${child.pid})`;
  const logs: Record<string, unknown>[] = [];
  const tail = new Tail(LAST_LINES);
  let stderr = "";
  createInterface({ input: child.stderr! }).on("line", (line) => tail.add("stderr", line));
  child.stderr!.on("data", (d) => (stderr += d));
  const exitStatus = new Promise<ExitStatus>((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
  const exited = exitStatus.then((s) => s.code);
  const startTimeoutMs = options.startTimeoutMs ?? DEFAULT_START_TIMEOUT_MS;
  const t0 = Date.now();

  return new Promise<SpawnedService>((resolve, reject) => {
    const failed = (timedOut: boolean, exit: string, summary: string) => {
      const lines = tail.lines();
      const shown = lines.length === 0 ? "it wrote nothing" : `its last ${lines.length} lines of output:\n${lines.map((l) => `    ${l}`).join("\n")}`;
      reject(new ServiceStartError(name, timedOut, exit, lines, `${who} ${summary}; ${shown}`));
    };
    const progress = options.onWaiting === undefined ? undefined : setInterval(() => options.onWaiting!(Date.now() - t0), options.progressEveryMs ?? START_PROGRESS_EVERY_MS);
    const settled = () => {
      clearTimeout(timer);
      clearInterval(progress);
    };
    const timer = setTimeout(() => {
      settled();
      child.kill("SIGKILL");
      failed(true, "killed by SIGKILL", `did not start within ${startTimeoutMs} ms (still running: killed)`);
    }, startTimeoutMs);
    // Reported at "close", when its last lines have been read; or half a second after
    // "exit" if something it started still holds its pipes open.
    const closed = new Promise<void>((resolve) => child.once("close", () => resolve()));
    exitStatus.then(async (status) => {
      await Promise.race([closed, new Promise((resolve) => setTimeout(resolve, 500).unref())]);
      settled();
      // Its own account (the last error it logged) first, then the lines around it.
      const fatal = [...logs].reverse().find((r) => Number(r.level) >= 50);
      const why = fatal === undefined ? "" : ` (${(fatal.err as { message?: string } | undefined)?.message ?? fatal.msg})`;
      const how = status.signal !== null ? `was killed by ${status.signal}` : `exited with code ${status.code}`;
      failed(false, describeExit(status), `${how} before serving${why}`);
    });
    createInterface({ input: child.stdout! }).on("line", (line) => {
      tail.add("stdout", line);
      let rec: Record<string, unknown>;
      try {
        rec = JSON.parse(line);
      } catch {
        return;
      }
      logs.push(rec);
      if (rec.msg !== ready) return;
      settled();
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
        child, port, address: `127.0.0.1:${port}`, ready: rec, logs,
        stderr: () => stderr, lastLines: () => tail.lines(), stop, exited, exitStatus,
      });
    });
  });
}
