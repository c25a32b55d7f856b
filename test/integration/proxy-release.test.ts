// A failed request leaves nothing behind, even when the prefill instance dies under it.
//
// A prefill attempt that may have reached its engine may have left KV on the engine's
// daemon. Only an attempt that provably never reached it (a fresh connection refused) may
// skip releasing its transfer id; a request sent on a kept-alive connection that was then
// reset, and whose retry was refused, is not one of those. The proxy releases such an
// attempt's id on the prefill's and the decode's daemon, and the next attempt (on another
// instance) runs under a fresh id, so that the release never touches the retry's KV.
//
// Every part is a real process or a real server on 127.0.0.1: the daemons, `kvferry
// simulate` instances, `kvferry proxy`, and (for the deterministic case) stub engines
// that store KV in a real daemon.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { Writable } from "node:stream";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { NotFoundError } from "../../src/errors.js";
import { DaemonDirectory } from "../../src/proxy/daemons.js";
import { ProxyMetrics } from "../../src/proxy/metrics.js";
import { DEFAULT_RELEASE_POLICY, Releaser } from "../../src/proxy/releases.js";
import { sleep } from "../helpers/daemon.js";
import { freePort } from "../helpers/ports.js";
import {
  SMALL_LAYOUT,
  eventually,
  mapConcurrent,
  metricValue,
  mixedCases,
  sendCase,
  spawnProxy,
  startNode,
  stopNodes,
  type SimNode,
} from "../helpers/proxy.js";
import { startPeerDaemon, type PeerDaemon } from "../helpers/transfer.js";

/** How long the daemons may take to be found empty (the late release comes after ~10 s). */
const SETTLE_MS = 20_000;

/** Entries each daemon holds now. */
async function entryCounts(daemons: PeerDaemon[]): Promise<number[]> {
  return Promise.all(daemons.map(async (d) => (await d.client.serverInfo()).entries));
}

/** Waits (bounded) until none of the daemons holds an entry; asserts it, naming what is left. */
async function expectEmpty(daemons: PeerDaemon[]): Promise<void> {
  await eventually(async () => (await entryCounts(daemons)).every((n) => n === 0), SETTLE_MS);
  const left = await Promise.all(daemons.map(async (d) => (await d.client.list({})).entries.map((e) => `${e.transferId} (${e.totalBytes} B)`)));
  expect(left).toEqual(daemons.map(() => []));
}

/** The reason a daemon gives for an entry that is gone; undefined while it is there. */
async function goneReason(daemon: PeerDaemon, transferId: string): Promise<string | undefined> {
  const err = await daemon.client.stat(transferId).then(() => undefined, (e: unknown) => e);
  if (err === undefined) return undefined;
  if (err instanceof NotFoundError) return err.reason ?? "not found";
  throw err;
}

