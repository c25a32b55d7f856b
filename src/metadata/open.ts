// Opens the registry the configuration names, and registers this node with the retry
// policy of metadata_retry_ms: 0 fails at once (the daemon exits with EXIT_METADATA),
// more keeps trying with exponential backoff (250 ms doubling to 5 s) until that long
// has passed. The etcd, redis and http clients are imported only when used.
import type { Logger } from "pino";
import type { MetadataSettings } from "../config/config.js";
import { AlreadyExistsError, UnavailableError } from "../errors.js";
import { EmbeddedRegistry, type Greet } from "./embedded.js";
import type { NodeRecord } from "./node.js";
import type { WhoIs } from "./node-id.js";
import type { NodeRegistry, RegistryOptions } from "./registry.js";

export interface OpenOptions {
  /** The embedded registry's seeds: peer API addresses to greet. */
  seeds?: readonly string[];
  /** How the embedded registry greets a peer (the daemon's peer API client). */
  greet?: Greet;
  /** How it asks a peer which node answers there (node-id.ts). */
  whoIs?: WhoIs;
}

export async function openRegistry(settings: MetadataSettings, log: Logger, open: OpenOptions = {}): Promise<NodeRegistry> {
  const options: RegistryOptions = { prefix: settings.prefix, ttlMs: settings.ttlMs };
  const server = settings.server ?? "";
  switch (settings.backend) {
    case "embedded": {
      const greet: Greet = open.greet ?? (async (address) => {
        throw new UnavailableError(`cannot greet ${address}: no peer API client`);
      });
      const whoIs: WhoIs = open.whoIs ?? (async (address) => {
        throw new UnavailableError(`cannot ask ${address}: no peer API client`);
      });
      return new EmbeddedRegistry({ ...options, seeds: open.seeds ?? [] }, log, greet, whoIs);
    }
    case "etcd": {
      const { EtcdRegistry } = await import("./etcd.js");
      return new EtcdRegistry(server, options, log);
    }
    case "redis": {
      const { RedisRegistry } = await import("./redis.js");
      return new RedisRegistry(server, options, log);
    }
    case "http": {
      const { HttpRegistry } = await import("./http.js");
      return new HttpRegistry(server, options, log);
    }
  }
}

const FIRST_BACKOFF_MS = 250;
const MAX_BACKOFF_MS = 5_000;

export interface RegisterOptions {
  /** Keep trying an unreachable backend this long (metadata_retry_ms; 0: fail at once). */
  retryMs: number;
  log: Logger;
  /** Stops the retrying (a signal during start-up). */
  abort?: AbortSignal;
  /** Runs before each attempt, e.g. that no running daemon holds our node id (AlreadyExistsError: not retried). */
  check?: () => Promise<void>;
}

/**
 * registry.register(self), retried while `retryMs` allows.
 * @throws the last UnavailableError once the retry time is spent (at once when retryMs is 0).
 * @throws AlreadyExistsError from `check`, at once.
 */
export async function registerWithRetry(registry: NodeRegistry, self: NodeRecord, options: RegisterOptions): Promise<void> {
  const { retryMs, log, abort, check } = options;
  const giveUpAt = Date.now() + retryMs;
  let backoff = FIRST_BACKOFF_MS;
  for (let attempt = 1; ; attempt++) {
    try {
      await check?.();
      await registry.register(self);
      if (attempt > 1) log.info({ attempt, metadata: registry.where }, "registered with the metadata backend");
      return;
    } catch (err) {
      const left = giveUpAt - Date.now();
      if (left <= 0 || err instanceof AlreadyExistsError) throw err;
      if (abort?.aborted) throw new UnavailableError(`${(err as Error).message} (${(abort.reason as Error).message}, retrying stopped)`);
      const wait = Math.min(backoff, left);
      log.warn({ err, attempt, retryInMs: wait, metadata: registry.where }, "metadata backend unreachable: retrying");
      await sleep(wait, abort);
      backoff = Math.min(backoff * 2, MAX_BACKOFF_MS);
    }
  }
}

/** Resolves after `ms`, or at once when `abort` fires. */
function sleep(ms: number, abort?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      abort?.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    abort?.addEventListener("abort", done, { once: true });
  });
}
