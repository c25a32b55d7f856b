// Node records as read from a backend or a Hello: what decides where a daemon dials is
// checked strictly; the rest is bounded.
import { describe, expect, it } from "vitest";
import { decodeNode, encodeNode, type NodeRecord } from "../../src/metadata/node.js";

const good: NodeRecord = {
  nodeId: "n1", hostname: "h", clientAddress: "127.0.0.1:50051", peerAddress: "127.0.0.1:13004", dataAddress: "127.0.0.1:13003",
  transports: [{ name: "tcp", params: { connectionsPerPeer: 4 } }], poolBytes: 1 << 30, poolUsedBytes: 0, version: "0.1.0",
  startedAt: 1, updatedAt: 2, engines: [{ url: "http://127.0.0.1:8100", role: "prefill", models: ["m"] }],
};

describe("decodeNode", () => {
  it("reads back what encodeNode wrote", () => {
    expect(decodeNode(encodeNode(good))).toEqual(good);
  });

  it.each([
    ["a unix socket as peer address", { peerAddress: "unix:/tmp/evil.sock" }, /peerAddress is missing or not "host:port"/],
    ["a URL as peer address", { peerAddress: "http://127.0.0.1:1" }, /peerAddress/],
    ["a peer address without a port", { peerAddress: "127.0.0.1" }, /peerAddress/],
    ["a data address with a bad port", { dataAddress: "127.0.0.1:70000" }, /dataAddress/],
    ["a node id with a space", { nodeId: "a b" }, /nodeId/],
    ["no node id", { nodeId: undefined }, /nodeId/],
  ])("refuses %s", (_what, patch, message) => {
    const decoded = decodeNode(JSON.stringify({ ...good, ...patch }));
    expect(decoded).toBeInstanceOf(Error);
    expect((decoded as Error).message).toMatch(message);
  });

  it("keeps at most 8 transports of at most 32 scalar parameters each", () => {
    const params = Object.fromEntries(Array.from({ length: 40 }, (_, i) => [`p${i}`, i]));
    const decoded = decodeNode(JSON.stringify({
      ...good,
      transports: Array.from({ length: 20 }, () => ({ name: "tcp", params: { ...params, nested: { x: 1 } } })),
    })) as NodeRecord;
    expect(decoded.transports).toHaveLength(8);
    expect(Object.keys(decoded.transports[0]!.params)).toHaveLength(32);
    expect(decoded.transports[0]!.params).not.toHaveProperty("nested");
  });

  it("keeps at most 64 well-formed engines and drops the rest", () => {
    const engines = [
      { url: "http://127.0.0.1:8200/", role: "decode", models: ["a", "has space", 7] },
      { url: "ftp://127.0.0.1:1", role: "decode" },
      { url: "http://0.0.0.0:1", role: "decode" },
      { url: "http://127.0.0.1:2", role: "router" },
      "not an object",
      ...Array.from({ length: 100 }, (_, i) => ({ url: `http://127.0.0.1:${3000 + i}`, role: "both" })),
    ];
    const decoded = decodeNode(JSON.stringify({ ...good, engines })) as NodeRecord;
    // The first 64 entries are read; the 4 bad ones among them are dropped.
    expect(decoded.engines).toHaveLength(64 - 4);
    expect(decoded.engines[0]).toEqual({ url: "http://127.0.0.1:8200", role: "decode", models: ["a"] });
    expect(decoded.engines[1]).toEqual({ url: "http://127.0.0.1:3000", role: "both", models: [] });
  });

  it("reads a record without engines (an older daemon's) as having none", () => {
    const { engines: _, ...older } = good;
    expect((decodeNode(JSON.stringify(older)) as NodeRecord).engines).toEqual([]);
  });
});