async function startStub(handler: (req: IncomingMessage, res: ServerResponse, body: string) => void): Promise<{ server: Server; url: string }> {
  const server = createServer((req, res) => {
    let body = "";
    req.setEncoding("utf8");
    req.on("data", (d: string) => (body += d));
    req.on("end", () => {
      if (req.method === "GET") {
        res.writeHead(200, { "content-type": "application/json" }).end('{"status":"ok"}');
        return;
      }
      handler(req, res, body);
    });
  });
  // The proxy's kept-alive connection from its first health check stays open for the test.
  server.keepAliveTimeout = 120_000;
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return { server, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}` };
}

async function stopStub(server: Server | undefined): Promise<void> {
  if (server === undefined) return;
  server.closeAllConnections();
  await new Promise((resolve) => server.close(resolve));
}

function transferIdOf(body: string): string {
  return (JSON.parse(body).kv_transfer_params as { transfer_id: string }).transfer_id;
}

describe("a prefill that stores KV, then resets its kept-alive connection and refuses the retry (stub engines)", () => {
  let d1: PeerDaemon;
  let d2: PeerDaemon;

  beforeAll(async () => {
    [d1, d2] = await Promise.all([startPeerDaemon({ bufferSize: "16MiB" }), startPeerDaemon({ bufferSize: "16MiB" })]);
  });

  afterAll(async () => {
    await Promise.all([d1?.stop(), d2?.stop()]);
  });

  for (const layout of ["each on its own daemon", "both on one daemon"] as const) {
    it(`releases the dying prefill's transfer id and retries under a fresh id on the other prefill (${layout})`, async () => {
      const dyingDaemon = d1;
      const otherDaemon = layout === "both on one daemon" ? d1 : d2;
      const dyingSaw: string[] = [];
      const otherSaw: string[] = [];
      // The dying prefill: stores the request's KV as an engine would, then stops listening
      // and resets the connection the request came on (before any answer).
      const dying = await startStub((req, _res, body) => {
        const id = transferIdOf(body);
        dyingSaw.push(id);
        void dyingDaemon.client.put(id, "layer.0", Buffer.alloc(8192, 7), { seal: true }).finally(() => {
          dying.server.close();
          req.socket.resetAndDestroy();
        });
      });
      // The other prefill stores its KV under the id it is given (409 when the daemon refuses
      // it, e.g. the id is taken, as the simulator answers); the decode (same stub, /d) only answers.
      const other = await startStub((req, res, body) => {
        if (req.url!.startsWith("/d/")) {
          res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ choices: [{ text: "decoded" }] }));
          return;
        }
        const id = transferIdOf(body);
        otherSaw.push(id);
        otherDaemon.client.put(id, "layer.0", Buffer.alloc(4096, 1), { seal: true }).then(
          () => res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ choices: [{ text: "a" }], kv_transfer_params: {} })),
          (err: Error) => res.writeHead(409, { "content-type": "application/json" })
            .end(JSON.stringify({ error: { message: err.message, type: "invalid_request_error", code: "transfer_id_in_use" } })),
        );
      });
      // The engines move the KV themselves (none); the daemons are named so that the proxy releases there.
      const proxy = await spawnProxy([
        "--transfer", "none", "--policy", "round-robin", "--health-interval-ms", "600000",
        "--prefill", `${dying.url}=${dyingDaemon.address}`, "--prefill", `${other.url}/p=${otherDaemon.address}`, "--decode", `${other.url}/d`,
      ]);
      try {
        // Taken in turn: one of the first two requests goes to the dying prefill, on the
        // connection its start-up health check left open.
        for (let i = 0; i < 2 && dyingSaw.length === 0; i++) {
          const res = await sendCase(proxy.url, { endpoint: "completions", body: { model: "m", prompt: `hi ${i}` } });
          expect(res.status, res.text).toBe(200);
          expect(JSON.parse(res.text).choices[0].text).toBe("decoded");
        }
        expect(dyingSaw).toHaveLength(1);
        const [dyingId] = dyingSaw;
        // What the dying prefill stored is released on its daemon.
        let reason: string | undefined;
        await eventually(async () => (reason = await goneReason(dyingDaemon, dyingId!)) !== undefined, SETTLE_MS);
        expect(reason).toBe("released");
        // The retry on the other prefill ran under a fresh transfer id.
        expect(otherSaw).not.toContain(dyingId);
        const health = await (await fetch(`${proxy.url}/health`, { signal: AbortSignal.timeout(5000) })).json();
        expect(health.prefill[0].health).toBe("down");
        await expectEmpty([d1, d2]);
      } finally {
        expect(await proxy.stop()).toBe(0);
        await Promise.all([stopStub(dying.server), stopStub(other.server)]);
      }
    });
  }
});

describe("a prefill instance killed (SIGKILL) with requests in flight on it", () => {
  let p1: SimNode;
  let p2: SimNode;
  let decode: SimNode;

  beforeAll(async () => {
    // Each prefill holds its sealed entry for 300 ms before it answers (its one token):
    // the kill finds requests whose KV is stored and whose answer has not come.
    const prefillArgs = [...SMALL_LAYOUT, "--token-ms", "300"];
    [p1, p2, decode] = await Promise.all([startNode("prefill", prefillArgs), startNode("prefill", prefillArgs), startNode("decode", SMALL_LAYOUT)]);
  });

  afterAll(async () => {
    await stopNodes([p1, p2, decode]);
  });

  it("answers every request (200 or 502), and leaves no entry of them on the prefill or the decode daemons", async () => {
    const proxy = await spawnProxy(["--prefill", p1.flag, "--prefill", p2.flag, "--decode", decode.flag, "--health-interval-ms", "600000"]);
    try {
      // A first round opens the proxy's connections to each prefill (as many as it uses at
      // this concurrency); the requests of the second round go on those kept-alive ones.
      const warmUp = await mapConcurrent(mixedCases(8, 4), 4, (c) => sendCase(proxy.url, c));
      expect(warmUp.map((a) => a.status)).toEqual(warmUp.map(() => 200));
      const cases = mixedCases(20, 5);
      let done = 0;
      let killed = false;
      // The kill comes once p1's daemon holds KV of a request in flight.
      const killer = (async () => {
        for (let i = 0; i < 400 && !killed && done < cases.length; i++) {
          if (done >= 2 && (await p1.daemon.client.serverInfo()).entries > 0) {
            p1.sim.child.kill("SIGKILL");
            killed = true;
            return;
          }
          await sleep(25);
        }
      })();
      const answers = await mapConcurrent(cases, 4, async (c) => {
        const a = await sendCase(proxy.url, c);
        done++;
        return a;
      });
      await killer;
      expect(killed, "the load ended before the kill").toBe(true);
      const statuses = answers.map((a) => a.status);
      for (const [i, a] of answers.entries()) expect([200, 502], `request ${i}: ${a.text.slice(0, 300)}`).toContain(a.status);
      // How many prefill attempts on p1 may have reached it, yet ended refused (reset, then refused): what used to leak.
      const resetThenRefused = proxy.logs.filter((l) => l.msg === "prefill instance refused the connection: trying another" && l.reached === true).length;
      console.log(
        `prefill killed: ${statuses.filter((s) => s === 200).length} answered 200, ${statuses.filter((s) => s === 502).length} answered 502; ` +
          `${resetThenRefused} attempts reset on a kept-alive connection, then refused`,
      );
      await expectEmpty([p1.daemon, p2.daemon, decode.daemon]);
    } finally {
      expect(await proxy.stop()).toBe(0);
    }
  });
});

