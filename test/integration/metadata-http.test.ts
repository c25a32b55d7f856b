// The http metadata protocol as `kvferry metadata-server` serves it (a real process, built
// from dist/), and the http node registry on top of it: the contract every refreshing
// backend keeps (test/helpers/registry-contract.ts: registration, watch events, records
// going stale, the server restarting empty, unreachable and silent servers, prefixes,
// undecodable records), with the node index checked along the way, then what is http's
// own: an index that a concurrent write lost an entry from, or that does not decode.
import { pino } from "pino";
import { connect } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { HttpRegistry } from "../../src/metadata/http.js";
import { nodeKey } from "../../src/metadata/registry.js";
import {
  indexOf,
  keyUrl,
  rawGet,
  rawPut,
  runMetadataServer,
  spawnMetadataServer,
  type MetadataServerProcess,
} from "../helpers/metadata-server.js";
import { freePort } from "../helpers/ports.js";
import { capturingLogger, MARGIN_MS, node, registryContract, TTL_MS, useRegistries, warnedAbout, waitFor } from "../helpers/registry-contract.js";

let server: MetadataServerProcess;

beforeAll(async () => {
  server = await spawnMetadataServer(["--listen", "127.0.0.1:0"]);
});

afterAll(async () => {
  await server?.kill();
});

