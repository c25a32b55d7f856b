// The redis node registry against a real redis-server on a loopback port: the contract
// every refreshing backend keeps (test/helpers/registry-contract.ts: registration, watch
// events, TTL lapses, redis restarting empty, unreachable servers, prefixes, undecodable
// records), then what is redis's own: the database in `where`, the TTL on the key, and
// lookups that do not wait for a reconnect (or a frozen server) when the cache can answer.
import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { RedisRegistry } from "../../src/metadata/redis.js";
import { nodeKey } from "../../src/metadata/registry.js";
import { MARGIN_MS, node, registryContract, sleep, TTL_MS, useRegistries, waitFor, type ContractServer } from "../helpers/registry-contract.js";
import { startRedis, type RedisServer } from "../helpers/redis-server.js";

/** A client of the test's own; one per call, so that it never outlives a server that stops. */
async function rawGet(port: number, key: string): Promise<string | undefined> {
  const raw = new Redis({ host: "127.0.0.1", port, maxRetriesPerRequest: 1, lazyConnect: true });
  raw.on("error", () => {});
  try {
    await raw.connect();
    return (await raw.get(key)) ?? undefined;
  } finally {
    raw.disconnect();
  }
}

/** INFO from a client of the test's own. */
async function rawInfo(port: number): Promise<string> {
  const raw = new Redis({ host: "127.0.0.1", port, maxRetriesPerRequest: 1, lazyConnect: true });
  raw.on("error", () => {});
  try {
    await raw.connect();
    return await raw.info("server");
  } finally {
    raw.disconnect();
  }
}

function contractServer(redis: RedisServer): ContractServer {
  return {
    address: redis.url,
    named: `redis at ${redis.address}`,
    get: (key) => rawGet(redis.port, key),
    kill: () => redis.kill(),
    restart: () => redis.restart(),
    stop: () => redis.stop(),
  };
}

registryContract({
  name: "redis",
  module: { path: "src/metadata/redis.ts", className: "RedisRegistry" },
  // Nodes announce themselves on the events channel: watchers hear at once.
  noticeMs: MARGIN_MS,
  start: async () => contractServer(await startRedis()),
  at: (port) => ({ address: `redis://127.0.0.1:${port}`, named: `redis at 127.0.0.1:${port}` }),
  open: (address, options, log) => new RedisRegistry(address, options, log),
  plant: async (server, prefix, nodeId, text) => {
    const raw = new Redis(server.address, { maxRetriesPerRequest: 1 });
    try {
      await raw.set(nodeKey(prefix, nodeId), text);
    } finally {
      raw.disconnect();
    }
  },
});

