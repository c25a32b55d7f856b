import { describe, expect, it } from "vitest";
import { AlreadyExistsError, DeadlineExceededError, PermissionDeniedError, UnavailableError } from "../../src/errors.js";
import { nodeIdVerdict, type WhoIs } from "../../src/metadata/node-id.js";
import type { NodeRecord } from "../../src/metadata/node.js";

const record = (peer: string, data: string): NodeRecord => ({
  nodeId: "n1", hostname: "h", clientAddress: "127.0.0.1:1", peerAddress: peer, dataAddress: data,
  transports: [], poolBytes: 1, poolUsedBytes: 0, version: "0", startedAt: 1, updatedAt: 1, engines: [],
});
const claimant = { nodeId: "n1", peerAddress: "127.0.0.1:200", dataAddress: "127.0.0.1:199" };
const held = record("127.0.0.1:100", "127.0.0.1:99");
const answers = (answer: Awaited<ReturnType<WhoIs>> | Error): WhoIs => async () => {
  if (answer instanceof Error) throw answer;
  return answer;
};
const never: WhoIs = async () => {
  throw new Error("must not be asked");
};

describe("nodeIdVerdict", () => {
  it("is free without a record, or with the claimant's own address in it (a restart on the same ports), without asking", async () => {
    expect(await nodeIdVerdict(claimant, undefined, never)).toEqual({ verdict: "free" });
    expect(await nodeIdVerdict(claimant, record("127.0.0.1:200", "127.0.0.1:7"), never)).toEqual({ verdict: "free" });
  });

  it("is taken when the holder answers with the id, or refuses us for claiming it", async () => {
    expect(await nodeIdVerdict(claimant, held, answers({ nodeId: "n1", dataAddress: "127.0.0.1:99" }))).toEqual({ verdict: "taken" });
    expect(await nodeIdVerdict(claimant, held, answers(new AlreadyExistsError("mine")))).toEqual({ verdict: "taken" });
  });

  it("is free when nothing listens there, another node answers, or the claimant itself answers under another name", async () => {
    const refused = "peer 127.0.0.1:100: No connection established. Last error: Error: connect ECONNREFUSED 127.0.0.1:100";
    expect(await nodeIdVerdict(claimant, held, answers(new UnavailableError(refused)))).toEqual({ verdict: "free" });
    expect(await nodeIdVerdict(claimant, held, answers({ nodeId: "n2", dataAddress: "127.0.0.1:99" }))).toEqual({ verdict: "free" });
    expect(await nodeIdVerdict(claimant, held, answers({ nodeId: "n1", dataAddress: "127.0.0.1:199" }))).toEqual({ verdict: "free" });
  });

  it("is unknown when the holder does not answer in time or refuses our token", async () => {
    expect(await nodeIdVerdict(claimant, held, answers(new DeadlineExceededError("slow")))).toEqual({ verdict: "unknown", why: "slow" });
    expect(await nodeIdVerdict(claimant, held, answers(new PermissionDeniedError("token")))).toEqual({ verdict: "unknown", why: "token" });
    // A holder advertising a host name that does not resolve here is not thereby dead.
    const dns = "peer node-7:100: Name resolution failed for target dns:node-7:100";
    expect(await nodeIdVerdict(claimant, held, answers(new UnavailableError(dns)))).toEqual({ verdict: "unknown", why: dns });
  });
});
