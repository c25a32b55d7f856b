// The daemon's Prometheus endpoint (--metrics-listen): two real daemons, real puts, gets,
// consumes, releases, evictions, an expiry, a refused put and transfers between them; each
// counter is scraped before and after and must have moved by exactly what was done.
import { createServer } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ResourceExhaustedError } from "../../src/errors.js";
import { MiB, pattern, rejection, runCli, sleep } from "../helpers/daemon.js";
import { parseExposition, sampleOf, sumOf, type Sample } from "../helpers/metrics.js";
import { eventually } from "../helpers/proxy.js";
import { startRedis } from "../helpers/redis-server.js";
import { codeCounts, startPeerDaemon, type PeerDaemon } from "../helpers/transfer.js";

const PART = 3 * MiB;

/** A daemon's metrics endpoint, "host:port", from its readiness line. */
function metricsAddress(d: PeerDaemon): string {
  const address = d.proc.ready.metrics;
  expect(typeof address, "the readiness line names the metrics address").toBe("string");
  return address as string;
}

async function scrape(d: PeerDaemon): Promise<Sample[]> {
  const r = await fetch(`http://${metricsAddress(d)}/metrics`);
  expect(r.status).toBe(200);
  expect(r.headers.get("content-type")).toMatch(/^text\/plain; version=0\.0\.4/);
  return parseExposition(await r.text());
}

/** `after - before` for the series `selector` names (absent counts as 0). */
function moved(before: Sample[], after: Sample[], selector: string): number {
  return (sampleOf(after, selector) ?? 0) - (sampleOf(before, selector) ?? 0);
}

const CALL = (method: string, code: string) => `kvferry_daemon_grpc_calls_total{method="kvferry.v1.KvFerry/${method}",code="${code}"}`;
const REMOVED = (reason: string) => `kvferry_daemon_entries_removed_total{reason="${reason}"}`;

let a: PeerDaemon;
let b: PeerDaemon;

beforeAll(async () => {
  [a, b] = await Promise.all([
    // 8 MiB: two 3 MiB parts fit, a third needs one of them gone.
    startPeerDaemon({ bufferSize: "8MiB", args: ["--metrics-listen", "127.0.0.1:0", "--put-deadline-ms", "500"] }),
    startPeerDaemon({ bufferSize: "16MiB", args: ["--metrics-listen", "127.0.0.1:0"] }),
  ]);
}, 60_000);

afterAll(async () => {
  await Promise.all([a?.stop(), b?.stop()]);
});

