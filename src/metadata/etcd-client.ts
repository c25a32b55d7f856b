// The etcd3 client of the etcd registry, and how its calls are spread over the endpoints.
//
// Calls are bounded by min(ttl, 5 s) (the registry's call timeout, passed in). An attempt
// gets that bound divided by the number of endpoints (at least 500 ms), and a failed
// attempt is retried on the next endpoint: the calls the registry makes (get, put, lease
// grant and revoke) are idempotent, so DEADLINE_EXCEEDED is retried like UNAVAILABLE. A
// stream (the watch, the lease keepalive) that hears nothing within an attempt's time is
// cancelled as UNAVAILABLE (firstAnswerWithin, a gRPC interceptor), which makes etcd3 open
// it again on another endpoint. So a member that accepts connections and never answers
// (gRPC then waits for its HTTP/2 settings forever) costs one attempt, not the whole call.
// With more than one endpoint, one that did not answer is skipped for a second (a circuit
// breaker per endpoint); when every one is being skipped, errors name the last real
// failure, not the breaker (EtcdClient.reason).
//
// cockatiel is the policy library etcd3 takes its fault-handling options from.
import { status as GrpcStatus, InterceptingCall, type Interceptor } from "@grpc/grpc-js";
import {
  ConsecutiveBreaker,
  ExponentialBackoff,
  circuitBreaker,
  handleWhen,
  isBrokenCircuitError,
  noop,
  retry,
  type IPolicy,
} from "cockatiel";
import { Etcd3, GRPCDeadlineExceededError, GRPCUnavailableError, isRecoverableError } from "etcd3";
import { ConfigError } from "../errors.js";

/** The least one attempt of a call (or a stream's first answer) is given, however many endpoints. */
const MIN_ATTEMPT_MS = 500;
/** How long an endpoint that did not answer is skipped before it is tried again. */
const ENDPOINT_PAUSE_MS = 1_000;

/** The endpoints of `server` ("h:p", "etcd://h:p" or "etcd://h1:p,h2:p") as "host:port". */
export function etcdEndpoints(server: string): string[] {
  const list = server.replace(/^etcd:\/\//i, "");
  const endpoints = list.split(",").map((e) => e.trim()).filter((e) => e.length > 0);
  if (endpoints.length === 0) {
    throw new ConfigError("etcd registry", "metadata_server", server, "HOST:PORT or etcd://HOST:PORT[,HOST:PORT...]");
  }
  return endpoints;
}

/** An etcd3 client over `endpoints` with the per-attempt deadlines and endpoint policies above. */
export class EtcdClient {
  readonly client: Etcd3;
  /** "h:p: what failed": the last time an endpoint did not answer, for messages about a skipped one. */
  #lastFailure: string | undefined;

  /**
   * @param callTimeoutMs the bound of a whole call, shared among its attempts.
   * @param maxBackoffMs the longest wait before etcd3 opens a broken watch again.
   */
  constructor(endpoints: string[], callTimeoutMs: number, maxBackoffMs: number) {
    const attemptMs = Math.max(MIN_ATTEMPT_MS, Math.floor(callTimeoutMs / endpoints.length));
    this.client = new Etcd3({
      hosts: endpoints.map((e) => `http://${e}`),
      // Each attempt of a unary call has a deadline of its own; a stream must hear from its endpoint as soon.
      defaultCallOptions: (context) =>
        context.isStream ? { interceptors: [firstAnswerWithin(attemptMs)] } : { deadline: Date.now() + attemptMs },
      faultHandling: {
        host: (host) => (endpoints.length > 1 ? this.#skipWhenSilent(host) : noop),
        // A failed call is retried up to once per endpoint, each try on the next one.
        global: retry(handleWhen(retryable), { maxAttempts: endpoints.length }),
        // etcd3 types this as a backoff (its first step) and calls next() on it to start over.
        watchBackoff: new ExponentialBackoff({ initialDelay: 50, maxDelay: maxBackoffMs }).next(),
      },
      grpcOptions: {
        "grpc.initial_reconnect_backoff_ms": 100,
        "grpc.max_reconnect_backoff_ms": 1_000,
        // Notices a connection that went silent (etcd's server accepts pings every 5 s or more).
        "grpc.keepalive_time_ms": 10_000,
        "grpc.keepalive_timeout_ms": 5_000,
      },
    });
  }

  /** What went wrong, for a message: when every endpoint was being skipped, what the last one did. */
  reason(err: unknown): string {
    if (!isBrokenCircuitError(err)) return describe(err);
    const last = this.#lastFailure === undefined ? "" : `; the last, ${this.#lastFailure}`;
    return `every endpoint failed just now${last}`;
  }

  /**
   * The policy of one endpoint of several: skipped for a second once it did not answer
   * (refused, timed out, or a stream heard nothing), so that the calls after go elsewhere.
   */
  #skipWhenSilent(host: string): IPolicy {
    const breaker = circuitBreaker(handleWhen(silent), { halfOpenAfter: ENDPOINT_PAUSE_MS, breaker: new ConsecutiveBreaker(1) });
    const endpoint = host.replace(/^http:\/\//, "");
    breaker.onFailure(({ handled, reason }) => {
      if (handled && "error" in reason) this.#lastFailure = `${endpoint}: ${describe(reason.error)}`;
    });
    return breaker;
  }
}

/** A failure worth another attempt: etcd3's recoverable errors, and a deadline (the calls here are idempotent). */
function retryable(err: Error): boolean {
  return isRecoverableError(err) || err instanceof GRPCDeadlineExceededError;
}

/** The endpoint did not answer: refused, timed out, or a stream heard nothing (firstAnswerWithin). */
function silent(err: Error): boolean {
  return err instanceof GRPCUnavailableError || err instanceof GRPCDeadlineExceededError;
}

/**
 * Cancels a stream as UNAVAILABLE unless its endpoint answers (a message or a status)
 * within `ms` of its start: etcd3 then marks the endpoint failed and opens the stream
 * again, on another endpoint. The streams here (watch, lease keepalive) write a request
 * as soon as they open, which etcd answers at once.
 */
function firstAnswerWithin(ms: number): Interceptor {
  return (options, nextCall) => {
    let timer: NodeJS.Timeout | undefined;
    const call: InterceptingCall = new InterceptingCall(nextCall(options), {
      start(metadata, listener, next) {
        timer = setTimeout(() => call.cancelWithStatus(GrpcStatus.UNAVAILABLE, `no answer within ${ms} ms`), ms);
        timer.unref();
        next(metadata, {
          onReceiveMessage(message, nextMessage) {
            clearTimeout(timer);
            nextMessage(message);
          },
          onReceiveStatus(status, nextStatus) {
            clearTimeout(timer);
            nextStatus(status);
          },
        });
      },
    });
    return call;
  };
}

/** An error's message, without the empty "Resolution note" gRPC appends. */
function describe(err: unknown): string {
  const message = err instanceof Error ? err.message : String(err);
  return message.replace(/\.?\s*Resolution note:\s*$/, "");
}