describe("redis node registry", () => {
  let redis: RedisServer;
  let raw: Redis;
  const registries = useRegistries((address, options, log) => new RedisRegistry(address, options, log), () => redis.url);
  const registry = registries.open;

  beforeAll(async () => {
    redis = await startRedis();
    raw = new Redis({ host: "127.0.0.1", port: redis.port, maxRetriesPerRequest: 1, lazyConnect: true });
    raw.on("error", () => {});
  });

  afterAll(async () => {
    raw?.disconnect();
    await redis?.stop();
  });

  it("names the database in `where` when it is not 0", () => {
    expect(registry({ server: `${redis.url}/3` }).where).toBe(`redis at ${redis.address}/3 (prefix "${registries.prefix}")`);
  });

  /** Process warnings (MaxListenersExceededWarning, ...) emitted while `body` runs, and a moment after. */
  async function warningsDuring(body: () => Promise<void>): Promise<string[]> {
    const warnings: string[] = [];
    const onWarning = (w: Error) => warnings.push(`${w.name}: ${w.message}`);
    process.on("warning", onWarning);
    try {
      await body();
      await sleep(50); // warnings are emitted on the next tick
    } finally {
      process.off("warning", onWarning);
    }
    return warnings;
  }

  /** 20 lookups of `id` at once: what each found and how long each took. */
  async function concurrentLookups(r: RedisRegistry, id: string): Promise<Array<{ found?: string; ms: number }>> {
    return Promise.all(
      Array.from({ length: 20 }, async () => {
        const started = Date.now();
        const found = (await r.lookup(id))?.nodeId;
        return { found, ms: Date.now() - started };
      }),
    );
  }

  // "At once" against what waiting on redis costs: a command waits up to the registry's bound,
  // min(ttl, 5 s), so with a TTL of 15 s an answer from the last known state is one that
  // comes well under 5 s, however busy the machine.
  const SLOW_TTL_MS = 15_000;
  const AT_ONCE_MS = 2_500;

  it("answers 20 concurrent lookups from the last known state at once while redis is down, with no listener warning", async () => {
    const own = await startRedis();
    try {
      const a = registry({ server: own.url, ttlMs: SLOW_TTL_MS });
      const b = registry({ server: own.url, ttlMs: SLOW_TTL_MS });
      const reader = registry({ server: own.url, ttlMs: SLOW_TTL_MS }); // no view of its own: must ask, and fail
      await a.register(node("a"));
      await b.register(node("b"));
      expect((await a.list()).map((n) => n.nodeId)).toEqual(["a", "b"]); // what a knows
      let answers: Array<{ found?: string; ms: number }> = [];
      let listed: { ids: string[]; ms: number } | undefined;
      let readerAnswers: PromiseSettledResult<unknown>[] = [];
      const warnings = await warningsDuring(async () => {
        await own.kill();
        await sleep(1_000); // reconnect attempts back off, up to ttl/3 apart
        answers = await concurrentLookups(a, "b");
        const started = Date.now();
        listed = { ids: (await a.list()).map((n) => n.nodeId), ms: Date.now() - started };
        readerAnswers = await Promise.allSettled(Array.from({ length: 20 }, () => reader.lookup("b")));
      });
      expect(warnings.filter((w) => w.includes("MaxListeners"))).toEqual([]);
      expect(readerAnswers.map((r) => r.status)).toEqual(Array(20).fill("rejected"));
      expect(answers.map((x) => x.found)).toEqual(Array(20).fill("b"));
      expect(Math.max(...answers.map((x) => x.ms))).toBeLessThan(AT_ONCE_MS);
      expect(listed?.ids).toEqual(["a", "b"]);
      expect(listed?.ms).toBeLessThan(AT_ONCE_MS);
    } finally {
      await own.stop();
    }
  });

  it("answers from the last known state at once while redis is frozen, after one command timed out", async () => {
    const own = await startRedis();
    const info = await rawInfo(own.port);
    const pid = Number(/process_id:(\d+)/.exec(info)?.[1]);
    expect(pid).toBeGreaterThan(0);
    try {
      const a = registry({ server: own.url, ttlMs: SLOW_TTL_MS });
      const b = registry({ server: own.url, ttlMs: SLOW_TTL_MS });
      await a.register(node("a"));
      await b.register(node("b"));
      expect((await a.list()).map((n) => n.nodeId)).toEqual(["a", "b"]); // what a knows
      process.kill(pid, "SIGSTOP");
      // The first command to time out (a lookup, or the period's write) shows redis stalled.
      expect((await a.lookup("b"))?.nodeId).toBe("b");
      const answers = await concurrentLookups(a, "b");
      expect(answers.map((x) => x.found)).toEqual(Array(20).fill("b"));
      expect(Math.max(...answers.map((x) => x.ms))).toBeLessThan(AT_ONCE_MS);
      // Thawed: lookups ask redis again (after the next command answers, a period's write at
      // the latest) and see what changed meanwhile.
      process.kill(pid, "SIGCONT");
      await b.close();
      await waitFor("a no longer finds b", async () => (await a.lookup("b")) === undefined || undefined, SLOW_TTL_MS + MARGIN_MS);
    } finally {
      process.kill(pid, "SIGCONT");
      await own.stop();
    }
  });

  it("writes each record under its node key with a TTL of at most ttlMs", async () => {
    const a = registry();
    await a.register(node("a"));
    expect(JSON.parse((await raw.get(nodeKey(registries.prefix, "a")))!).nodeId).toBe("a");
    const pttl = await raw.pttl(nodeKey(registries.prefix, "a"));
    expect(pttl).toBeGreaterThan(0);
    expect(pttl).toBeLessThanOrEqual(TTL_MS);
  });
});
