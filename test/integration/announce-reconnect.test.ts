// An engine's announcement outlives an outage of its daemon: after a daemon that was gone
// for a while (a crash, a host reboot) is back at its address, the simulator announces
// itself again within seconds, not after gRPC's reconnect backoff (which grows to two
// minutes) has run out. Real daemons and simulator as processes; while the daemon is
// gone the test listens on its port, to see when the simulator's channel tries it.
import { createServer, type Server } from "node:net";
import { describe, expect, it } from "vitest";
import { spawnSimulator } from "../../src/simulator/spawn.js";
import { sleep } from "../helpers/daemon.js";
import { freePort } from "../helpers/ports.js";
import { eventually, SMALL_LAYOUT } from "../helpers/proxy.js";
import { startPeerDaemon, type PeerDaemon } from "../helpers/transfer.js";

/** How long the daemon stays away: long enough for gRPC's backoff to exceed 20 s. */
const OUTAGE_MS = 40_000;
/** Re-announced within this of the daemon serving again (gRPC's backoff alone: 21 s or more). */
const BACK_WITHIN_MS = 15_000;

describe("AnnounceEngine after a long outage of the daemon", () => {
  it("is made again within seconds of the daemon's return", async () => {
    const port = await freePort();
    const daemonArgs = { bufferSize: "64MiB", args: ["--listen", `127.0.0.1:${port}`] };
    const first = await startPeerDaemon(daemonArgs);
    const sim = await spawnSimulator(["--role", "decode", "--listen", "127.0.0.1:0", "--daemon", first.address, ...SMALL_LAYOUT]);
    let second: PeerDaemon | undefined;
    let holder: Server | undefined;
    try {
      first.proc.child.kill("SIGKILL");
      await first.proc.exited;
      first.client.close();
      // Stand in for the daemon: take each connection attempt and drop it.
      const attempts: number[] = [];
      holder = createServer((socket) => {
        attempts.push(Date.now());
        socket.destroy();
      });
      await new Promise<void>((resolve, reject) => {
        holder!.once("error", reject);
        holder!.listen(port, "127.0.0.1", () => resolve());
      });
      const down = Date.now();
      // Give the port back right after an attempt late in the outage.
      while (Date.now() - down < OUTAGE_MS + 60_000) {
        const last = attempts.at(-1);
        if (last !== undefined && last - down >= OUTAGE_MS) break;
        await sleep(20);
      }
      await new Promise<void>((resolve) => holder!.close(() => resolve()));
      holder = undefined;
      second = await startPeerDaemon(daemonArgs);
      const back = Date.now();
      const engines = async () => (await second!.client.listNodes()).nodes.flatMap((n) => n.engines.map((e) => e.url));
      const seen = await eventually(async () => (await engines()).includes(sim.url), BACK_WITHIN_MS);
      expect(seen, `not announced again ${Date.now() - back} ms after the daemon's return (attempts at ${attempts.map((t) => t - down).join(", ")} ms)`).toBe(true);
    } finally {
      holder?.close();
      await sim.stop();
      await second?.stop();
    }
  }, 150_000);
});
