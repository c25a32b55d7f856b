// The peer API's challenge-response with real daemons: the cluster token never crosses the
// wire, a listener a local client names as target/source learns nothing it could use, a
// wrong token is refused both ways, a session's calls cannot be replayed or altered, and a
// session the server forgot is re-established without the caller noticing.
import { credentials, Metadata, status } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from "vitest";
import { PermissionDeniedError } from "../../src/errors.js";
import {
  COUNTER_METADATA,
  MAC_METADATA,
  PEER_API_PURPOSE,
  SESSION_METADATA,
  bodyDigest,
  callMac,
  clientProof,
  newNonce,
  purposeKey,
  serverProof,
  sessionKey,
} from "../../src/daemon/peer-auth.js";
import { Peer } from "../../src/daemon/peers.js";
import type { TransferResult } from "../../src/gen/kvferry/v1/kvferry.js";
import {
  ConfirmSessionResponse,
  HelloRequest,
  KvFerryPeerClient,
  KvFerryPeerService,
  OpenSessionRequest,
  OpenSessionResponse,
  PrepareReceiveRequest,
  type HelloResponse,
  type PrepareReceiveResponse,
} from "../../src/gen/kvferry/v1/peer.js";
import { MiB, expectStatus, rawUnary, rejection, type Outcome } from "../helpers/daemon.js";
import { recordingListener, recordingRelay, replay, grpcMessages } from "../helpers/peer-auth.js";
import { TOKEN, entrySpec, putEntry, startPeerDaemon, type PeerDaemon } from "../helpers/transfer.js";

const OTHER_TOKEN = "not-the-cluster-token";
const OPEN = "/kvferry.v1.KvFerryPeer/OpenSession";
const HELLO = "/kvferry.v1.KvFerryPeer/Hello";

let a: PeerDaemon;
let b: PeerDaemon;
let c: PeerDaemon;

beforeAll(async () => {
  [a, b, c] = await Promise.all([
    startPeerDaemon({ bufferSize: "64MiB" }),
    startPeerDaemon({ bufferSize: "64MiB" }),
    startPeerDaemon({ bufferSize: "64MiB", token: OTHER_TOKEN }),
  ]);
});

afterAll(async () => {
  await Promise.all([a, b, c].map((d) => d?.stop()));
});

function describeResults(results: TransferResult[]): string[] {
  return results.map((r) => (r.code === status.OK ? "OK" : `${status[r.code]}: ${r.message}`));
}

function rawPeer(address: string): KvFerryPeerClient {
  const client = new KvFerryPeerClient(address, credentials.createInsecure());
  onTestFinished(() => client.close());
  return client;
}

/** The metadata of a session's call: id, counter and the MAC of `request`'s bytes under `key`. */
function signed(id: string, key: Buffer, path: string, counter: number, body: Uint8Array): Metadata {
  const m = new Metadata();
  m.set(SESSION_METADATA, id);
  m.set(COUNTER_METADATA, String(counter));
  m.set(MAC_METADATA, callMac(key, path, counter, bodyDigest(body)).toString("hex"));
  return m;
}

function withMetadata<T>(m: Metadata, start: (m: Metadata, o: { deadline: number }, cb: (err: any, res: T) => void) => unknown): Promise<Outcome<T>> {
  return rawUnary<T>((_ignored, o, cb) => start(m, o, cb));
}

/** Both handshake steps against `address`, proving `token` (the server's proof is not checked). */
async function handshake(client: KvFerryPeerClient, token: string) {
  const k = purposeKey(token, PEER_API_PURPOSE);
  const nonceC = newNonce();
  const opened = await rawUnary<OpenSessionResponse>((m, o, cb) => client.openSession({ clientNonce: nonceC }, m, o, cb));
  if (!opened.ok) throw opened.error;
  const nonceS = Buffer.from(opened.value.serverNonce);
  const confirmed = await rawUnary<ConfirmSessionResponse>((m, o, cb) =>
    client.confirmSession({ sessionId: opened.value.sessionId, clientProof: clientProof(k, nonceC, nonceS) }, m, o, cb),
  );
  return { opened: opened.value, confirmed, id: opened.value.sessionId, key: sessionKey(k, nonceC, nonceS), k, nonceC, nonceS };
}

/** Every form in which the token (or the key derived from it) could leak. */
function secrets(): Buffer[] {
  const k = purposeKey(TOKEN, PEER_API_PURPOSE);
  return [TOKEN, Buffer.from(TOKEN).toString("hex"), Buffer.from(TOKEN).toString("base64"), k.toString("hex"), k.toString("base64")]
    .map((s) => Buffer.from(s))
    .concat([k]);
}