describe("kvferry metadata-server", () => {
  it("logs the URL it serves once listening, on the port it picked", () => {
    expect(server.port).toBeGreaterThan(0);
    expect(server.url).toBe(`http://127.0.0.1:${server.port}/metadata`);
  });

  it("answers a request target no URL parser accepts with 400, and keeps serving (and its records)", async () => {
    expect((await fetch(keyUrl(server.url, "survivor"), { method: "PUT", body: "still here" })).status).toBe(200);
    const reply = await new Promise<string>((resolve, reject) => {
      const socket = connect(server.port, "127.0.0.1", () => socket.write("GET //[ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"));
      let got = "";
      socket.on("data", (d) => (got += d));
      socket.on("end", () => resolve(got));
      socket.on("error", reject);
    });
    expect(reply).toMatch(/^HTTP\/1\.1 400 /);
    expect(await (await fetch(keyUrl(server.url, "survivor"))).text()).toBe("still here");
  });

  it("answers GET / PUT / DELETE with ?key=, 404 for an absent key, with Mooncake's words", async () => {
    const key = "a key/with ?&=+ and é";
    const value = JSON.stringify({ text: "värde ✓", n: 1 });
    const get = () => fetch(keyUrl(server.url, key));
    const answer = async (res: Response | Promise<Response>) => {
      const r = await res;
      return [r.status, await r.text()];
    };
    expect(await answer(get())).toEqual([404, "metadata not found"]);
    expect(await answer(fetch(keyUrl(server.url, key), { method: "PUT", body: value }))).toEqual([200, "metadata updated"]);
    const got = await get();
    expect([got.status, got.headers.get("content-type"), await got.text()]).toEqual([200, "application/json", value]);
    // Overwritten in place (no "rpc_meta" in the key).
    expect(await answer(fetch(keyUrl(server.url, key), { method: "PUT", body: "second" }))).toEqual([200, "metadata updated"]);
    expect(await (await get()).text()).toBe("second");
    // An empty value is a value.
    expect((await fetch(keyUrl(server.url, "empty"), { method: "PUT", body: "" })).status).toBe(200);
    const empty = await fetch(keyUrl(server.url, "empty"));
    expect([empty.status, await empty.text()]).toEqual([200, ""]);
    expect(await answer(fetch(keyUrl(server.url, key), { method: "DELETE" }))).toEqual([200, "metadata deleted"]);
    expect(await answer(fetch(keyUrl(server.url, key), { method: "DELETE" }))).toEqual([404, "metadata not found"]);
    expect((await get()).status).toBe(404);
  });

  it("writes a key containing rpc_meta once: a different value is refused until a DELETE, the same one is no change", async () => {
    const put = async (key: string, body: string) => {
      const res = await fetch(keyUrl(server.url, key), { method: "PUT", body });
      return [res.status, await res.text()];
    };
    const key = "mooncake/rpc_meta/127.0.0.1:20001";
    const first = JSON.stringify({ ip_or_host_name: "127.0.0.1", rpc_port: 15001 });
    const second = JSON.stringify({ ip_or_host_name: "127.0.0.1", rpc_port: 15002 });
    expect(await put(key, first)).toEqual([200, "metadata updated"]);
    expect(await put(key, second)).toEqual([400, "Duplicate rpc_meta key not allowed"]);
    expect(await rawGet(server.url, key)).toBe(first); // the first engine's address stays
    expect(await put(key, first)).toEqual([200, "metadata unchanged"]); // an engine republishing
    expect((await fetch(keyUrl(server.url, key), { method: "DELETE" })).status).toBe(200);
    expect(await put(key, second)).toEqual([200, "metadata updated"]); // the name is free again
    expect(await rawGet(server.url, key)).toBe(second);
    // Anywhere in the key, as Mooncake matches it; other keys are overwritten.
    expect(await put("custom/rpc_meta_x", "a")).toEqual([200, "metadata updated"]);
    expect((await put("custom/rpc_meta_x", "b"))[0]).toBe(400);
    expect(await put("mooncake/ram/127.0.0.1:20001", "a")).toEqual([200, "metadata updated"]);
    expect(await put("mooncake/ram/127.0.0.1:20001", "b")).toEqual([200, "metadata updated"]);
  });

  it("answers GET /health with 200 OK, as Mooncake's server does", async () => {
    const res = await fetch(new URL("/health", server.url));
    expect([res.status, await res.text()]).toEqual([200, "OK"]);
  });

  it("refuses a missing or empty key (400), other methods (405 with Allow) and other paths (404)", async () => {
    for (const url of [server.url, `${server.url}?key=`, `${server.url}?other=1`]) {
      const res = await fetch(url);
      expect(res.status).toBe(400);
      expect(await res.text()).toMatch(/key/);
    }
    const post = await fetch(keyUrl(server.url, "k"), { method: "POST", body: "x" });
    expect(post.status).toBe(405);
    expect(post.headers.get("allow")).toBe("GET, PUT, DELETE");
    await post.text();
    const elsewhere = await fetch(`http://127.0.0.1:${server.port}/other?key=k`);
    expect(elsewhere.status).toBe(404);
    expect(await elsewhere.text()).toMatch(/\/metadata/);
  });

  it("accepts a 1 MiB value and refuses a larger one with 413, declared or streamed", async () => {
    const MiB = 1 << 20;
    expect((await fetch(keyUrl(server.url, "max"), { method: "PUT", body: "x".repeat(MiB) })).status).toBe(200);
    expect((await rawGet(server.url, "max"))?.length).toBe(MiB);
    const declared = await fetch(keyUrl(server.url, "big"), { method: "PUT", body: "x".repeat(MiB + 1) });
    expect(declared.status).toBe(413);
    expect(await declared.text()).toMatch(/1048576 bytes/);
    // Without a content-length: refused once the limit is passed.
    const chunk = new Uint8Array(256 * 1024).fill(120);
    let sent = 0;
    const body = new ReadableStream<Uint8Array>({
      pull(controller) {
        if (sent >= 2 * MiB) return controller.close();
        sent += chunk.length;
        controller.enqueue(chunk);
      },
    });
    const streamed = await fetch(keyUrl(server.url, "big"), { method: "PUT", body, duplex: "half" } as RequestInit).then(
      (res) => res.status,
      () => 413, // the server may close the connection before the client has sent everything
    );
    expect(streamed).toBe(413);
    expect(await rawGet(server.url, "big")).toBeUndefined();
  });

  it("refuses an oversized value announced with Expect: 100-continue before the body is sent", async () => {
    const { request } = await import("node:http");
    const outcome = await new Promise<{ status: number; continued: boolean }>((resolve, reject) => {
      let continued = false;
      const req = request(keyUrl(server.url, "big"), {
        method: "PUT",
        headers: { expect: "100-continue", "content-length": String(2 << 20) },
        timeout: 5_000,
      });
      req.on("continue", () => {
        continued = true;
        req.end(Buffer.alloc(2 << 20));
      });
      req.on("response", (res) => {
        res.resume();
        resolve({ status: res.statusCode ?? 0, continued });
        req.destroy();
      });
      req.on("timeout", () => req.destroy(new Error("no answer")));
      req.on("error", reject);
      req.flushHeaders();
    });
    expect(outcome).toEqual({ status: 413, continued: false });
  });

  it("bounds the keys and bytes it holds (507 with a message), and frees them on DELETE", async () => {
    const { startMetadataServer } = await import("../../src/metadata/http-server.js");
    const small = await startMetadataServer({ host: "127.0.0.1", port: 0, maxKeys: 2, maxTotalBytes: 10 }, pino({ level: "silent" }));
    try {
      const put = (key: string, value: string) => fetch(keyUrl(small.url, key), { method: "PUT", body: value });
      expect((await put("a", "12345")).status).toBe(200);
      expect((await put("b", "12345")).status).toBe(200);
      const third = await put("c", "1");
      expect(third.status).toBe(507);
      expect(await third.text()).toMatch(/maximum of 2 keys/);
      expect((await put("a", "123456")).status).toBe(507); // 11 bytes in all
      expect((await put("a", "1234")).status).toBe(200); // replacing frees the old value
      expect((await fetch(keyUrl(small.url, "b"), { method: "DELETE" })).status).toBe(200);
      expect((await put("c", "123456")).status).toBe(200);
    } finally {
      await small.close();
    }
  });

  it("exits 2 on a bad flag, naming the flag, the value and what was expected", async () => {
    const listen = await runMetadataServer(["--listen", "nowhere"]);
    expect(listen.code).toBe(2);
    expect(listen.stderr).toMatch(/--listen.*"nowhere".*expected HOST:PORT/);
    const path = await runMetadataServer(["--path", "metadata"]);
    expect(path.code).toBe(2);
    expect(path.stderr).toMatch(/--path.*"metadata".*expected a URL path starting with "\/"/);
    const unknown = await runMetadataServer(["--port", "1"]);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toMatch(/--port/);
  });

  it("serves another path when asked, and exits 0 on SIGTERM", async () => {
    const other = await spawnMetadataServer(["--listen", "127.0.0.1:0", "--path", "/kv/meta"]);
    try {
      expect(other.url).toBe(`http://127.0.0.1:${other.port}/kv/meta`);
      await rawPut(other.url, "k", "v");
      expect(await rawGet(other.url, "k")).toBe("v");
      expect((await fetch(`http://127.0.0.1:${other.port}/metadata?key=k`)).status).toBe(404);
    } finally {
      expect(await other.stop()).toBe(0);
    }
  });
});

