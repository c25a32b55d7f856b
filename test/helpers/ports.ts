// Loopback ports for tests that must name a port before the program that binds it runs
// (a server restarted on the same port, a seed that is not up yet, mooncake.json's fixed URLs).
// Ports are picked below Linux's ephemeral range (32768+), so an outgoing connection of another
// test cannot take one between the probe and the bind.
import { createServer } from "node:net";

const LOW = 20_000;
const SPAN = 12_000; // 20000-31999

function portIsFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = createServer();
    probe.once("error", () => resolve(false));
    probe.listen(port, "127.0.0.1", () => probe.close(() => resolve(true)));
  });
}

/**
 * A base port such that base + every offset is free on 127.0.0.1 now, all within 20000-31999.
 * Offsets are small non-negative numbers, e.g. [0, 1] for a data port and its peer port above it.
 */
export async function freePorts(offsets: readonly number[]): Promise<number> {
  const top = Math.max(0, ...offsets);
  for (let attempt = 0; attempt < 100; attempt++) {
    const base = LOW + Math.floor(Math.random() * (SPAN - top));
    let free = true;
    for (const offset of offsets) {
      if (!(await portIsFree(base + offset))) {
        free = false;
        break;
      }
    }
    if (free) return base;
  }
  throw new Error(`no free loopback ports at offsets ${offsets.join(",")} in ${LOW}-${LOW + SPAN - 1}`);
}

/** One loopback port nothing listens on now. */
export function freePort(): Promise<number> {
  return freePorts([0]);
}
