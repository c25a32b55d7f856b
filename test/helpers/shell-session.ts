// One bash that runs commands one at a time, as a terminal a user pastes into would: the
// same shell keeps its variables, functions and jobs from one command to the next, and job
// control is on (`set -m`, as in an interactive terminal), so every background job is a
// process group of its own.
//
//   const sh = startShell({ cwd: REPO });
//   const r = await sh.run("echo hi", 10_000);   // { code: 0, stdout: "hi\n", jobPid: undefined }
//   const bg = await sh.run("sleep 100 &", 5000); // bg.jobPid: the job's process group
//   await sh.close();                             // SIGKILL to every job's group it saw, then bash
//
// Each command is followed by a marker line with its exit status (and `$!` after a
// background one), so stdout is cut command by command. stderr (of bash and of the
// foreground commands) is collected as one log.
import { spawn, type ChildProcessWithoutNullStreams } from "node:child_process";

export interface ShellResult {
  readonly code: number;
  readonly stdout: string;
  /** With `background`: `$!`, the job's process id and (job control) its process group. */
  readonly jobPid?: number;
}

export interface ShellSession {
  run(command: string, timeoutMs: number, options?: { background?: boolean }): Promise<ShellResult>;
  /** The shell's stderr so far (the last 20000 characters). */
  stderr(): string;
  /** The process groups of the background jobs started so far. */
  readonly jobs: readonly number[];
  /** SIGKILL to every job's process group that still exists, then to bash. Idempotent. */
  close(): Promise<void>;
}

const MARK = "@@kvferry-shell-session@@";

export function startShell(options: { cwd: string; env?: NodeJS.ProcessEnv }): ShellSession {
  const proc = spawn("bash", ["--norc", "--noprofile"], { cwd: options.cwd, env: options.env ?? process.env, stdio: "pipe" });
  return new Session(proc);
}

class Session implements ShellSession {
  readonly jobs: number[] = [];
  #stdout = "";
  #stderr = "";
  #exited = false;
  #wake: (() => void) | undefined;
  #closed: Promise<void>;

  constructor(private readonly proc: ChildProcessWithoutNullStreams) {
    proc.stdout.setEncoding("utf8").on("data", (chunk: string) => {
      this.#stdout += chunk;
      this.#wake?.();
    });
    proc.stderr.setEncoding("utf8").on("data", (chunk: string) => {
      this.#stderr = (this.#stderr + chunk).slice(-20_000);
    });
    this.#closed = new Promise((resolve) =>
      proc.once("exit", () => {
        this.#exited = true;
        this.#wake?.();
        resolve();
      }),
    );
    proc.stdin.write("set -m\n");
  }

  stderr(): string {
    return this.#stderr;
  }

  async run(command: string, timeoutMs: number, options: { background?: boolean } = {}): Promise<ShellResult> {
    if (this.#exited) throw new Error(`the shell has exited; stderr: ${this.#stderr.slice(-2000)}`);
    this.proc.stdin.write(`${command}\necho "${MARK} $? ${options.background ? "$!" : ""}"\n`);
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const at = this.#stdout.indexOf(MARK);
      const eol = at < 0 ? -1 : this.#stdout.indexOf("\n", at);
      if (eol >= 0) {
        const stdout = this.#stdout.slice(0, at);
        const [code, pid] = this.#stdout.slice(at + MARK.length, eol).trim().split(" ");
        this.#stdout = this.#stdout.slice(eol + 1);
        const jobPid = pid ? Number(pid) : undefined;
        if (jobPid !== undefined) this.jobs.push(jobPid);
        return { code: Number(code), stdout, jobPid };
      }
      if (this.#exited) throw new Error(`the shell exited during: ${command}\nstdout: ${this.#stdout.slice(-2000)}\nstderr: ${this.#stderr.slice(-2000)}`);
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new Error(`no end within ${timeoutMs} ms: ${command}\nstdout so far: ${this.#stdout.slice(-2000)}\nstderr: ${this.#stderr.slice(-2000)}`);
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, Math.min(left, 1000));
        this.#wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.#wake = undefined;
    }
  }

  async close(): Promise<void> {
    for (const pgid of this.jobs) {
      try {
        process.kill(-pgid, "SIGKILL");
      } catch {
        // gone already
      }
    }
    if (!this.#exited) this.proc.kill("SIGKILL");
    await this.#closed;
  }
}

/** Whether any process of the process group still exists. */
export function groupAlive(pgid: number): boolean {
  try {
    process.kill(-pgid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}
