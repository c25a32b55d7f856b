// The redis node registry against a real redis-server on a loopback port: the contract
// every refreshing backend keeps (test/helpers/registry-contract.ts: registration, watch
// events, TTL lapses, redis restarting empty, unreachable servers, prefixes, undecodable
// records), then what is redis's own: the database in `where`, and the TTL on the key.
import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { RedisRegistry } from "../../src/metadata/redis.js";
import { nodeKey } from "../../src/metadata/registry.js";
import { MARGIN_MS, node, registryContract, TTL_MS, useRegistries, type ContractServer } from "../helpers/registry-contract.js";
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

  it("writes each record under its node key with a TTL of at most ttlMs", async () => {
    const a = registry();
    await a.register(node("a"));
    expect(JSON.parse((await raw.get(nodeKey(registries.prefix, "a")))!).nodeId).toBe("a");
    const pttl = await raw.pttl(nodeKey(registries.prefix, "a"));
    expect(pttl).toBeGreaterThan(0);
    expect(pttl).toBeLessThanOrEqual(TTL_MS);
  });
});