describe("releases a daemon cannot take (in process: the proxy's Releaser, real daemons)", () => {
  /** A logger whose lines the test reads. */
  function capturingLogger(): { log: ReturnType<typeof pino>; lines: Record<string, unknown>[] } {
    const lines: Record<string, unknown>[] = [];
    const sink = new Writable({
      write(chunk: Buffer, _encoding, done) {
        for (const line of chunk.toString("utf8").split("\n")) if (line !== "") lines.push(JSON.parse(line));
        done();
      },
    });
    return { log: pino({ level: "debug" }, sink), lines };
  }
  const failures = async (metrics: ProxyMetrics, after: "ok" | "failed") =>
    metricValue(await metrics.render(), `kvferry_proxy_kv_releases_total{after="${after}",result="failed"}`) ?? 0;

  it("tries again while the daemon is down, and frees the entry once the daemon is up", async () => {
    const port = await freePort();
    const metrics = new ProxyMetrics();
    const { log } = capturingLogger();
    const directory = new DaemonDirectory(log);
    const releaser = new Releaser(metrics);
    let daemon: PeerDaemon | undefined;
    try {
      // Nothing listens there yet: the first try fails at once.
      releaser.release("kvf-down-then-up", [directory.get(`127.0.0.1:${port}`)], "failed", log);
      expect(await eventually(async () => (await failures(metrics, "failed")) >= 1, 10_000)).toBe(true);
      daemon = await startPeerDaemon({ bufferSize: "16MiB", args: ["--listen", `127.0.0.1:${port}`] });
      await daemon.client.put("kvf-down-then-up", "layer.0", Buffer.alloc(4096, 3), { seal: true });
      let reason: string | undefined;
      await eventually(async () => (reason = await goneReason(daemon!, "kvf-down-then-up")) !== undefined, SETTLE_MS);
      expect(reason).toBe("released");
      await releaser.settle();
    } finally {
      directory.close();
      await daemon?.stop();
    }
  });

  it("gives up after a bounded number of tries with a warning (4 by default), and shutdown (settle) cuts the waits short", async () => {
    expect(DEFAULT_RELEASE_POLICY.retryDelaysMs).toHaveLength(3);
    const port = await freePort();
    const metrics = new ProxyMetrics();
    const { log, lines } = capturingLogger();
    const directory = new DaemonDirectory(log);
    // Short pauses between the 4 tries; the late release far off, until settle runs it.
    const releaser = new Releaser(metrics, { ...DEFAULT_RELEASE_POLICY, retryDelaysMs: [100, 200, 300], lateReleaseMs: 600_000 });
    const TRIES = 4;
    try {
      const link = directory.get(`127.0.0.1:${port}`);
      releaser.release("kvf-never", [link], "ok", log);
      expect(await eventually(() => lines.some((l) => l.msg === "gave up releasing a transfer id: the daemon's lease will expire the entry"), 20_000)).toBe(true);
      expect(await failures(metrics, "ok")).toBe(TRIES);
      await sleep(1000);
      expect(await failures(metrics, "ok")).toBe(TRIES);

      // A failed request's release waits between tries and for its late run; settle ends
      // both waits: one more try each (the try in flight, if any, is the last of its run),
      // then nothing is left pending.
      releaser.release("kvf-at-shutdown", [link], "failed", log);
      expect(await eventually(async () => (await failures(metrics, "failed")) >= 1, 10_000)).toBe(true);
      const beforeSettle = await failures(metrics, "failed");
      await releaser.settle();
      const afterSettle = await failures(metrics, "failed");
      expect(afterSettle).toBe(beforeSettle + 2);
      await sleep(1000);
      expect(await failures(metrics, "failed")).toBe(afterSettle);
    } finally {
      directory.close();
    }
  });
});