describe("the daemon's /metrics", () => {
  it("reports the pool, the metadata backend and the daemon's state at start", async () => {
    const m = await scrape(a);
    expect(sampleOf(m, "kvferry_daemon_pool_capacity_bytes")).toBe(8 * MiB);
    expect(sampleOf(m, "kvferry_daemon_pool_used_bytes")).toBe(0);
    expect(sampleOf(m, 'kvferry_daemon_state{state="serving"}')).toBe(1);
    expect(sampleOf(m, 'kvferry_daemon_state{state="draining"}')).toBe(0);
    expect(sampleOf(m, 'kvferry_daemon_metadata_connected{backend="embedded"}')).toBe(1);
    expect(sampleOf(m, 'kvferry_daemon_metadata_registered{backend="embedded"}')).toBe(1);
    // Every removal reason is present from the start, at 0.
    for (const reason of ["consumed", "released", "evicted", "expired", "transferred", "incomplete"]) {
      expect(sampleOf(m, REMOVED(reason)), reason).toBe(0);
    }
    expect(sumOf(m, "process_resident_memory_bytes")).toBeGreaterThan(0);
  });

  it("counts puts, gets, consumes, releases, evictions, an expiry and a refused put by exact amounts", async () => {
    const c = a.client;
    const before = await scrape(a);

    // Two sealed puts; one read plainly, then consumed; the other released.
    await c.put("m-read", "p", pattern(MiB, 1), { seal: true });
    await c.put("m-release", "p", pattern(MiB, 2), { seal: true });
    const mid = await scrape(a);
    expect(sampleOf(mid, 'kvferry_daemon_entries{state="sealed"}')).toBe(2);
    expect(sampleOf(mid, "kvferry_daemon_pool_used_bytes")).toBe(2 * MiB);
    await c.get("m-read");
    await c.get("m-read", { consume: true });
    await c.release("m-release");

    // Four sealed 3 MiB entries into 8 MiB: the third and fourth each evict the oldest.
    for (let i = 0; i < 4; i++) await c.put(`m-lru-${i}`, "p", pattern(PART, 10 + i), { seal: true });

    // Two open entries take the room of the two sealed ones left (evicted too); a third
    // put then finds nothing to evict, waits the put deadline and is refused.
    await c.put("m-open-0", "p", pattern(PART, 20));
    await c.put("m-open-1", "p", pattern(PART, 21));
    const refused = await rejection(c.put("m-open-2", "p", pattern(PART, 22)));
    expect(refused).toBeInstanceOf(ResourceExhaustedError);
    const full = await scrape(a);
    expect(sampleOf(full, 'kvferry_daemon_entries{state="open"}')).toBe(2);
    expect(sampleOf(full, 'kvferry_daemon_entries{state="sealed"}')).toBe(0);
    expect(sampleOf(full, "kvferry_daemon_pool_used_bytes")).toBe(2 * PART);
    await c.release("m-open-0");
    await c.release("m-open-1");

    // An entry whose lease runs out.
    await c.put("m-expire", "p", pattern(1024, 30), { seal: true, leaseTtlMs: 200 });
    expect(await eventually(async () => moved(before, await scrape(a), REMOVED("expired")) === 1, 10_000)).toBe(true);

    const after = await scrape(a);
    expect(moved(before, after, "kvferry_daemon_puts_total")).toBe(2 + 4 + 2 + 1);
    expect(moved(before, after, "kvferry_daemon_gets_total")).toBe(2);
    expect(moved(before, after, REMOVED("consumed"))).toBe(1);
    expect(moved(before, after, REMOVED("released"))).toBe(3);
    expect(moved(before, after, REMOVED("evicted"))).toBe(4);
    expect(moved(before, after, REMOVED("expired"))).toBe(1);
    expect(moved(before, after, REMOVED("transferred"))).toBe(0);
    expect(moved(before, after, "kvferry_daemon_evicted_bytes_total")).toBe(4 * PART);
    expect(moved(before, after, "kvferry_daemon_put_waits_total")).toBe(1);
    expect(moved(before, after, "kvferry_daemon_put_timeouts_total")).toBe(1);
    expect(moved(before, after, CALL("Put", "OK"))).toBe(9);
    expect(moved(before, after, CALL("Put", "RESOURCE_EXHAUSTED"))).toBe(1);
    expect(moved(before, after, CALL("Release", "OK"))).toBe(3);
    expect(moved(before, after, CALL("ConfirmConsume", "OK"))).toBe(1);
    expect(sampleOf(after, "kvferry_daemon_pool_used_bytes")).toBe(0);
    expect(sumOf(after, "kvferry_daemon_entries")).toBe(0);
  });

  it("counts a push and a pull between two daemons by mode and result, with their bytes and durations", async () => {
    const [aBefore, bBefore] = await Promise.all([scrape(a), scrape(b)]);
    const pushed = [pattern(MiB, 40), pattern(MiB / 2, 41)];
    await a.client.put("m-push", "k", pushed[0]!);
    await a.client.put("m-push", "v", pushed[1]!, { seal: true });
    const push = await a.client.batchTransfer(["m-push", "m-missing"], b.peerAddress, "push");
    expect(codeCounts(push.results)).toEqual({ OK: 1, NOT_FOUND: 1 });
    const pushedBytes = pushed[0]!.length + pushed[1]!.length;

    // B pulls another entry back from A.
    const pulled = pattern(2 * MiB, 42);
    await a.client.put("m-pull", "p", pulled, { seal: true });
    const pull = await b.client.batchTransfer(["m-pull"], a.peerAddress, "pull");
    expect(codeCounts(pull.results)).toEqual({ OK: 1 });

    const [aAfter, bAfter] = await Promise.all([scrape(a), scrape(b)]);
    // The initiators' view: per entry, by mode and result.
    expect(moved(aBefore, aAfter, 'kvferry_daemon_transfers_total{mode="push",result="OK"}')).toBe(1);
    expect(moved(aBefore, aAfter, 'kvferry_daemon_transfers_total{mode="push",result="NOT_FOUND"}')).toBe(1);
    expect(moved(aBefore, aAfter, 'kvferry_daemon_transfer_bytes_total{mode="push"}')).toBe(pushedBytes);
    expect(moved(aBefore, aAfter, 'kvferry_daemon_transfer_duration_seconds_count{mode="push"}')).toBe(1);
    expect(moved(aBefore, aAfter, 'kvferry_daemon_transfer_duration_seconds_bucket{mode="push",le="+Inf"}')).toBe(1);
    expect(moved(bBefore, bAfter, 'kvferry_daemon_transfers_total{mode="pull",result="OK"}')).toBe(1);
    expect(moved(bBefore, bAfter, 'kvferry_daemon_transfer_bytes_total{mode="pull"}')).toBe(pulled.length);
    expect(moved(bBefore, bAfter, 'kvferry_daemon_transfer_duration_seconds_count{mode="pull"}')).toBe(1);
    expect(sumOf(aAfter, "kvferry_daemon_transfers_total", { mode: "pull" }) - sumOf(aBefore, "kvferry_daemon_transfers_total", { mode: "pull" })).toBe(0);

    // The data plane's bytes: what A sent is what B received, both ways.
    expect(moved(aBefore, aAfter, "kvferry_daemon_data_sent_bytes_total")).toBe(pushedBytes + pulled.length);
    expect(moved(bBefore, bAfter, "kvferry_daemon_data_received_bytes_total")).toBe(pushedBytes + pulled.length);
    expect(sampleOf(aAfter, "kvferry_daemon_data_peers_connected")).toBeGreaterThanOrEqual(1);

    // Both moved entries left A (transferred) and landed on B as parts put.
    expect(moved(aBefore, aAfter, REMOVED("transferred"))).toBe(2);
    expect(moved(bBefore, bAfter, "kvferry_daemon_puts_total")).toBe(3);
    expect(moved(aBefore, aAfter, CALL("BatchTransfer", "OK"))).toBe(1);
    expect(sumOf(bAfter, "kvferry_daemon_grpc_calls_total", { method: "kvferry.v1.KvFerryPeer/PrepareReceive", code: "OK" }))
      .toBeGreaterThanOrEqual(1);
    await b.client.release("m-push");
    await b.client.release("m-pull");
  });
});