describe("a listener that does not hold the token", () => {
  it("named as BatchTransfer target or Get source, it receives only fresh random nonces: no token, no proof, no call; replayed to a real daemon they open nothing", async () => {
    const rogue = await recordingListener();
    onTestFinished(() => rogue.close());
    const spec = entrySpec("rogue-target", [64 * 1024]);
    await putEntry(a.client, spec);
    onTestFinished(() => a.client.release(spec.id).catch(() => {}));

    const push = await a.client.batchTransfer([spec.id], rogue.address, "push");
    const pull = await a.client.batchTransfer(["rogue-pulled"], rogue.address, "pull");
    const get = await rejection(a.client.get("rogue-got", { source: rogue.address, waitMs: 0 }));

    expect(describeResults(push.results)).toEqual([expect.stringMatching(/^PERMISSION_DENIED: .*could not prove that it holds the cluster token/)]);
    expect(describeResults(pull.results)).toEqual([expect.stringMatching(/^PERMISSION_DENIED: .*could not prove/)]);
    expect(get, get.message).toBeInstanceOf(PermissionDeniedError);
    expect((await a.client.stat(spec.id)).bytes, "the source keeps its entry").toBe(64 * 1024);

    // What it got: one OpenSession per attempt, each carrying 32 random bytes and nothing else.
    expect(rogue.received.length).toBeGreaterThanOrEqual(3);
    const nonces = new Set<string>();
    for (const r of rogue.received) {
      expect(r.headers[":path"]).toBe(OPEN);
      expect(Object.keys(r.headers).filter((h) => h.startsWith("kvferry")), "kvferry metadata").toEqual([]);
      const [message, ...more] = grpcMessages(r.body);
      expect(more).toEqual([]);
      const request = OpenSessionRequest.decode(message!);
      expect(request.clientNonce.length).toBe(32);
      expect(Buffer.from(OpenSessionRequest.encode(request).finish())).toEqual(message);
      nonces.add(Buffer.from(request.clientNonce).toString("hex"));
      const seen = Buffer.concat([Buffer.from(JSON.stringify(r.headers)), r.body]);
      for (const s of secrets()) expect(seen.includes(s), `a form of the token in what the listener got`).toBe(false);
    }
    expect(nonces.size, "every nonce is fresh").toBe(rogue.received.length);

    // Replayed to a daemon that holds the token: each opens a new challenge, which the
    // listener cannot answer; the pending session serves no call.
    for (const r of rogue.received) {
      const answer = await replay(b.peerAddress, OPEN, r.headers, r.body);
      expect(answer.grpcStatus, answer.details).toBe(status.OK);
      const challenge = OpenSessionResponse.decode(answer.messages[0]!);
      const client = rawPeer(b.peerAddress);
      const confirm = await rawUnary((m, o, cb) => client.confirmSession({ sessionId: challenge.sessionId, clientProof: newNonce() }, m, o, cb));
      expectStatus(confirm, status.PERMISSION_DENIED, /client_proof/);
      const body = HelloRequest.encode({ nodeId: "rogue" }).finish();
      const hello = await withMetadata<HelloResponse>(signed(challenge.sessionId, newNonce(), HELLO, 1, body), (m, o, cb) => client.hello({ nodeId: "rogue" }, m, o, cb));
      const err = expectStatus(hello, status.UNAUTHENTICATED);
      expect(err.details).not.toContain(b.dataAddress);
    }
    expect((await b.client.listNodes()).nodes.map((n) => n.peerAddress), "b learned no node").toEqual([b.peerAddress]);
  });
});

