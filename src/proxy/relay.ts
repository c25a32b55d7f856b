// Relays a decode instance's answer to the client as it comes: its status, its headers
// (minus hop-by-hop ones) and its body bytes, unchanged.
//
// Backpressure: when the client's socket is full, the upstream is paused until 'drain'.
// One timer covers both directions: no upstream byte (while the client keeps up) or no
// drain (while the upstream waits) for `idleTimeoutMs` ends the relay.
//
// An event stream is relayed whole events at a time: the bytes after the last event
// boundary (a blank line) wait for the rest of their event (at most PENDING_LIMIT bytes),
// so that a stream that breaks off never leaves half an event before the error event.
//
// How it can end:
//   ok             the upstream body ended; the client's answer is complete
//   stream_failed  the upstream died, reset or went silent after its headers went out;
//                  an event stream gets `data: {"error": ...}` and `data: [DONE]` (as
//                  vLLM ends a stream that failed) after its last whole event, and ends;
//                  any other body is cut (its connection destroyed) so it cannot pass for
//                  whole
//   aborted        the client went away or stopped reading; the upstream is closed
import type { IncomingMessage, ServerResponse } from "node:http";
import { openAIError } from "./openai-errors.js";
import { relayedHeaders } from "./respond.js";

export type RelayResult = "ok" | "stream_failed" | "aborted";

/** Most bytes of one unfinished event held back; a longer event is passed on as it comes. */
const PENDING_LIMIT = 1 << 20;

/** The end of the last event boundary (a line end, then an empty line) in `b`, or 0. */
export function lastEventEnd(b: Buffer): number {
  let end = 0;
  for (const sep of ["\n\n", "\r\r", "\r\n\r\n", "\n\r\n"]) {
    const at = b.lastIndexOf(sep);
    if (at >= 0) end = Math.max(end, at + sep.length);
  }
  return end;
}

export interface RelayOptions {
  idleTimeoutMs: number;
  /** Aborted when the client goes away. */
  signal: AbortSignal;
  /** Called once, when the first body byte is written to the client. */
  onFirstByte?: () => void;
  /** Names the upstream in the error event of a failed stream. */
  upstream: string;
}

export function relay(up: IncomingMessage, res: ServerResponse, o: RelayOptions): Promise<RelayResult> {
  return new Promise<RelayResult>((resolve) => {
    const eventStream = String(up.headers["content-type"] ?? "").startsWith("text/event-stream");
    let settled = false;
    let paused = false;
    let firstByte = false;
    let timer: NodeJS.Timeout | undefined;
    /** An event stream's bytes after its last event boundary, not yet written. */
    let pending: Buffer = Buffer.alloc(0);
    /** Whether what the client got so far ends on an event boundary. */
    let whole = true;

    const finish = (result: RelayResult, why?: string) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      o.signal.removeEventListener("abort", onAbort);
      res.off("drain", onDrain);
      if (result === "ok") {
        res.end();
      } else {
        up.destroy();
        if (result === "stream_failed" && eventStream && !res.destroyed) {
          const event = openAIError(`${o.upstream}: the stream broke off: ${why}`, "upstream_error", "stream_interrupted");
          res.end(`${whole ? "" : "\n\n"}data: ${JSON.stringify(event)}\n\ndata: [DONE]\n\n`);
        } else {
          res.destroy();
        }
      }
      resolve(result);
    };
    const arm = () => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        if (paused) finish("aborted", "the client stopped reading");
        else finish("stream_failed", `no data for ${o.idleTimeoutMs} ms`);
      }, o.idleTimeoutMs);
    };
    const onAbort = () => finish("aborted");
    const onDrain = () => {
      paused = false;
      arm();
      up.resume();
    };

    o.signal.addEventListener("abort", onAbort, { once: true });
    if (o.signal.aborted) {
      onAbort();
      return;
    }
    res.on("drain", onDrain);
    res.writeHead(up.statusCode ?? 502, relayedHeaders(up.headers));
    // An event stream's headers go out now: the client learns it is accepted before the first token.
    res.flushHeaders();
    arm();

    up.on("data", (chunk: Buffer) => {
      if (settled) return;
      if (!firstByte) {
        firstByte = true;
        o.onFirstByte?.();
      }
      arm();
      let out = chunk;
      if (eventStream) {
        const all = pending.length === 0 ? chunk : Buffer.concat([pending, chunk]);
        const end = all.length > PENDING_LIMIT ? all.length : lastEventEnd(all);
        out = all.subarray(0, end);
        pending = all.subarray(end);
        if (out.length === 0) return;
        whole = lastEventEnd(out) === out.length;
      }
      if (!res.write(out)) {
        paused = true;
        up.pause();
      }
    });
    up.on("end", () => {
      // A stream whose last event lacks its blank line still gets all of its bytes.
      if (pending.length > 0 && !settled) res.write(pending);
      finish("ok");
    });
    up.on("error", (err) => finish("stream_failed", err.message));
    up.on("close", () => {
      if (!up.complete) finish("stream_failed", "the connection closed before the answer ended");
    });
  });
}
