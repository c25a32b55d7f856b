// `kvferry metadata-server`: an in-memory key-value server speaking Mooncake's simple http
// metadata protocol, for clusters without etcd or redis (and for tests). It answers as
// Mooncake's own http metadata server does (the one mooncake_master serves), status and body:
//
//   GET    <path>?key=K            200 with the value (application/json), 404 "metadata not found"
//   PUT    <path>?key=K  (value)   200 "metadata updated"
//   DELETE <path>?key=K            200 "metadata deleted", 404 "metadata not found"
//   GET    /health                 200 "OK"
//
// A key containing "rpc_meta" (a transfer engine's RPC address, mooncake/rpc_meta/NAME) is
// written once: a PUT of a different value while it exists answers 400 "Duplicate rpc_meta
// key not allowed", so a second engine under a name in use fails to start instead of taking
// the first one's address; the same value again answers 200 "metadata unchanged" (an engine
// republishing its own address), and after a DELETE (the engine's exit) the name is free.
//
// Values are opaque bytes. Nothing is persisted: a restarted server is empty, and the
// registries that use it (http.ts) write their records again at their next refresh.
// Everything is bounded: the size of a value, the number of keys, the bytes held, the
// length of a key and the time a request may take.
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import type { Logger } from "pino";

export interface MetadataServerOptions {
  host: string;
  /** 0 picks a free port. */
  port: number;
  /** Where the protocol is served (default "/metadata"); other paths answer 404. */
  path?: string;
  /** Largest value a PUT may carry (default 1 MiB); larger ones answer 413. */
  maxValueBytes?: number;
  /** Most keys held at once (default 100 000); a PUT of a new key beyond answers 507. */
  maxKeys?: number;
  /** Most value bytes held at once (default 256 MiB); a PUT beyond answers 507. */
  maxTotalBytes?: number;
}

export interface MetadataServer {
  /** e.g. "http://127.0.0.1:8080/metadata": what `metadata_server` names. */
  readonly url: string;
  readonly port: number;
  /** Stops listening and drops open connections. */
  close(): Promise<void>;
}

const MAX_KEY_CHARS = 4096;
/** A request must arrive whole within this (headers and body). */
const REQUEST_TIMEOUT_MS = 10_000;
const ALLOW = "GET, PUT, DELETE";
/** Where the health check is served, as Mooncake serves it. */
const HEALTH_PATH = "/health";
/** Keys holding a transfer engine's RPC address: written once (see above). */
const WRITE_ONCE_MARK = "rpc_meta";

// Mooncake's answers, word for word (its clients log them).
const NOT_FOUND = "metadata not found";
const UPDATED = "metadata updated";
const UNCHANGED = "metadata unchanged";
const DUPLICATE = "Duplicate rpc_meta key not allowed";
const DELETED = "metadata deleted";

function reply(res: ServerResponse, status: number, message: string, headers: Record<string, string> = {}): void {
  res.writeHead(status, { "content-type": "text/plain; charset=utf-8", ...headers });
  res.end(message);
}

