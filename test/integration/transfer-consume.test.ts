// Exactly once across daemons: an entry that is moved away (PUSH without keep_source, or a
// PULL that releases the source) is held exclusively on its source meanwhile, so a consumer
// racing the move gets it on exactly one daemon, never on both.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { NotFoundError } from "../../src/errors.js";
import type { KvferryClient } from "../../src/client/client.js";
import { MiB, pattern, sleep } from "../helpers/daemon.js";
import { digest, entrySpec, putEntry, startPeerDaemon, type PeerDaemon } from "../helpers/transfer.js";

let a: PeerDaemon;
let b: PeerDaemon;

beforeAll(async () => {
  // b is small: an open entry there keeps a move waiting for room, as long as the test likes.
  [a, b] = await Promise.all([startPeerDaemon({ bufferSize: "256MiB" }), startPeerDaemon({ bufferSize: "64MiB" })]);
});

afterAll(async () => {
  await Promise.all([a?.stop(), b?.stop()]);
});

/** A consuming GetStream's outcome: the bytes' digest, or the error. */
async function consume(client: KvferryClient, id: string, waitMs: number): Promise<{ digest?: string; error?: Error }> {
  try {
    const got = await client.getStream(id, { consume: true, waitMs, timeoutMs: waitMs + 20_000 });
    return { digest: digest(got.parts.get("layer.0")!) };
  } catch (error) {
    return { error: error as Error };
  }
}

describe.each(["push", "pull"] as const)("a consumer on the source while a %s moves the entry away", (mode) => {
  it("waits for the move and hears transferred: the entry is consumed on exactly one daemon, never on both", async () => {
    const blocker = `blocker-${mode}`;
    await b.client.put(blocker, "kv", pattern(40 * MiB, 1)); // open: never evicted
    const spec = entrySpec(`moved-${mode}`, [32 * MiB]);
    const hashes = await putEntry(a.client, spec);

    const move =
      mode === "push"
        ? a.client.batchTransfer([spec.id], b.peerAddress, "push", { keepSource: false })
        : b.client.batchTransfer([spec.id], a.peerAddress, "pull", { keepSource: false });
    // The move holds the source entry and waits for room on b (bounded: 10 s).
    for (let i = 0; i < 200 && (await a.client.stat(spec.id)).readers === 0; i++) await sleep(50);
    expect((await a.client.stat(spec.id)).readers).toBe(1);

    const onSource = consume(a.newClient(), spec.id, 20_000);
    await sleep(500); // time enough for a consumer that does not wait to read and confirm
    await b.client.release(blocker); // room on b: the move goes on
    const result = (await move).results[0]!;
    expect(result.code, result.message).toBe(0);
    const [src, dst] = await Promise.all([onSource, consume(b.newClient(), spec.id, 10_000)]);

    const outcome = `source: ${src.digest ? "got it" : src.error!.message}; destination: ${dst.digest ? "got it" : dst.error!.message}`;
    expect([src, dst].filter((o) => o.digest !== undefined), outcome).toHaveLength(1);
    expect(dst.digest, outcome).toBe(hashes.get("layer.0"));
    expect(src.error, outcome).toBeInstanceOf(NotFoundError);
    expect((src.error as NotFoundError).reason).toBe("transferred");
  });
});
