// The engine instances behind the proxy, their health, and the choice of one per request.
//
// An instance's health is a small state machine:
//
//   unknown ──check ok──▶ healthy ◀──check ok── unhealthy / down
//   any ──check fails, or a request's connection was reset──▶ unhealthy
//   any ──its connection refused (by a check or a request)──▶ down
//
// A check is GET <url>/health (200 within the timeout) and, when the proxy moves KV
// (push / pull), a successful refresh of the node's daemon (its node id and peer address).
// Checks run at start-up and then every health interval, one round at a time. A check's
// success that started before the instance's latest request failure is ignored (it says
// nothing about what happened since). Each transition is logged once.
//
// Choosing (fail open): a healthy instance when the role has one; else an unhealthy or
// unknown one, since a failed check or one reset is no proof that the next request fails;
// never one that is down. Per-request trouble (a timeout, a stream that broke off or went
// silent) changes nothing: one slow request must not take the only decode out of service.
import type { Logger } from "pino";
import type { InstanceSpec, ProxyConfig, Role } from "./config.js";
import type { DaemonDirectory, DaemonLink } from "./daemons.js";
import type { ProxyMetrics } from "./metrics.js";
import { createPolicy, type Policy } from "./policies.js";
import { fetchAll, UpstreamError } from "./upstream.js";

export type Health = "unknown" | "healthy" | "unhealthy" | "down";

/** What a request learnt of an instance: its connection was refused, or reset before an answer. */
export type RequestFailure = "refused" | "reset";

export class Instance {
  health: Health = "unknown";
  /** Requests in flight on this instance (what least-outstanding compares). */
  outstanding = 0;
  /** Why it is unhealthy or down. */
  lastError: string | undefined;
  /** performance.now() of the latest request failure (-Infinity: none). */
  failedAt = -Infinity;

  constructor(
    readonly spec: InstanceSpec,
    /** The daemon of its node, when one was given. */
    readonly daemon: DaemonLink | undefined,
  ) {}

  get role(): Role {
    return this.spec.role;
  }

  get url(): string {
    return this.spec.url;
  }
}

/** What GET /health reports of an instance. */
export interface InstanceReport {
  url: string;
  health: Health;
  outstanding: number;
  daemon?: string;
  nodeId?: string;
  peerAddress?: string;
  error?: string;
}

export class InstancePool {
  /** The instances of each role: the configured ones, or (discovery.ts) the discovered ones. */
  prefill: Instance[];
  decode: Instance[];
  readonly #policies: Record<Role, Policy>;
  #timer: NodeJS.Timeout | undefined;
  #stopped = false;
  /** Aborts the health checks in flight at shutdown. */
  readonly #abort = new AbortController();

  constructor(
    private readonly config: ProxyConfig,
    private readonly daemons: DaemonDirectory,
    private readonly metrics: ProxyMetrics,
    private readonly log: Logger,
  ) {
    const make = (spec: InstanceSpec) => new Instance(spec, spec.daemon === undefined ? undefined : daemons.get(spec.daemon));
    this.prefill = config.prefill.map(make);
    this.decode = config.decode.map(make);
    this.#policies = { prefill: createPolicy(config.policy), decode: createPolicy(config.policy) };
    for (const i of this.all()) this.#gauges(i);
  }

  all(): Instance[] {
    return [...this.prefill, ...this.decode];
  }

