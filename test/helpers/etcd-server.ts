// A real etcd for tests: one member on free loopback ports with a data dir of its own.
//
// Used by the registry's integration test and by daemon-level tests that need a metadata
// server. Start one per test file (a second of start-up), share it between the tests of
// the file, and keep tests apart with a key prefix of their own.
//
//   const etcd = await startEtcd();
//   ... `metadata_server: etcd.endpoint` ...
//   await etcd.kill();     // SIGKILL: an etcd crash; keys and leases survive on disk
//   await etcd.restart();  // same ports, same data dir ({ freshData: true }: emptied)
//   await etcd.stop();     // SIGTERM, then the data dir is removed
//
//   const silent = await startSilentServer();  // accepts connections, never answers
//   ... `etcd://${silent.endpoint},${etcd.endpoint}` ...
//   await silent.close();
//
// The binary is Debian's etcd-server (/usr/bin/etcd); `npm test` installs it through
// scripts/setup.mjs --test. Ports come from binding port 0 and closing it; a clash with
// another process in between makes etcd exit at once, and the start is retried on new ports.
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { createServer, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { freePort } from "./ports.js";

export const ETCD_BINARY = process.env.KVFERRY_ETCD ?? "/usr/bin/etcd";
export const ETCDCTL_BINARY = process.env.KVFERRY_ETCDCTL ?? "/usr/bin/etcdctl";

export interface EtcdServer {
  /** "127.0.0.1:PORT" of the client API: a `metadata_server` value as is. */
  readonly endpoint: string;
  readonly clientPort: number;
  readonly dataDir: string;
  /** Whether the process runs now (false between kill()/stop() and restart()). */
  readonly running: boolean;
  /** Runs etcdctl (API v3) against this server; resolves with its stdout, rejects on a non-zero exit. */
  ctl(...args: string[]): Promise<string>;
  /** SIGTERM, waits for the exit, removes the data dir. Idempotent. */
  stop(): Promise<void>;
  /** SIGKILL and waits for the exit; the data dir stays for restart(). */
  kill(): Promise<void>;
  /**
   * Stops it if running (SIGTERM), then starts it again on the same ports and data dir;
   * with `freshData`, on an emptied data dir instead (a member that lost its disk).
   */
  restart(options?: { freshData?: boolean }): Promise<void>;
}

export interface EtcdStartOptions {
  /** How long one start may take before it fails (default 15 s). */
  startTimeoutMs?: number;
}

export interface SilentServer {
  /** "127.0.0.1:PORT" */
  readonly endpoint: string;
  readonly port: number;
  /** Drops every connection and stops listening. */
  close(): Promise<void>;
}

/**
 * A member that accepts TCP connections and never writes a byte (a blackhole: a host
 * whose etcd hangs, a firewall that swallows packets after the handshake). gRPC waits for
 * its HTTP/2 settings forever, so only deadlines get a client past it.
 */
export async function startSilentServer(): Promise<SilentServer> {
  const sockets = new Set<Socket>();
  const server = createServer((socket) => {
    sockets.add(socket);
    socket.on("error", () => {});
    socket.on("close", () => sockets.delete(socket));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as { port: number }).port;
  return {
    endpoint: `127.0.0.1:${port}`,
    port,
    close: async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

// Servers still running when the test process exits are killed with it, and the data
// dirs of servers never stopped are removed.
const live = new Set<ChildProcess>();
const dataDirs = new Set<string>();
process.once("exit", () => {
  for (const proc of live) proc.kill("SIGKILL");
  for (const dir of dataDirs) rmSync(dir, { recursive: true, force: true });
});

/** Starts etcd on free ports and resolves once it answers /health. */
export async function startEtcd(options: EtcdStartOptions = {}): Promise<EtcdServer> {
  if (!existsSync(ETCD_BINARY)) {
    throw new Error(`${ETCD_BINARY} is missing: install etcd-server (npm test does it through scripts/setup.mjs --test)`);
  }
  const startTimeoutMs = options.startTimeoutMs ?? 60_000;
  const dataDir = mkdtempSync(join(tmpdir(), "kvferry-etcd-"));
  dataDirs.add(dataDir);
  let lastError: unknown;
  for (let attempt = 0; attempt < 5; attempt++) {
    const clientPort = await freePort();
    const peerPort = await freePort();
    if (clientPort === peerPort) continue;
    const server = new Server(dataDir, clientPort, peerPort, startTimeoutMs);
    try {
      await server.start();
      return server;
    } catch (err) {
      lastError = err;
      // A fresh member next time: a failed first start may have left a half-made data dir.
      rmSync(join(dataDir, "member"), { recursive: true, force: true });
    }
  }
  rmSync(dataDir, { recursive: true, force: true });
  dataDirs.delete(dataDir);
  throw new Error(`etcd did not start: ${(lastError as Error)?.message ?? lastError}`);
}

class Server implements EtcdServer {
  readonly endpoint: string;
  #proc: ChildProcess | undefined;
  #exited: Promise<void> = Promise.resolve();
  #stopped = false;

  constructor(
    readonly dataDir: string,
    readonly clientPort: number,
    private readonly peerPort: number,
    private readonly startTimeoutMs: number,
  ) {
    this.endpoint = `127.0.0.1:${clientPort}`;
  }

  get running(): boolean {
    return this.#proc !== undefined;
  }

  /** Spawns the process and waits for /health; on failure the process is gone again. */
  async start(): Promise<void> {
    const client = `http://${this.endpoint}`;
    const peer = `http://127.0.0.1:${this.peerPort}`;
    const proc = spawn(
      ETCD_BINARY,
      [
        "--name", "kvferry-test",
        "--data-dir", this.dataDir,
        "--listen-client-urls", client,
        "--advertise-client-urls", client,
        "--listen-peer-urls", peer,
        "--initial-advertise-peer-urls", peer,
        "--initial-cluster", `kvferry-test=${peer}`,
        "--initial-cluster-state", "new",
        // One member: a short election makes start-up (and restart) quick.
        "--heartbeat-interval", "20",
        "--election-timeout", "200",
        "--log-level", "error",
      ],
      { stdio: ["ignore", "ignore", "pipe"] },
    );
    let stderr = "";
    proc.stderr?.setEncoding("utf8").on("data", (chunk: string) => {
      stderr = (stderr + chunk).slice(-4000);
    });
    let exitCode: number | null | undefined;
    this.#exited = new Promise<void>((resolve) => {
      proc.once("exit", (code, signal) => {
        exitCode = code ?? (signal ? -1 : null);
        live.delete(proc);
        if (this.#proc === proc) this.#proc = undefined;
        resolve();
      });
    });
    this.#proc = proc;
    live.add(proc);

    const deadline = Date.now() + this.startTimeoutMs;
    for (;;) {
      if (exitCode !== undefined) throw new Error(`etcd exited during start-up (code ${exitCode}): ${stderr.trim()}`);
      if (await this.#healthy()) return;
      if (Date.now() > deadline) {
        await this.#signal("SIGKILL");
        throw new Error(`etcd at ${this.endpoint} did not answer /health within ${this.startTimeoutMs} ms: ${stderr.trim()}`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  async #healthy(): Promise<boolean> {
    try {
      const res = await fetch(`http://${this.endpoint}/health`, { signal: AbortSignal.timeout(1000) });
      const body = (await res.json()) as { health?: string };
      return res.ok && body.health === "true";
    } catch {
      return false;
    }
  }

  /** Sends `signal` and waits for the exit (SIGKILL after 5 s if a SIGTERM is ignored). */
  async #signal(signal: NodeJS.Signals): Promise<void> {
    const proc = this.#proc;
    if (proc === undefined) return;
    proc.kill(signal);
    const timer = setTimeout(() => proc.kill("SIGKILL"), 5000);
    await this.#exited;
    clearTimeout(timer);
  }

  ctl(...args: string[]): Promise<string> {
    return new Promise((resolve, reject) => {
      execFile(
        ETCDCTL_BINARY,
        [`--endpoints=${this.endpoint}`, "--dial-timeout=2s", "--command-timeout=5s", ...args],
        { env: { ...process.env, ETCDCTL_API: "3" }, timeout: 60_000 },
        (err, stdout, stderr) => (err ? reject(new Error(`etcdctl ${args.join(" ")}: ${stderr || err.message}`)) : resolve(stdout)),
      );
    });
  }

  async stop(): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    await this.#signal("SIGTERM");
    rmSync(this.dataDir, { recursive: true, force: true });
    dataDirs.delete(this.dataDir);
  }

  async kill(): Promise<void> {
    await this.#signal("SIGKILL");
  }

  async restart(options: { freshData?: boolean } = {}): Promise<void> {
    if (this.#stopped) throw new Error("etcd test server: restart() after stop()");
    await this.#signal("SIGTERM");
    if (options.freshData) rmSync(join(this.dataDir, "member"), { recursive: true, force: true });
    // The ports were ours a moment ago; a clash now is another process's, so retry a little.
    let lastError: unknown;
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        await this.start();
        return;
      } catch (err) {
        lastError = err;
        await new Promise((r) => setTimeout(r, 500));
      }
    }
    throw lastError;
  }
}