describe("the daemon's /health", () => {
  it("answers 200 with the metadata backend's state while serving, 404 elsewhere, 405 for other methods", async () => {
    const r = await fetch(`http://${metricsAddress(a)}/health`);
    expect(r.status).toBe(200);
    expect(await r.json()).toEqual({ status: "serving", metadata: { backend: "embedded", connected: true, registered: true } });
    expect((await fetch(`http://${metricsAddress(a)}/nothing`)).status).toBe(404);
    const post = await fetch(`http://${metricsAddress(a)}/metrics`, { method: "POST", body: "x" });
    expect(post.status).toBe(405);
    expect(post.headers.get("allow")).toBe("GET, HEAD");
  });

  it("answers 503 draining while a stopping daemon waits for a call in flight", async () => {
    const d = await startPeerDaemon({ bufferSize: "8MiB", args: ["--metrics-listen", "127.0.0.1:0"] });
    const url = `http://${metricsAddress(d)}/health`;
    try {
      // A Get that waits for an entry nobody puts keeps the drain going for its 8 s.
      const waiting = d.client.get("m-never", { waitMs: 8_000 }).catch((err: Error) => err);
      await sleep(200);
      d.proc.child.kill("SIGTERM");
      let body: unknown;
      const unready = await eventually(async () => {
        const r = await fetch(url).catch(() => undefined);
        if (r?.status !== 503) return false;
        body = await r.json();
        return true;
      }, 5_000);
      expect(unready).toBe(true);
      expect(body).toMatchObject({ status: "draining" });
      await waiting;
      expect(await d.proc.exited).toBe(0);
    } finally {
      await d.stop();
    }
  }, 30_000);
});

describe("the metadata backend's state", () => {
  it("shows a lost redis in the metrics and the body of /health, which stays 200, and its return", async () => {
    const redis = await startRedis();
    const d = await startPeerDaemon({
      bufferSize: "8MiB",
      args: ["--metrics-listen", "127.0.0.1:0", "--metadata-server", redis.url, "--metadata-ttl-ms", "1500", "--metadata-prefix", "it-metrics/"],
    });
    const state = async () => {
      const m = await scrape(d);
      return [sampleOf(m, 'kvferry_daemon_metadata_connected{backend="redis"}'), sampleOf(m, 'kvferry_daemon_metadata_registered{backend="redis"}')];
    };
    const health = async () => {
      const r = await fetch(`http://${metricsAddress(d)}/health`);
      return { code: r.status, body: await r.json() };
    };
    try {
      expect(await state()).toEqual([1, 1]);
      await redis.kill();
      expect(await eventually(async () => (await state())[0] === 0, 10_000)).toBe(true);
      expect(await health()).toEqual({ code: 200, body: { status: "serving", metadata: { backend: "redis", connected: false, registered: false } } });
      await redis.restart();
      expect(await eventually(async () => (await state()).join() === "1,1", 15_000)).toBe(true);
      expect((await health()).body.metadata).toEqual({ backend: "redis", connected: true, registered: true });
    } finally {
      await d.stop();
      await redis.stop();
    }
  }, 60_000);
});

describe("--metrics-listen", () => {
  it("refuses a bad value, naming the flag, the key and what was expected", async () => {
    const r = await runCli(["daemon", "--listen", "127.0.0.1:0", "--metrics-listen", "here:and:there"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/--metrics-listen.*metrics_listen.*"here:and:there".*HOST:PORT/s);
  });

  it("refuses a bad KVFERRY_METRICS_LISTEN, naming the variable", async () => {
    const r = await runCli(["daemon", "--listen", "127.0.0.1:0"], { KVFERRY_METRICS_LISTEN: "99999" });
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/KVFERRY_METRICS_LISTEN.*metrics_listen/s);
  });

  it("fails to start, naming metrics_listen, when the port is taken", async () => {
    const taken = createServer();
    await new Promise<void>((resolve) => taken.listen(0, "127.0.0.1", resolve));
    const port = (taken.address() as { port: number }).port;
    try {
      const r = await runCli(["daemon", "--listen", "127.0.0.1:0", "--kv-buffer-size", "8MiB", "--metrics-listen", `127.0.0.1:${port}`], {}, 30_000);
      expect(r.code).toBe(1);
      expect(r.stdout + r.stderr).toMatch(new RegExp(`metrics endpoint \\(metrics_listen\\) on 127\\.0\\.0\\.1:${port}: address already in use`));
    } finally {
      taken.close();
    }
  }, 40_000);
});
