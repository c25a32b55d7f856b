// The batch planner: entries laid along a peer's batch handle, one gather op per run of
// consecutive entries, gaps for the entries that failed here, failures mapped back.
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { BatchPlan, MAX_GATHER } from "../../src/daemon/batch-plan.js";
import type { PoolExtent } from "../../src/engine/pool-memory.js";
import type { OpResult, OpSpec, TransferEngine } from "../../src/engine/transfer-engine.js";
import { UnavailableError } from "../../src/errors.js";

/** Records the ops of `run` and answers with `answer(op index)`. */
function engine(answer: (i: number) => OpResult = () => ({ bytes: 0, micros: 0 })) {
  const submitted: OpSpec[][] = [];
  const fake = {
    run: async (_peer: string, ops: readonly OpSpec[]) => {
      submitted.push([...ops]);
      return ops.map((_, i) => answer(i));
    },
  } as unknown as TransferEngine;
  return { fake, submitted };
}

function failures() {
  const failed = new Map<string, unknown>();
  return { failed, out: { fail: (id: string, err: unknown) => void (failed.has(id) || failed.set(id, err)) } };
}

const later = () => Date.now() + 60_000;

describe("BatchPlan", () => {
  it("maps every moved entry's bytes to its range of the handle, one op per run, gaps skipped", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.record({ parts: fc.array(fc.nat({ max: 5000 }), { minLength: 1, maxLength: 3 }), failed: fc.boolean(), cuts: fc.nat({ max: 3 }) }), { minLength: 1, maxLength: 40 }),
        async (entries) => {
          const plan = new BatchPlan("write");
          let poolAt = 0;
          let handleAt = 0;
          /** Where each moved entry's bytes must go: (handle offset, local extents). */
          const expected: { id: string; at: number; local: PoolExtent[] }[] = [];
          entries.forEach((e, i) => {
            const parts = e.parts.map((size, j) => ({ name: `p${j}`, size }));
            const size = e.parts.reduce((a, b) => a + b, 0);
            if (e.failed) {
              plan.skip(parts);
            } else {
              // The entry's bytes in up to cuts+1 extents per part, scattered in the pool.
              const local = e.parts.flatMap((s) => {
                const pieces = s === 0 ? [] : [s - Math.floor(s / (e.cuts + 1)) * e.cuts, ...Array(e.cuts).fill(Math.floor(s / (e.cuts + 1)))].filter((n) => n > 0);
                return pieces.map((length) => ({ offset: (poolAt += 4096 + length) - length, length }));
              });
              plan.add(`e${i}`, local, parts);
              expected.push({ id: `e${i}`, at: handleAt, local });
            }
            handleAt += size;
          });
          expect(plan.size).toBe(handleAt);
          const { fake, submitted } = engine();
          const { failed, out } = failures();
          await plan.run(fake, "peer", { handle: "77", size: handleAt }, later(), out, expected.map((x) => x.id));
          expect(failed.size).toBe(0);
          const ops = submitted.flat();
          // Runs: as many as the stretches of moved entries that hold bytes, at most.
          for (const op of ops) {
            expect(op.kind).toBe("write");
            expect(op.remoteHandle).toBe(77n);
            expect(op.gather!.reduce((s, g) => s + g.length, 0)).toBe(op.length);
            expect(op.length).toBeGreaterThan(0);
          }
          // Walk each op's gather from its remote offset: byte k of the handle comes from
          // the local byte the entry laid there.
          const where = new Map<number, number>(); // handle offset of an extent's start → pool offset
          for (const x of expected) {
            let at = x.at;
            for (const l of x.local) {
              where.set(at, l.offset);
              at += l.length;
            }
          }
          for (const op of ops) {
            let at = op.remoteOffset;
            for (const g of op.gather!) {
              expect(where.get(at)).toBe(g.offset);
              at += g.length;
            }
          }
          const movedBytes = expected.reduce((s, x) => s + x.local.reduce((a, l) => a + l.length, 0), 0);
          expect(ops.reduce((s, op) => s + op.length, 0)).toBe(movedBytes);
        },
      ),
      { numRuns: 300 },
    );
  });

  it("fails every entry of a failed op's run, and only those", async () => {
    const plan = new BatchPlan("read");
    const part = (size: number) => [{ name: "kv", size }];
    plan.add("a", [{ offset: 0, length: 10 }], part(10));
    plan.add("b", [{ offset: 100, length: 10 }], part(10));
    plan.skip(part(10));
    plan.add("c", [{ offset: 200, length: 10 }], part(10));
    const boom = new UnavailableError("connection closed");
    const { fake, submitted } = engine((i) => (i === 0 ? { error: boom, bytes: 0, micros: 0 } : { bytes: 10, micros: 1 }));
    const { failed, out } = failures();
    await plan.run(fake, "peer", { handle: "5", size: 40 }, later(), out, ["a", "b", "c"]);
    expect(submitted[0]!.map((op) => [op.remoteOffset, op.length])).toEqual([[0, 20], [30, 10]]);
    expect([...failed.keys()]).toEqual(["a", "b"]);
    expect(failed.get("a")).toBe(boom);
  });

  it("refuses an entry whose extents do not hold its parts, and a layout that does not fill the handle", async () => {
    const plan = new BatchPlan("write");
    expect(() => plan.add("a", [{ offset: 0, length: 9 }], [{ name: "kv", size: 10 }])).toThrow(/10 bytes, ours 9/);
    expect(plan.size).toBe(0); // nothing laid
    plan.add("b", [{ offset: 0, length: 10 }], [{ name: "kv", size: 10 }]);
    const { fake, submitted } = engine();
    const { failed, out } = failures();
    await plan.run(fake, "peer", { handle: "5", size: 20 }, later(), out, ["b"]);
    expect(submitted).toHaveLength(0);
    expect(String(failed.get("b"))).toMatch(/holds 20 bytes, its entries 10/);
  });

  it("cuts a run whose gather would pass MAX_GATHER extents", () => {
    const plan = new BatchPlan("write");
    const many = Array.from({ length: MAX_GATHER - 1 }, (_, i) => ({ offset: i * 128, length: 1 }));
    plan.add("a", many, [{ name: "kv", size: many.length }]);
    plan.add("b", [{ offset: 1e9, length: 1 }, { offset: 2e9, length: 1 }], [{ name: "kv", size: 2 }]);
    const { fake, submitted } = engine();
    return plan.run(fake, "peer", { handle: "5", size: many.length + 2 }, later(), failures().out, ["a", "b"]).then(() => {
      expect(submitted[0]!.map((op) => op.gather!.length)).toEqual([MAX_GATHER - 1, 2]);
    });
  });
});