/** Starts the server; resolves once it listens. */
export function startMetadataServer(options: MetadataServerOptions, log: Logger): Promise<MetadataServer> {
  const path = options.path ?? "/metadata";
  const maxValueBytes = options.maxValueBytes ?? 1 << 20;
  const maxKeys = options.maxKeys ?? 100_000;
  const maxTotalBytes = options.maxTotalBytes ?? 256 << 20;
  const store = new Map<string, Buffer>();
  let totalBytes = 0;

  const put = (key: string, value: Buffer, res: ServerResponse) => {
    const old = store.get(key);
    if (old !== undefined && key.includes(WRITE_ONCE_MARK)) {
      if (old.equals(value)) return reply(res, 200, UNCHANGED);
      log.warn({ key }, "refused a second rpc_meta record under a name in use (another transfer engine with the same name?)");
      return reply(res, 400, DUPLICATE);
    }
    if (old === undefined && store.size >= maxKeys) {
      reply(res, 507, `the server holds its maximum of ${maxKeys} keys: delete some first`);
      return;
    }
    if (totalBytes - (old?.length ?? 0) + value.length > maxTotalBytes) {
      reply(res, 507, `the server holds its maximum of ${maxTotalBytes} value bytes: delete some first`);
      return;
    }
    totalBytes += value.length - (old?.length ?? 0);
    store.set(key, value);
    reply(res, 200, UPDATED);
  };

  /** Reads a PUT's body up to the limit; answers 413 (and drops the connection) beyond it. */
  const readValue = (req: IncomingMessage, res: ServerResponse, expectsContinue: boolean, then: (value: Buffer) => void) => {
    const tooLarge = () => {
      reply(res, 413, `a value may be at most ${maxValueBytes} bytes`, { connection: "close" });
      req.resume(); // discard the rest; the connection closes after the answer
    };
    const declared = req.headers["content-length"];
    if (declared !== undefined && Number(declared) > maxValueBytes) return tooLarge();
    if (expectsContinue) res.writeContinue();
    const chunks: Buffer[] = [];
    let size = 0;
    let refused = false;
    req.on("data", (chunk: Buffer) => {
      if (refused) return;
      size += chunk.length;
      if (size > maxValueBytes) {
        refused = true;
        chunks.length = 0;
        tooLarge();
        return;
      }
      chunks.push(chunk);
    });
    req.on("end", () => {
      if (!refused) then(Buffer.concat(chunks, size));
    });
    req.on("error", () => {}); // a client gone mid-body: nothing to answer
  };

  const handle = (req: IncomingMessage, res: ServerResponse, expectsContinue = false) => {
    let url: URL;
    try {
      url = new URL(req.url ?? "/", "http://metadata");
    } catch {
      // A request target no URL parser accepts ("//[" …): the client's mistake, not a crash.
      return reply(res, 400, `malformed request target ${JSON.stringify(req.url)}`);
    }
    const method = req.method ?? "";
    if (url.pathname === HEALTH_PATH && path !== HEALTH_PATH && method === "GET") return reply(res, 200, "OK");
    if (url.pathname !== path) return reply(res, 404, `no such path: the metadata is served at ${path}?key=KEY`);
    if (method !== "GET" && method !== "PUT" && method !== "DELETE") {
      return reply(res, 405, `method ${method} not allowed: use ${ALLOW}`, { allow: ALLOW });
    }
    const key = url.searchParams.get("key");
    if (key === null || key === "") return reply(res, 400, "missing key: name it as ?key=KEY (URL-encoded)");
    if (key.length > MAX_KEY_CHARS) return reply(res, 400, `the key is longer than ${MAX_KEY_CHARS} characters`);
    log.debug({ method, key }, "metadata request");
    switch (method) {
      case "GET": {
        const value = store.get(key);
        if (value === undefined) return reply(res, 404, NOT_FOUND);
        res.writeHead(200, { "content-type": "application/json", "content-length": value.length });
        res.end(value);
        return;
      }
      case "PUT":
        return readValue(req, res, expectsContinue, (value) => put(key, value, res));
      case "DELETE": {
        const value = store.get(key);
        if (value === undefined) return reply(res, 404, NOT_FOUND);
        store.delete(key);
        totalBytes -= value.length;
        return reply(res, 200, DELETED);
      }
    }
  };

  const server = createServer(handle);
  // "Expect: 100-continue" (curl sends it for large bodies): the answer comes before the
  // body is sent, unless the request is a PUT whose value may be accepted.
  server.on("checkContinue", (req, res) => handle(req, res, true));
  server.requestTimeout = REQUEST_TIMEOUT_MS;
  server.headersTimeout = REQUEST_TIMEOUT_MS;

  return new Promise<MetadataServer>((resolve, reject) => {
    server.once("error", reject);
    server.listen(options.port, options.host, () => {
      server.off("error", reject);
      server.on("error", (err) => log.error({ err }, "metadata server error"));
      const port = (server.address() as AddressInfo).port;
      const host = options.host.includes(":") ? `[${options.host}]` : options.host;
      let closing: Promise<void> | undefined;
      resolve({
        url: `http://${host}:${port}${path}`,
        port,
        close: () =>
          (closing ??= new Promise<void>((done) => {
            server.close(() => done());
            server.closeAllConnections();
          })),
      });
    });
  });
}
