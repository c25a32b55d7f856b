// `kvferry metadata-server` with Mooncake's own transfer engine as its client (PyPI:
// mooncake-transfer-engine-non-cuda, TCP transport, each engine a Python process): two
// engines register through it and move bytes, and a third under a name in use is refused
// as Mooncake's own http metadata server refuses it. Skipped, saying why, only when the
// package cannot be installed (scripts/mooncake-venv.sh exits 3).
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { rawGet, spawnMetadataServer, type MetadataServerProcess } from "../helpers/metadata-server.js";
import { mooncakePython, startMooncakeEngine, type MooncakeEngine } from "../helpers/mooncake.js";

const mooncake = await mooncakePython();
const skip = "skip" in mooncake ? mooncake.skip : undefined;
if (skip !== undefined) console.warn(`mooncake-metadata: SKIPPED, the Mooncake package cannot be installed: ${skip}`);

/** Engine names (Mooncake's local_hostname): its segment's name; the port in it binds nothing. */
const FIRST = "127.0.0.1:20001";
const SECOND = "127.0.0.1:20002";
const SIZE = 4 << 20;
const rpcMetaKey = (name: string) => `mooncake/rpc_meta/${name}`;
const segmentKey = (name: string) => `mooncake/ram/${name}`;

let server: MetadataServerProcess;
const engines: MooncakeEngine[] = [];

describe.skipIf(skip !== undefined)(`Mooncake transfer engines on kvferry metadata-server${skip ? ` (skipped: ${skip})` : ""}`, () => {
  let python: string;
  const start = async (name: string) => {
    const engine = await startMooncakeEngine(python, name, server.url, SIZE);
    engines.push(engine);
    return engine;
  };

  beforeAll(async () => {
    if ("error" in mooncake) throw new Error(mooncake.error);
    if ("python" in mooncake) python = mooncake.python;
    server = await spawnMetadataServer(["--listen", "127.0.0.1:0"]);
  });

  afterAll(async () => {
    for (const engine of engines) engine.kill();
    await server?.kill();
  });

  it("two engines register and move bytes; a third under a name in use is refused, and the name is free once its engine exits", async () => {
    const first = await start(FIRST);
    expect(first.started).toMatchObject({ initialized: true });
    const published = await rawGet(server.url, rpcMetaKey(FIRST));
    expect(JSON.parse(published!)).toEqual({ ip_or_host_name: "127.0.0.1", rpc_port: first.started.rpc_port });
    const second = await start(SECOND);
    expect(second.started).toMatchObject({ initialized: true });

    // A third engine under the first one's name: its PUT of a different address is refused,
    // so it fails to start and the first engine's address stays.
    const third = await start(FIRST);
    expect(third.started).toMatchObject({ initialized: false });
    expect(third.stderr()).toContain("http=400 body: Duplicate rpc_meta key not allowed");
    expect(await rawGet(server.url, rpcMetaKey(FIRST))).toBe(published);
    expect(await third.quit()).toBe(1);

    // The second engine writes its buffer into the first one's, found through the server.
    const source = await second.ask("sha256");
    const before = await first.ask("sha256");
    expect(before.sha256).not.toBe(source.sha256); // two buffers of random bytes
    expect(await second.ask(`write ${FIRST}`)).toEqual({ rc: 0 });
    expect(await first.ask("sha256")).toEqual(source);

    // An engine that exits removes its records; its name can then be taken again.
    expect(await first.quit()).toBe(0);
    expect(await rawGet(server.url, rpcMetaKey(FIRST))).toBeUndefined();
    expect(await rawGet(server.url, segmentKey(FIRST))).toBeUndefined();
    const again = await start(FIRST);
    expect(again.started).toMatchObject({ initialized: true });
    expect(JSON.parse((await rawGet(server.url, rpcMetaKey(FIRST)))!)).toEqual({ ip_or_host_name: "127.0.0.1", rpc_port: again.started.rpc_port });
    expect(await again.quit()).toBe(0);
    expect(await second.quit()).toBe(0);
  }, 180_000);
});
