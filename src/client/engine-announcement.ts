// An engine's announcement to its local daemon (AnnounceEngine), kept up for as long as the
// engine runs: the call stays open; when it ends because the daemon went away or drained,
// it is made again (backoff 250 ms doubling to 5 s) until close().
//
//   connecting ──accepted──▶ announced ──stream ends──▶ waiting ──backoff──▶ connecting
//   any ──close()──▶ closed
//
// A refusal that cannot change by retrying (INVALID_ARGUMENT; ABORTED: another call
// announced this URL; UNIMPLEMENTED or INTERNAL: a daemon without AnnounceEngine) stops it: `onError` hears it and the state becomes "refused".
import { Metadata, type ClientReadableStream, type ServiceError } from "@grpc/grpc-js";
import { AbortedError, InternalError, InvalidArgumentError, type KvferryError } from "../errors.js";
import { errorFromStatus } from "../grpc-errors.js";
import type { AnnounceEngineResponse, KvFerryClient } from "../gen/kvferry/v1/kvferry.js";
import { EngineRole } from "../gen/kvferry/v1/node.js";

export interface EngineToAnnounce {
  url: string;
  role: "prefill" | "decode" | "both";
  models?: string[];
}

export type AnnouncementState = "connecting" | "announced" | "waiting" | "refused" | "closed";

export interface AnnouncementEvents {
  /** The daemon published the engine under this node id. */
  onAnnounced?: (nodeId: string) => void;
  /** The announcement ended or failed; `final` when it will not be tried again. */
  onError?: (err: KvferryError, final: boolean) => void;
}

const FIRST_BACKOFF_MS = 250;
const MAX_BACKOFF_MS = 5_000;
const ROLES = { prefill: EngineRole.ENGINE_ROLE_PREFILL, decode: EngineRole.ENGINE_ROLE_DECODE, both: EngineRole.ENGINE_ROLE_BOTH };

export class EngineAnnouncement {
  #state: AnnouncementState = "connecting";
  #call: ClientReadableStream<AnnounceEngineResponse> | undefined;
  #timer: NodeJS.Timeout | undefined;
  #backoff = FIRST_BACKOFF_MS;
  #first: { resolve: (nodeId: string) => void; reject: (err: KvferryError) => void } | undefined;
  /** Settles with the first answer: the node id, or the refusal. */
  readonly announced: Promise<string>;

  constructor(
    private readonly raw: KvFerryClient,
    private readonly engine: EngineToAnnounce,
    private readonly events: AnnouncementEvents = {},
  ) {
    this.announced = new Promise((resolve, reject) => (this.#first = { resolve, reject }));
    this.announced.catch(() => undefined); // a caller that does not wait for it must not see an unhandled rejection
    this.#open();
  }

  get state(): AnnouncementState {
    return this.#state;
  }

  /** Withdraws the engine: the call is cancelled and the daemon drops it from its record. */
  close(): void {
    if (this.#state === "closed") return;
    this.#state = "closed";
    clearTimeout(this.#timer);
    this.#call?.cancel();
    this.#call = undefined;
  }

  #open(): void {
    this.#state = "connecting";
    const request = { engine: { url: this.engine.url, role: ROLES[this.engine.role], models: this.engine.models ?? [] } };
    const call = this.raw.announceEngine(request, new Metadata());
    this.#call = call;
    let ended = false;
    const end = (err: KvferryError) => {
      if (ended || this.#call !== call) return;
      ended = true;
      this.#call = undefined;
      if (this.#state === "closed") return;
      const final = err instanceof InvalidArgumentError || err instanceof AbortedError || err instanceof InternalError;
      this.events.onError?.(err, final);
      if (this.#first !== undefined && final) {
        this.#first.reject(err);
        this.#first = undefined;
      }
      if (final) {
        this.#state = "refused";
        return;
      }
      this.#state = "waiting";
      this.#timer = setTimeout(() => this.#open(), this.#backoff);
      this.#timer.unref();
      this.#backoff = Math.min(this.#backoff * 2, MAX_BACKOFF_MS);
    };
    call.on("data", (msg: AnnounceEngineResponse) => {
      if (this.#state !== "connecting") return;
      this.#state = "announced";
      this.#backoff = FIRST_BACKOFF_MS;
      this.events.onAnnounced?.(msg.nodeId);
      this.#first?.resolve(msg.nodeId);
      this.#first = undefined;
    });
    call.on("error", (err: ServiceError) => end(errorFromStatus(err.code, err.details)));
    call.on("end", () => end(errorFromStatus(14 /* UNAVAILABLE */, "the daemon ended the announcement (it drains)")));
  }
}
