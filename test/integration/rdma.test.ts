// protocol "rdma" as an operator meets it: what a daemon publishes so that peers can reach
// its UCX rails, a cluster that mixes protocols refusing the other side by name, and bad
// device lists stopping start-up. (The transfer and fault suites themselves run over UCX in
// the vitest project "rdma"; native/test/ucx_transfer_test.cc covers the transport.)
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { status } from "@grpc/grpc-js";
import type { NodeInfo } from "../../src/gen/kvferry/v1/node.js";
import { runCli } from "../helpers/daemon.js";
import { UCX_BUILT, UCX_TEST_ENV, entrySpec, expectAllOk, putEntry, startPeerDaemon, type PeerDaemon } from "../helpers/transfer.js";

const MiB = 1 << 20;

describe.skipIf(!UCX_BUILT)("protocol rdma", () => {
  let a: PeerDaemon;
  let b: PeerDaemon;
  let tcp: PeerDaemon;

  beforeAll(async () => {
    const rdma = { bufferSize: "128MiB", args: ["--protocol", "rdma"], env: UCX_TEST_ENV };
    [a, b, tcp] = await Promise.all([startPeerDaemon(rdma), startPeerDaemon(rdma), startPeerDaemon({ bufferSize: "128MiB" })]);
  });

  afterAll(async () => {
    expect(await Promise.all([a?.stop(), b?.stop(), tcp?.stop()])).toEqual([0, 0, 0]);
  });

  it("publishes its rails' UCX worker addresses in its record, and no data port", async () => {
    const out = await runCli(["status", "--json", "--address", a.address], {}, 30_000);
    expect(out.code, out.stderr).toBe(0);
    const { nodes } = JSON.parse(out.stdout) as { nodes: NodeInfo[] };
    const record = nodes.find((n) => n.peerAddress === a.peerAddress);
    expect(record, out.stdout).toBeDefined();
    expect(record!.dataAddress).toMatch(/:0$/);
    expect(record!.transports.map((t) => t.name)).toEqual(["rdma"]);
    const params = Object.fromEntries(record!.transports[0]!.params.map((p) => [p.key, p.value]));
    expect(params.connectionInfo).toMatch(/^ucx:[A-Za-z0-9_-]+$/);
  });

  it("moves entries between two rdma daemons, and a tcp daemon is refused by name either way", async () => {
    const spec = entrySpec("rdma-mixed-1", [MiB, 3]);
    await putEntry(a.client, spec);
    expectAllOk((await a.client.batchTransfer([spec.id], b.peerAddress, "push")).results);

    const other = entrySpec("rdma-mixed-2", [MiB]);
    await putEntry(tcp.client, other);
    const refused = (await tcp.client.batchTransfer([other.id], b.peerAddress, "push")).results[0]!;
    expect(refused.code).toBe(status.UNAVAILABLE);
    expect(refused.message).toMatch(/"rdma".*"tcp"|"tcp".*"rdma"/);
    const back = (await b.client.batchTransfer([spec.id], tcp.peerAddress, "push")).results[0]!;
    expect(back.code).toBe(status.UNAVAILABLE);
    expect(back.message).toMatch(/"rdma".*"tcp"|"tcp".*"rdma"/);
    // Nothing moved: each side keeps its entry.
    expect((await b.client.stat(spec.id)).state).toBeDefined();
    expect((await tcp.client.stat(other.id)).state).toBeDefined();
    await b.client.release(spec.id);
    await tcp.client.release(other.id);
  });
});

describe.skipIf(!UCX_BUILT)("a bad device_name", () => {
  it("stops start-up naming the key, the value and what was expected", async () => {
    const out = await runCli(["daemon", "--protocol", "rdma", "--device-name", "mlx5_0,,mlx5_1", "--listen", "127.0.0.1:0"], UCX_TEST_ENV, 30_000);
    expect(out.code).toBe(2);
    expect(out.stderr + out.stdout).toMatch(/device_name/);
    expect(out.stderr + out.stdout).toMatch(/mlx5_0,,mlx5_1/);
    expect(out.stderr + out.stdout).toMatch(/device names separated by commas/);
  });
});
