// Two daemons that have never talked start their first BatchTransfers to each other at the
// same moment. Each one's greeting reaches the other while that other is greeting it: the
// channel a daemon is using for its own first calls must survive the other side's greeting
// (it used to be closed under them: INTERNAL "Channel has been shut down", 5 runs of 5).
import { status } from "@grpc/grpc-js";
import { describe, expect, it } from "vitest";
import type { TransferResult } from "../../src/gen/kvferry/v1/kvferry.js";
import { entrySpec, fetchHashes, putEntry, startPeerDaemon, type PeerDaemon } from "../helpers/transfer.js";

const KiB = 1024;
const ROUNDS = 4;

function describeResult(r: TransferResult): string {
  return r.code === status.OK ? "OK" : `${status[r.code]}: ${r.message}`;
}

describe("first transfers both ways at once", () => {
  it("two fresh daemons that push to each other at the same moment both succeed, round after round", async () => {
    for (let round = 0; round < ROUNDS; round++) {
      const pair: PeerDaemon[] = await Promise.all([startPeerDaemon({ bufferSize: "64MiB" }), startPeerDaemon({ bufferSize: "64MiB" })]);
      const [a, b] = pair as [PeerDaemon, PeerDaemon];
      try {
        const fromA = entrySpec(`both-${round}-a`, [64 * KiB, 3]);
        const fromB = entrySpec(`both-${round}-b`, [64 * KiB, 5]);
        const [hashA, hashB] = await Promise.all([putEntry(a.client, fromA), putEntry(b.client, fromB)]);

        const [ra, rb] = await Promise.all([
          a.client.batchTransfer([fromA.id], b.peerAddress, "push", { deadlineMs: 20_000 }),
          b.client.batchTransfer([fromB.id], a.peerAddress, "push", { deadlineMs: 20_000 }),
        ]);

        expect(ra.results.map(describeResult), `round ${round}: a → b`).toEqual(["OK"]);
        expect(rb.results.map(describeResult), `round ${round}: b → a`).toEqual(["OK"]);
        expect(await fetchHashes(b.client, fromA.id)).toEqual(hashA);
        expect(await fetchHashes(a.client, fromB.id)).toEqual(hashB);
        // And the next transfers over the same channels, both ways again.
        const [again1, again2] = await Promise.all([
          a.client.batchTransfer([fromB.id], b.peerAddress, "push", { keepSource: true }),
          b.client.batchTransfer([fromA.id], a.peerAddress, "push", { keepSource: true }),
        ]);
        expect([...again1.results, ...again2.results].map(describeResult), `round ${round}: second transfers`).toEqual(["OK", "OK"]);
      } finally {
        const codes = await Promise.all(pair.map((d) => d.stop()));
        expect(codes, `round ${round}: exit codes`).toEqual([0, 0]);
      }
    }
  }, 120_000);
});