describe("a wrong cluster token, both ways", () => {
  it("a daemon with another token is found out by the caller, which never sends its own proof", async () => {
    const relay = await recordingRelay(c.peerAddress);
    onTestFinished(() => relay.close());
    const spec = entrySpec("other-token", [4096]);
    await putEntry(a.client, spec);
    onTestFinished(() => a.client.release(spec.id).catch(() => {}));

    const res = await a.client.batchTransfer([spec.id], relay.address, "push");

    expect(describeResults(res.results)).toEqual([expect.stringMatching(/^PERMISSION_DENIED: .*could not prove that it holds the cluster token.*nothing more was sent/)]);
    expect(relay.paths.length).toBeGreaterThanOrEqual(1);
    expect(new Set(relay.paths), "only OpenSession reached the daemon with the other token").toEqual(new Set([OPEN]));
    expect((await c.client.listNodes()).nodes.map((n) => n.peerAddress), "c learned no node").toEqual([c.peerAddress]);
    expect((await c.client.serverInfo()).entries).toBe(0);
  });

  it("a caller with another token is refused at ConfirmSession, and the session it asked for serves no call", async () => {
    const client = rawPeer(b.peerAddress);
    const s = await handshake(client, OTHER_TOKEN);
    // The caller could have told: b's proof does not check out under its key.
    expect(serverProof(s.k, s.nonceC, s.nonceS).equals(Buffer.from(s.opened.serverProof))).toBe(false);
    const err = expectStatus(s.confirmed, status.PERMISSION_DENIED, /client_proof: wrong proof/);
    const body = HelloRequest.encode({ nodeId: "wrong" }).finish();
    const hello = await withMetadata<HelloResponse>(signed(s.id, s.key, HELLO, 1, body), (m, o, cb) => client.hello({ nodeId: "wrong" }, m, o, cb));
    const refused = expectStatus(hello, status.UNAUTHENTICATED);
    for (const e of [err, refused]) {
      expect(e.details).not.toContain(b.dataAddress);
      expect(e.details).not.toContain(b.peerAddress);
    }
  });

  it("calls without a session, the cluster token in the old kvferry-token metadata or not, are refused UNAUTHENTICATED and reserve nothing", async () => {
    const client = rawPeer(b.peerAddress);
    const before = (await b.client.serverInfo()).bytesUsed;
    for (const token of [TOKEN, undefined]) {
      const m = new Metadata();
      if (token !== undefined) m.set("kvferry-token", token);
      const hello = await withMetadata<HelloResponse>(m, (md, o, cb) => client.hello({ nodeId: "old" }, md, o, cb));
      expect(expectStatus(hello, status.UNAUTHENTICATED, /needs a session/).details).not.toContain(b.dataAddress);
      const prep = await withMetadata<PrepareReceiveResponse>(m, (md, o, cb) =>
        client.prepareReceive({ entries: [{ transferId: "old-style", parts: [{ name: "p", size: MiB }] }], deadlineMs: 5_000, sourceNode: "it" }, md, o, cb),
      );
      expectStatus(prep, status.UNAUTHENTICATED);
    }
    expect((await b.client.serverInfo()).bytesUsed).toBe(before);
  });
});

describe("a session's calls", () => {
  it("a replayed call is refused, and a call whose MAC is for another request is refused with nothing reserved", async () => {
    const client = rawPeer(b.peerAddress);
    const s = await handshake(client, TOKEN);
    expect(s.confirmed.ok, s.confirmed.ok ? "" : s.confirmed.error.details).toBe(true);
    const hello = { nodeId: "replayer" };
    const meta = signed(s.id, s.key, HELLO, 1, HelloRequest.encode(hello).finish());
    const first = await withMetadata<HelloResponse>(meta, (m, o, cb) => client.hello(hello, m, o, cb));
    expect(first.ok && first.value.dataAddress).toBe(b.dataAddress);
    const again = await withMetadata<HelloResponse>(meta, (m, o, cb) => client.hello(hello, m, o, cb));
    expectStatus(again, status.UNAUTHENTICATED, /counter 1 already used/);

    const before = (await b.client.serverInfo()).bytesUsed;
    const small = { entries: [{ transferId: "mac-1", parts: [{ name: "p", size: 1 }] }], deadlineMs: 5_000, sourceNode: "it" };
    const large = { entries: [{ transferId: "mac-1", parts: [{ name: "p", size: 8 * MiB }] }], deadlineMs: 5_000, sourceNode: "it" };
    const path = "/kvferry.v1.KvFerryPeer/PrepareReceive";
    const altered = await withMetadata<PrepareReceiveResponse>(signed(s.id, s.key, path, 2, PrepareReceiveRequest.encode(small).finish()), (m, o, cb) =>
      client.prepareReceive(large, m, o, cb),
    );
    expectStatus(altered, status.PERMISSION_DENIED, /wrong call MAC/);
    expect((await b.client.serverInfo()).bytesUsed).toBe(before);
    // The session still serves honest calls (the refused MAC did not use up counter 2).
    const honest = await withMetadata<HelloResponse>(signed(s.id, s.key, HELLO, 2, HelloRequest.encode(hello).finish()), (m, o, cb) => client.hello(hello, m, o, cb));
    expect(honest.ok, honest.ok ? "" : honest.error.details).toBe(true);
  });

  it("a caller whose session the server forgot (restarted on the same port) authenticates again without failing the call", async () => {
    const first = await startPeerDaemon({ bufferSize: "64MiB" });
    const peer = new Peer(first.peerAddress, TOKEN);
    onTestFinished(() => peer.close());
    const before = await peer.call(KvFerryPeerService.hello, { nodeId: "it" }, 5_000);
    expect(before.dataAddress).toBe(first.dataAddress);
    expect(await first.stop()).toBe(0);
    const port = first.peerAddress.split(":").pop()!;
    const second = await startPeerDaemon({ bufferSize: "64MiB", args: ["--peer-listen", `127.0.0.1:${port}`] });
    onTestFinished(() => second.stop());
    expect(second.peerAddress).toBe(first.peerAddress);

    const after = await peer.call(KvFerryPeerService.hello, { nodeId: "it" }, 10_000);

    expect(after.dataAddress).toBe(second.dataAddress);
  });
});