  /**
   * Makes `specs` the instances of `role` (discovery): instances kept by URL and daemon keep
   * their state; new ones start unknown and are checked at once; gone ones leave (a request
   * in flight on one finishes).
   */
  replace(role: Role, specs: readonly InstanceSpec[]): void {
    const current = role === "prefill" ? this.prefill : this.decode;
    const key = (s: InstanceSpec) => `${s.url}=${s.daemon ?? ""}`;
    const kept = new Map(current.map((i) => [key(i.spec), i]));
    const next: Instance[] = [];
    const fresh: Instance[] = [];
    for (const spec of specs) {
      let instance = kept.get(key(spec));
      kept.delete(key(spec));
      if (instance === undefined) {
        instance = new Instance(spec, spec.daemon === undefined ? undefined : this.daemons.get(spec.daemon));
        fresh.push(instance);
        this.log.info({ role, url: spec.url, daemon: spec.daemon }, "instance discovered");
      }
      next.push(instance);
    }
    for (const gone of kept.values()) {
      const labels = { role, url: gone.url };
      this.metrics.healthy.remove(labels);
      this.metrics.outstanding.remove(labels);
      // Series by URL alone go with the last instance of that URL (engines come back on new ports).
      if (role === "prefill" && !next.some((i) => i.url === gone.url)) this.metrics.prefillLatency.remove({ url: gone.url });
      this.log.info({ role, url: gone.url, daemon: gone.spec.daemon }, "instance gone");
    }
    if (role === "prefill") this.prefill = next;
    else this.decode = next;
    for (const instance of fresh) {
      this.#gauges(instance);
      if (!this.#stopped) void this.#check(instance);
    }
  }

  /** Runs the first round of checks, then one every health interval. */
  async start(): Promise<void> {
    await this.checkAll();
    const loop = () => {
      if (this.#stopped) return;
      this.#timer = setTimeout(() => void this.checkAll().finally(loop), this.config.healthIntervalMs);
    };
    loop();
  }

  stop(): void {
    this.#stopped = true;
    clearTimeout(this.#timer);
    this.#abort.abort();
  }

  /**
   * An instance of the role chosen by the policy, leaving out `exclude`: a healthy one when
   * there is one, else an unhealthy or unknown one (fail open); undefined when every one
   * left is down.
   */
  pick(role: Role, exclude: ReadonlySet<Instance> = new Set()): Instance | undefined {
    const left = (role === "prefill" ? this.prefill : this.decode).filter((i) => !exclude.has(i) && i.health !== "down");
    const healthy = left.filter((i) => i.health === "healthy");
    return this.#policies[role].pick(healthy.length > 0 ? healthy : left);
  }

  /** Counts a request on the instance until the returned function is called (once). */
  begin(instance: Instance): () => void {
    instance.outstanding++;
    this.#gauges(instance);
    let ended = false;
    return () => {
      if (ended) return;
      ended = true;
      instance.outstanding--;
      this.#gauges(instance);
    };
  }

  /** Whether at least one instance of each role is healthy. */
  ready(): boolean {
    return this.prefill.some((i) => i.health === "healthy") && this.decode.some((i) => i.health === "healthy");
  }

  /**
   * A request could not reach the instance. Refused: it is down (not picked until a check
   * passes). Reset before an answer: unhealthy (picked only when no instance of its role is
   * healthy).
   */
  requestFailed(instance: Instance, failure: RequestFailure, reason: string): void {
    instance.failedAt = performance.now();
    if (failure === "refused") this.#transition(instance, "down", reason);
    else if (instance.health !== "down") this.#transition(instance, "unhealthy", reason);
  }

  /** One round of checks of every instance (and of each daemon once). */
  async checkAll(): Promise<void> {
    await Promise.all(this.all().map((i) => this.#check(i)));
  }

  report(): { prefill: InstanceReport[]; decode: InstanceReport[] } {
    const one = (i: Instance): InstanceReport => ({
      url: i.url,
      health: i.health,
      outstanding: i.outstanding,
      ...(i.daemon === undefined
        ? {}
        : { daemon: i.daemon.address, nodeId: i.daemon.nodeId, peerAddress: i.daemon.peerAddress }),
      ...(i.lastError === undefined ? {} : { error: i.lastError }),
    });
    return { prefill: this.prefill.map(one), decode: this.decode.map(one) };
  }

  async #check(instance: Instance): Promise<void> {
    const timeoutMs = this.config.healthTimeoutMs;
    const started = performance.now();
    const [engine, daemonOk] = await Promise.all([
      fetchAll({ method: "GET", url: `${instance.url}/health`, signal: this.#abort.signal, timeoutMs, limit: 64 << 10 }).then(
        (r) => (r.status === 200 ? undefined : { health: "unhealthy" as const, reason: `GET /health answered ${r.status}` }),
        (err: UpstreamError) => ({ health: err.kind === "refused" ? ("down" as const) : ("unhealthy" as const), reason: `GET /health failed: ${err.message}` }),
      ),
      instance.daemon === undefined ? Promise.resolve(true) : instance.daemon.refresh(timeoutMs),
    ]);
    if (this.#stopped) return;
    const needsDaemon = this.config.transfer !== "none";
    if (engine !== undefined) this.#transition(instance, engine.health, engine.reason);
    else if (needsDaemon && !daemonOk) {
      this.#transition(instance, "unhealthy", `daemon ${instance.daemon?.address}: ${instance.daemon?.lastError}`);
    } else if (started > instance.failedAt) this.#transition(instance, "healthy", undefined);
  }

  #transition(instance: Instance, to: Health, reason: string | undefined): void {
    const from = instance.health;
    instance.lastError = reason;
    if (from === to) return;
    instance.health = to;
    this.#gauges(instance);
    const fields = { role: instance.role, url: instance.url, from, to };
    if (to === "healthy") this.log.info(fields, "instance healthy");
    else this.log.warn({ ...fields, reason }, to === "down" ? "instance down" : "instance unhealthy");
  }

  #gauges(instance: Instance): void {
    if (!(instance.role === "prefill" ? this.prefill : this.decode).includes(instance)) return; // gone (replace())
    const labels = { role: instance.role, url: instance.url };
    this.metrics.healthy.set(labels, instance.health === "healthy" ? 1 : 0);
    this.metrics.outstanding.set(labels, instance.outstanding);
  }
}
