// The inference engines on this node that announced themselves (AnnounceEngine), which the
// daemon publishes in its node record so that a proxy can discover them.
//
// An announcement lives as long as its call: open → (the engine cancels, its process dies,
// a newer announcement of its URL replaces it, or the daemon drains) → gone. Each change
// is handed to `onChange` with the whole list, which the daemon writes into its record.
// At most MAX_ENGINES_PER_NODE at once; bad input is INVALID_ARGUMENT naming the field.
import type { Logger } from "pino";
import { InvalidArgumentError, ResourceExhaustedError } from "../errors.js";
import type { EngineInfo } from "../gen/kvferry/v1/node.js";
import {
  engineUrlProblem, isModelName, MAX_ENGINES_PER_NODE, MAX_MODELS_PER_ENGINE, normalEngineUrl, type EngineRecord,
} from "../metadata/node.js";
import { fromWireEngineRole } from "../metadata/engine-wire.js";

/** Why an announcement ended: the daemon says so to its stream. */
export type EndReason = "replaced" | "draining";

export interface Announcement {
  readonly engine: EngineRecord;
  /** Called once when the daemon ends it (a newer one of its URL, or a drain). */
  readonly end: (reason: EndReason) => void;
}

/** Checks an AnnounceEngine request's engine. @throws InvalidArgumentError naming the field. */
export function validateEngine(info: EngineInfo | undefined): EngineRecord {
  if (info === undefined) throw new InvalidArgumentError("engine", "is required: {url, role, models}");
  const problem = engineUrlProblem(info.url);
  if (problem !== undefined) throw new InvalidArgumentError("engine.url", `got ${JSON.stringify(info.url.slice(0, 200))}, ${problem}`);
  const role = fromWireEngineRole(info.role);
  if (role === undefined) {
    throw new InvalidArgumentError("engine.role", `got ${info.role}, expected ENGINE_ROLE_PREFILL, ENGINE_ROLE_DECODE or ENGINE_ROLE_BOTH`);
  }
  if (info.models.length > MAX_MODELS_PER_ENGINE) {
    throw new InvalidArgumentError("engine.models", `${info.models.length} names, expected at most ${MAX_MODELS_PER_ENGINE}`);
  }
  const bad = info.models.find((m) => !isModelName(m)) as string | undefined;
  if (bad !== undefined) {
    throw new InvalidArgumentError("engine.models", `got ${JSON.stringify(bad.slice(0, 300))}, expected names of 1-256 printable characters without spaces`);
  }
  return { url: normalEngineUrl(info.url), role, models: [...new Set(info.models)] };
}

export class EngineDirectory {
  /** By URL, in announcement order. */
  readonly #byUrl = new Map<string, Announcement>();
  #closed = false;

  constructor(
    private readonly log: Logger,
    private readonly onChange: (engines: EngineRecord[]) => void,
    readonly max = MAX_ENGINES_PER_NODE,
  ) {}

  list(): EngineRecord[] {
    return [...this.#byUrl.values()].map((a) => a.engine);
  }

  /**
   * Holds `a` until the returned function is called (idempotent); an older announcement of
   * the same URL is ended as replaced.
   * @throws ResourceExhaustedError when `max` other engines are held, or the daemon drains.
   */
  add(a: Announcement): () => void {
    if (this.#closed) throw new ResourceExhaustedError("the daemon is draining: announce the engine to the next one");
    const older = this.#byUrl.get(a.engine.url);
    if (older === undefined && this.#byUrl.size >= this.max) {
      throw new ResourceExhaustedError(`this daemon holds ${this.#byUrl.size} engines, its maximum (${this.max} per node): ${a.engine.url} is not published`);
    }
    if (older !== undefined) {
      this.#byUrl.delete(a.engine.url);
      older.end("replaced");
    }
    this.#byUrl.set(a.engine.url, a);
    this.log.info({ url: a.engine.url, role: a.engine.role, models: a.engine.models, replaced: older !== undefined }, "engine announced");
    this.onChange(this.list());
    let held = true;
    return () => {
      if (!held) return;
      held = false;
      if (this.#byUrl.get(a.engine.url) !== a) return; // replaced meanwhile
      this.#byUrl.delete(a.engine.url);
      this.log.info({ url: a.engine.url, role: a.engine.role }, "engine gone");
      this.onChange(this.list());
    };
  }

  /** Ends every announcement (a drain: their streams close, so the drain does not wait for them). */
  close(): void {
    this.#closed = true;
    const all = [...this.#byUrl.values()];
    this.#byUrl.clear();
    for (const a of all) a.end("draining");
  }
}
