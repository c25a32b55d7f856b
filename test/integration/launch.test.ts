// The launcher that the demo, the tests and the benchmarks start every service with
// (src/launch/spawn-service.ts): a start that fails names the process by its role, says
// how it ended (exit code or signal) and shows its last lines of output; a slow start is
// reported while it lasts; and a daemon started through `npx` stops when npx is signalled.
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { ServiceStartError } from "../../src/errors.js";
import { spawnDaemon } from "../../src/launch/spawn-daemon.js";
import { freePort } from "../helpers/ports.js";
import { BIN, processAlive, REPO, sleep } from "../helpers/daemon.js";

/** A daemon that cannot serve yet: it keeps retrying an etcd that nobody runs, logging each try. */
async function waitingDaemonArgs(): Promise<string[]> {
  const nobody = await freePort();
  return [
    "--listen", "127.0.0.1:0", "--data-listen", "127.0.0.1:0", "--peer-listen", "127.0.0.1:0", "--kv-buffer-size", "8MiB",
    "--metadata-server", `etcd://127.0.0.1:${nobody}`, "--metadata-retry-ms", "120000",
  ];
}

describe("a service that does not come to serve", () => {
  it("killed by a signal during start-up: the error names it by role, gives the signal (not a null code) and its last lines of stdout and stderr", async () => {
    let child: ChildProcess | undefined;
    const err = await spawnDaemon(await waitingDaemonArgs(), {
      name: "prefill daemon",
      // Something on stderr too, written by the child itself before kvferry starts.
      nodeArgs: ["--import", "data:text/javascript,process.stderr.write('a line on stderr\\n')"],
      onSpawn: (c) => {
        child = c;
        // Killed once it is under way: it has logged its first retry of the metadata backend.
        c.stdout!.on("data", (d) => String(d).includes("metadata backend unreachable") && c.kill("SIGKILL"));
      },
    }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(ServiceStartError);
    const e = err as ServiceStartError;
    expect(e.service).toBe("prefill daemon");
    expect(e.timedOut).toBe(false);
    expect(e.exit).toBe("killed by SIGKILL");
    expect(e.message).toContain(`prefill daemon (kvferry daemon, pid ${child!.pid}) was killed by SIGKILL before serving`);
    expect(e.message).not.toContain("null");
    expect(e.lastLines.length).toBeGreaterThanOrEqual(3);
    expect(e.lastLines.length).toBeLessThanOrEqual(10);
    expect(e.lastLines).toContain("stderr | a line on stderr");
    // Its JSON log lines, message first.
    expect(e.lastLines.some((l) => l.startsWith("stdout | INFO configuration loaded {"))).toBe(true);
    expect(e.lastLines.at(-1)).toMatch(/^stdout \| WARN metadata backend unreachable: retrying \{.*cannot register node/);
    // The lines are in the message, so whoever prints the error shows them.
    for (const line of e.lastLines) expect(e.message).toContain(line);
  }, 60_000);

  it("still starting when its limit runs out: reported while it waits, then killed, and the error names it, the limit and its last lines", async () => {
    let child: ChildProcess | undefined;
    const waited: number[] = [];
    const err = await spawnDaemon(await waitingDaemonArgs(), {
      name: "decode daemon",
      startTimeoutMs: 4_000,
      progressEveryMs: 1_000,
      onWaiting: (ms) => waited.push(ms),
      onSpawn: (c) => (child = c),
    }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(ServiceStartError);
    const e = err as ServiceStartError;
    expect(e.service).toBe("decode daemon");
    expect(e.timedOut).toBe(true);
    expect(e.message).toContain(`decode daemon (kvferry daemon, pid ${child!.pid}) did not start within 4000 ms (still running: killed)`);
    expect(e.lastLines.some((l) => l.includes("configuration loaded"))).toBe(true);
    expect(waited.length, "progress reported while waiting").toBeGreaterThanOrEqual(1);
    expect(waited).toEqual([...waited].sort((a, b) => a - b));
    const signal = child!.signalCode ?? (await new Promise((resolve) => child!.once("exit", (_code, s) => resolve(s))));
    expect(signal).toBe("SIGKILL");
  }, 60_000);
});

describe("a daemon started through npx", () => {
  it("stops cleanly (logs shutting down and stopped, once) when the npx process is sent SIGTERM", async () => {
    // npx runs npm → sh → node: npm's signal kills the shell, not node; node notices npm is gone.
    // --ignore-scripts: npx's first run in a checkout runs its `prepare` (a full build), which
    // would relink the native addon and swap dist/ under the daemons of tests running beside.
    const npx = spawn("npx", ["--offline", "--ignore-scripts", "kvferry", "daemon", "--listen", "127.0.0.1:0", "--data-listen", "127.0.0.1:0", "--peer-listen", "127.0.0.1:0", "--kv-buffer-size", "8MiB"], {
      cwd: REPO,
      env: { ...process.env, NO_PRETTY: "1", NO_COLOR: "1" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    let errOut = "";
    npx.stdout.on("data", (d) => (out += d));
    npx.stderr.on("data", (d) => (errOut += d));
    const records = () => out.split("\n").filter((l) => l.startsWith("{")).map((l) => JSON.parse(l) as Record<string, unknown>);
    let daemonPid: number | undefined;
    try {
      // npx itself may take a while on a busy machine before node even starts.
      const deadline = Date.now() + 150_000;
      while (Date.now() < deadline && npx.exitCode === null) {
        const serving = records().find((r) => r.msg === "kvferry daemon serving");
        if (serving !== undefined) {
          daemonPid = Number(serving.pid);
          break;
        }
        await sleep(200);
      }
      expect(daemonPid, `the daemon served under npx; stderr: ${errOut}`).toBeDefined();
      expect(daemonPid).not.toBe(npx.pid);
      npx.kill("SIGTERM");
      const gone = Date.now() + 30_000;
      while (processAlive(daemonPid!) && Date.now() < gone) await sleep(200);
      expect(processAlive(daemonPid!), "the daemon exited after npx was signalled").toBe(false);
      const msgs = records().filter((r) => r.pid === daemonPid).map((r) => r.msg);
      expect(msgs).toContain("shutting down");
      expect(msgs.filter((m) => m === "stopped")).toHaveLength(1);
    } finally {
      npx.kill("SIGKILL");
      if (daemonPid !== undefined && processAlive(daemonPid)) process.kill(daemonPid, "SIGKILL");
    }
  }, 200_000);

  it("but a daemon whose parent (not npm) exits on purpose keeps serving, npm's variables notwithstanding", async () => {
    // As `nohup kvferry daemon &` from a shell script that ends, run under `npx vitest`.
    const dir = mkdtempSync(join(tmpdir(), "kvferry-launch-"));
    const log = join(dir, "daemon.log");
    const args = "--listen 127.0.0.1:0 --data-listen 127.0.0.1:0 --peer-listen 127.0.0.1:0 --kv-buffer-size 8MiB";
    const sh = spawnSync("sh", ["-c", `"${process.execPath}" "${BIN}" daemon ${args} > "${log}" 2>&1 &`], {
      env: { ...process.env, NO_PRETTY: "1", npm_command: "exec" },
    });
    expect(sh.status).toBe(0);
    const records = () =>
      readFileSync(log, "utf8").split("\n").filter((l) => l.startsWith("{")).map((l) => JSON.parse(l) as Record<string, unknown>);
    let daemonPid: number | undefined;
    try {
      const deadline = Date.now() + 60_000;
      while (daemonPid === undefined && Date.now() < deadline) {
        await sleep(200);
        const serving = records().find((r) => r.msg === "kvferry daemon serving");
        if (serving !== undefined) daemonPid = Number(serving.pid);
      }
      expect(daemonPid, "the daemon served").toBeDefined();
      // Several of its once-a-second checks later, it still serves.
      await sleep(3_000);
      expect(processAlive(daemonPid!)).toBe(true);
      expect(records().map((r) => r.msg)).not.toContain("shutting down");
    } finally {
      if (daemonPid !== undefined && processAlive(daemonPid)) process.kill(daemonPid, "SIGKILL");
      rmSync(dir, { recursive: true, force: true });
    }
  }, 90_000);
});
