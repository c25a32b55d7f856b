// A child process's stdout read as JSON lines, one answer at a time: what the Mooncake
// engine helpers (test/helpers/mooncake.ts, test/bench/transfer-bench.ts) speak to their
// Python processes.
import type { Readable } from "node:stream";
import { createInterface } from "node:readline";

/**
 * `next(what)`: the next line as a JSON object, within `timeoutMs`. It rejects, with
 * `describe(why, what)` as the message, when the stream ends first, the line is not JSON,
 * or the time passes.
 */
export function jsonLines(
  stdout: Readable,
  timeoutMs: number,
  describe: (why: string, what: string) => string,
): (what: string) => Promise<Record<string, unknown>> {
  const lines: string[] = [];
  const waiting: ((line: string | undefined) => void)[] = [];
  let closed = false;
  const reader = createInterface({ input: stdout });
  reader.on("line", (line) => (waiting.length > 0 ? waiting.shift()!(line) : lines.push(line)));
  reader.on("close", () => {
    closed = true;
    for (const wake of waiting.splice(0)) wake(undefined);
  });
  return (what) =>
    new Promise((resolve, reject) => {
      const take = (line: string | undefined) => {
        clearTimeout(timer);
        if (line === undefined) return reject(new Error(describe("exited before answering", what)));
        try {
          resolve(JSON.parse(line) as Record<string, unknown>);
        } catch {
          reject(new Error(describe(`answered ${JSON.stringify(line)}, not JSON`, what)));
        }
      };
      const timer = setTimeout(() => {
        waiting.splice(waiting.indexOf(take), 1);
        reject(new Error(describe(`no answer within ${timeoutMs} ms`, what)));
      }, timeoutMs);
      if (lines.length > 0) take(lines.shift());
      else if (closed) take(undefined);
      else waiting.push(take);
    });
}
