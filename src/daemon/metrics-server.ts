// The daemon's operator endpoint over plain HTTP, on metrics_listen (off by default):
//
//   GET /metrics   Prometheus text (src/daemon/metrics.ts)
//   GET /health    200 {"status":"serving",...} while the daemon serves; 503 while it starts,
//                  drains or has stopped. A metadata backend that stopped answering does not
//                  make it 503: the daemon still serves its local clients and the peers it
//                  knows, and restarting it would only drop the KV it holds; the body and
//                  kvferry_daemon_metadata_connected say so instead.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { formatHostPort, type HostPort } from "../config/config.js";
import { UnavailableError } from "../errors.js";
import type { RegistryHealth } from "../metadata/registry.js";
import { sendMetrics } from "../metrics/registry.js";
import type { DaemonMetrics } from "./metrics.js";
import type { DaemonState } from "./server.js";

export interface HealthSources {
  state(): DaemonState;
  metadata(): RegistryHealth | undefined;
  backend: string;
}

export class MetricsServer {
  readonly #server: Server;

  constructor(private readonly metrics: DaemonMetrics, private readonly health: HealthSources) {
    this.#server = createServer((req, res) => {
      this.#handle(req, res).catch(() => {
        if (!res.headersSent) res.writeHead(500);
        res.end();
      });
    });
    // A scraper keeps its connection open between scrapes; shutdown must not wait for it.
    this.#server.keepAliveTimeout = 5_000;
  }

  /**
   * Binds `listen`; resolves with the bound port.
   * @throws UnavailableError naming metrics_listen, the address and the OS's reason.
   */
  listen(listen: HostPort): Promise<number> {
    return new Promise((resolve, reject) => {
      const onError = (err: NodeJS.ErrnoException) => {
        const reason = err.code === undefined ? err.message : `${err.message.replace(/^listen \w+: /, "").replace(/ [^ ]*$/, "")} (${err.code})`;
        reject(new UnavailableError(`cannot listen for the metrics endpoint (metrics_listen) on ${formatHostPort(listen)}: ${reason}`));
      };
      this.#server.once("error", onError);
      this.#server.listen(listen.port, listen.host, () => {
        this.#server.off("error", onError);
        resolve((this.#server.address() as AddressInfo).port);
      });
    });
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      if (!this.#server.listening) return resolve();
      this.#server.close(() => resolve());
      this.#server.closeAllConnections();
    });
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    req.resume();
    const path = (req.url ?? "/").split("?")[0];
    if (path !== "/metrics" && path !== "/health") return reply(res, 404, { error: `no ${path} here: GET /metrics or /health` });
    if (req.method !== "GET" && req.method !== "HEAD") {
      res.setHeader("allow", "GET, HEAD");
      return reply(res, 405, { error: `${req.method} ${path}: use GET` });
    }
    if (path === "/metrics") return sendMetrics(res, this.metrics.registry);
    const status = this.health.state();
    const metadata = this.health.metadata();
    reply(res, status === "serving" ? 200 : 503, {
      status,
      metadata: { backend: this.health.backend, connected: metadata?.connected ?? false, registered: metadata?.registered ?? false },
    });
  }
}

function reply(res: ServerResponse, code: number, body: unknown): void {
  const text = `${JSON.stringify(body)}\n`;
  res.writeHead(code, { "content-type": "application/json", "content-length": Buffer.byteLength(text) });
  res.end(text);
}