registryContract({
  name: "http",
  module: { path: "src/metadata/http.ts", className: "HttpRegistry" },
  // Watchers hear of a change at their next read of the index, every ttl/3.
  noticeMs: TTL_MS / 3 + MARGIN_MS,
  start: async () => {
    const own = await spawnMetadataServer(["--listen", `127.0.0.1:${await freePort()}`]);
    return {
      address: own.url,
      named: `http at ${own.url}`,
      get: (key) => rawGet(own.url, key),
      kill: () => own.kill(),
      restart: () => own.restart(),
      stop: async () => void (await own.stop()),
    };
  },
  at: (port) => {
    const url = `http://127.0.0.1:${port}/metadata`;
    return { address: url, named: `http at ${url}` };
  },
  open: (address, options, log) => new HttpRegistry(address, options, log),
  // The record first: an id in the index without one is pruned as gone.
  plant: async (server, prefix, nodeId, text) => {
    await rawPut(server.address, nodeKey(prefix, nodeId), text);
    await rawPut(server.address, `${prefix}nodes`, JSON.stringify([...(await indexOf(server.address, prefix)), nodeId]));
  },
  index: (server, prefix) => indexOf(server.address, prefix),
});

describe("http node registry", () => {
  const registries = useRegistries((address, options, log) => new HttpRegistry(address, options, log), () => server.url);
  const registry = registries.open;

  it("a node lost from the index by a concurrent write adds itself back at its next refresh", async () => {
    const a = registry();
    const b = registry();
    await a.register(node("a"));
    await b.register(node("b"));
    await rawPut(server.url, `${registries.prefix}nodes`, JSON.stringify(["b"])); // a's entry overwritten
    await waitFor("a back in the index", async () => (await indexOf(server.url, registries.prefix)).includes("a"), TTL_MS / 3 + MARGIN_MS);
    expect((await indexOf(server.url, registries.prefix)).sort()).toEqual(["a", "b"]);
  });

  it("rewrites an index that does not decode, warning once with its key", async () => {
    const { log, lines } = capturingLogger();
    const a = registry({ log });
    await a.register(node("a"));
    const { prefix } = registries;
    await rawPut(server.url, `${prefix}nodes`, "not an index");
    await waitFor("the index rewritten", async () => (await indexOf(server.url, prefix).catch((): string[] => [])).includes("a"), TTL_MS / 3 + MARGIN_MS);
    expect(warnedAbout(lines, `${prefix}nodes`)).toHaveLength(1);
  });
});
