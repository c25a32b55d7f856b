// Instances the proxy finds instead of being told: the engines that announced themselves to
// their daemons (AnnounceEngine), as the daemons publish them in their node records.
//
// Two sources (config.ts's DiscoverySource): the node registry itself (etcd, redis, http),
// watched, so that an engine or a node coming or going changes the pool as soon as the
// registry shows it; or one daemon's ListNodes, polled every health interval (the way with
// the embedded metadata, where no registry can be read from outside the daemons).
//
// Every engine becomes an instance of its role (a "both" engine one of each) whose daemon is
// its node's client API. A role given instances by flags or the --config file keeps them and
// ignores discovered ones (flags win, per role). One URL announced on two nodes is taken
// from the first node by id.
import type { Logger } from "pino";
import { KvferryClient } from "../client/client.js";
import { hostPortFromText } from "../config/parse.js";
import { fromWireEngineRole } from "../metadata/engine-wire.js";
import { engineUrlProblem, type EngineRecord } from "../metadata/node.js";
import { openRegistry } from "../metadata/open.js";
import type { NodeEvent, NodeRegistry } from "../metadata/registry.js";
import type { DiscoverySource, InstanceSpec, Role } from "./config.js";
import type { InstancePool } from "./instances.js";

/** What discovery needs of a node. */
interface NodeEngines {
  clientAddress: string;
  engines: readonly EngineRecord[];
}

const ROLES: readonly Role[] = ["prefill", "decode"];

export class Discovery {
  readonly #nodes = new Map<string, NodeEngines>();
  /** Roles given by flags or the file: discovered instances of these are ignored. */
  readonly #fixed: ReadonlySet<Role>;
  #registry: NodeRegistry | undefined;
  #unwatch: (() => void) | undefined;
  #client: KvferryClient | undefined;
  #timer: NodeJS.Timeout | undefined;
  #stopped = false;
  /** Nodes warned about once for publishing engines without a client address. */
  readonly #noDaemon = new Set<string>();
  #pollFailing = false;

  constructor(
    private readonly source: DiscoverySource,
    private readonly pool: InstancePool,
    private readonly options: { needsDaemon: boolean; intervalMs: number; timeoutMs: number },
    private readonly log: Logger,
  ) {
    this.#fixed = new Set(ROLES.filter((r) => (r === "prefill" ? pool.prefill : pool.decode).length > 0));
  }

  /** For logs and /health: where the instances come from. */
  get where(): string {
    return this.source.kind === "daemon" ? `ListNodes of the daemon at ${this.source.address}` : (this.#registry?.where ?? this.source.metadata.backend);
  }

  /** Reads the nodes once (a failure is logged: discovery keeps trying), then follows them. */
  async start(): Promise<void> {
    for (const role of this.#fixed) {
      this.log.info({ role, from: this.source.kind }, `${role} instances are given: discovered ones are ignored for this role`);
    }
    if (this.source.kind === "daemon") {
      this.#client = new KvferryClient(this.source.address);
      await this.#poll();
      return;
    }
    const registry = await openRegistry(this.source.metadata, this.log);
    this.#registry = registry;
    try {
      for (const node of await registry.list()) this.#nodes.set(node.nodeId, node);
      this.#apply();
    } catch (err) {
      this.log.warn({ err: (err as Error).message, metadata: registry.where }, "cannot read the node registry yet: instances come once it answers");
    }
    this.#unwatch = registry.watch((event) => this.#event(event));
    this.log.info({ metadata: registry.where }, "discovering instances in the node registry");
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#timer);
    this.#unwatch?.();
    this.#client?.close();
    await this.#registry?.close();
  }

  #event(event: NodeEvent): void {
    if (this.#stopped) return;
    if (event.type === "leave") this.#nodes.delete(event.nodeId);
    else this.#nodes.set(event.node.nodeId, event.node);
    this.#apply();
  }

  async #poll(): Promise<void> {
    if (this.#stopped) return;
    try {
      const listing = await this.#client!.listNodes({ timeoutMs: this.options.timeoutMs });
      this.#nodes.clear();
      for (const n of listing.nodes) {
        const engines: EngineRecord[] = [];
        for (const e of n.engines) {
          const role = fromWireEngineRole(e.role);
          if (role !== undefined && engineUrlProblem(e.url) === undefined) engines.push({ url: e.url, role, models: e.models });
        }
        // A daemon of another version may list what this one's records would not hold.
        const clientAddress = hostPortFromText(n.clientAddress) === undefined ? "" : n.clientAddress;
        this.#nodes.set(n.nodeId, { clientAddress, engines });
      }
      if (this.#pollFailing) this.log.info({ daemon: this.#client!.address }, "the discovery daemon answers again");
      this.#pollFailing = false;
      this.#apply();
    } catch (err) {
      // The instances known stay: a daemon that does not answer for a while says nothing of them.
      if (!this.#pollFailing) this.log.warn({ daemon: this.#client!.address, err: (err as Error).message }, "cannot list the nodes of the discovery daemon");
      this.#pollFailing = true;
    }
    if (this.#stopped) return;
    this.#timer = setTimeout(() => void this.#poll(), this.options.intervalMs);
    this.#timer.unref();
  }

  /** The pool's discovered roles become what the nodes publish now. */
  #apply(): void {
    const specs: Record<Role, InstanceSpec[]> = { prefill: [], decode: [] };
    const seen = new Set<string>();
    const ids = [...this.#nodes.keys()].sort();
    for (const id of ids) {
      const node = this.#nodes.get(id)!;
      if (node.engines.length === 0) continue;
      if (this.options.needsDaemon && node.clientAddress === "") {
        if (!this.#noDaemon.has(id)) this.log.warn({ nodeId: id }, "a node publishes engines but no client API address: its engines are not used");
        this.#noDaemon.add(id);
        continue;
      }
      for (const engine of node.engines) {
        if (seen.has(engine.url)) continue;
        seen.add(engine.url);
        const daemon = node.clientAddress === "" ? undefined : node.clientAddress;
        for (const role of ROLES) {
          if (engine.role === role || engine.role === "both") specs[role].push({ role, url: engine.url, daemon });
        }
      }
    }
    for (const role of ROLES) if (!this.#fixed.has(role)) this.pool.replace(role, specs[role]);
  }
}
