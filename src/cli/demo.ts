// `kvferry demo`: disaggregated serving on one machine, nothing else running.
//
// Starts two daemons (TCP over loopback), a prefill and a decode engine simulator beside
// them, the proxy in front, and a non-disaggregated simulator as the reference (demo/cluster.ts);
// sends the same requests (mixed prompt lengths, completions and chat, some streamed;
// demo/workload.ts) through the proxy and to the reference; prints requests ok, outputs
// identical to the reference, KV bytes moved, transfer GB/s and time to first byte p50/p99
// side by side; stops every process and checks they all exited 0. Exit code 0 only if
// every request succeeded with the reference's output and every process stopped cleanly.
import { DemoCluster } from "../demo/cluster.js";
import { accept, integer, MiB, refuse, size, type Parser } from "../config/parse.js";
import { kebab, setting, settingValue, tableFlags, tableInputs, type SettingSpec, type SettingValue } from "../config/settings.js";
import { ConfigError, ServiceStartError } from "../errors.js";
import { DEFAULT_START_TIMEOUT_MS, describeExit } from "../launch/spawn-service.js";
import { bytes, metricSum, percentile, progressBar, table } from "../demo/report.js";
import { makeRequests, runAll, type DemoResult } from "../demo/workload.js";
import { KvferryClient } from "../client/client.js";
import { stopWithNpm } from "./lifecycle.js";
import { flagHelp, HELP_FLAG, type Command, type FlagValues, type Flags } from "./command.js";

/** The demo's settings, checked: a value per DEMO_SETTINGS entry (startTimeoutMs: how long each process may take to serve). */
export type DemoOptions = { [F in keyof typeof DEMO_SETTINGS]: SettingValue<(typeof DEMO_SETTINGS)[F]> };

/** --kv-buffer-size as the daemons will read it (checked here, so a bad one is exit 2 before anything starts). */
const bufferSize: Parser<string> = (raw) => {
  const parsed = size(64 * MiB)(raw, true);
  return parsed.ok ? accept(String(raw)) : parsed;
};

const transferMode: Parser<"push" | "pull"> = (raw) => (raw === "push" || raw === "pull" ? accept(raw) : refuse("push or pull"));

/** The demo's settings, keyed by DemoOptions field: flags (kebab-case), --help and defaults come from here. */
export const DEMO_SETTINGS = {
  requests: setting({ parse: integer(1, 10_000), default: 48, placeholder: "N", doc: "requests to send" }),
  concurrency: setting({ parse: integer(1, 256), default: 4, placeholder: "N", doc: "requests in flight at once" }),
  maxPromptWords: setting({
    parse: integer(1, 8_192), default: 512, placeholder: "N", doc: "longest prompt, in words ≈ tokens (128 KiB of KV each)",
  }),
  transfer: setting({
    parse: transferMode, default: "push", placeholder: "MODE",
    doc: "push (the prefill daemon pushes the KV) | pull (the decode daemon pulls it)",
  }),
  kvBufferSize: setting({ parse: bufferSize, default: "1GiB", placeholder: "BYTES", doc: "lookup buffer of each daemon" }),
  startTimeoutMs: setting({
    parse: integer(1, 3_600_000), default: DEFAULT_START_TIMEOUT_MS, placeholder: "MS", doc: "how long each process may take to start serving",
  }),
};

const MODEL = "kvferry-sim-7b";

export async function runDemo(o: DemoOptions): Promise<number> {
  const out = (s: string) => process.stdout.write(`${s}\n`);
  out(`kvferry demo: disaggregated prefill/decode on 127.0.0.1 with engine simulators (no GPU)`);
  const demo = new DemoCluster();
  // Any way of being stopped stops the children first (they were tracked from their spawn).
  // A stop by signal exits 128 + n, also when the run fails because of it (a start-up that the
  // signal cut short reaches the finally block below before this handler's stop is done).
  let stoppedBy: NodeJS.Signals | undefined;
  const signalExit = (signal: NodeJS.Signals) => 128 + (signal === "SIGINT" ? 2 : signal === "SIGHUP" ? 1 : 15);
  const stopOnSignal = (signal: NodeJS.Signals) => {
    stoppedBy = signal;
    out(`\n${signal}: stopping the demo's processes`);
    void demo.stop().then((codes) => {
      out(`stopped ${codes.length} processes`);
      process.exit(signalExit(signal));
    });
  };
  const SIGNALS: NodeJS.Signals[] = ["SIGINT", "SIGTERM", "SIGHUP"];
  for (const signal of SIGNALS) process.once(signal, stopOnSignal);
  stopWithNpm((message) => out(`\n${message}`));
  let ok = true;
  try {
    const c = await demo.start({
      bufferSize: o.kvBufferSize,
      transfer: o.transfer,
      startTimeoutMs: o.startTimeoutMs,
      simulatorArgs: ["--model", MODEL],
      say: (line) => out(`  ${line}`),
    });
    const requests = makeRequests(o.requests, o.maxPromptWords, MODEL);
    out(`\n${requests.length} requests, ${o.concurrency} at a time, prompts of ${Math.min(...requests.map((r) => r.words))}–${Math.max(...requests.map((r) => r.words))} words (128 KiB of KV per token)`);

    const sentBefore = (await info(c.prefillDaemon.address)).counters!.bytesSent;
    const draw = drawer(requests.length, "through the proxy   ");
    const disaggregated = await runAll(c.proxyUrl, requests, o.concurrency, draw);
    const sentAfter = (await info(c.prefillDaemon.address)).counters!.bytesSent;
    const drawRef = drawer(requests.length, "reference (1 engine)");
    const reference = await runAll(c.reference.url, requests, o.concurrency, drawRef);
    const metrics = await (await fetch(`${c.proxyUrl}/metrics`)).text();

    const succeeded = disaggregated.filter((r) => r.ok);
    const identical = disaggregated.filter((r, i) => r.ok && reference[i]!.ok && r.text === reference[i]!.text);
    const moved = o.transfer === "push" ? metricSum(metrics, "kvferry_proxy_kv_transfer_bytes_total") : sentAfter - sentBefore;
    const transferSeconds = metricSum(metrics, "kvferry_proxy_kv_transfer_seconds_sum");
    // Where a disaggregated request's time to first byte goes, on average (the proxy's own metrics).
    const meanMs = (name: string) => {
      const count = metricSum(metrics, `${name}_count`);
      return count > 0 ? (metricSum(metrics, `${name}_sum`) / count) * 1000 : NaN;
    };
    const prefillMs = meanMs("kvferry_proxy_prefill_duration_seconds");
    const pushMs = o.transfer === "push" ? meanMs("kvferry_proxy_kv_transfer_seconds") : 0;
    // Streamed requests only: a non-streamed answer's first byte comes after the whole generation.
    const streamedTtfb = succeeded.filter((r) => r.request.stream).map((r) => r.ttfbMs);
    const meanTtfb = streamedTtfb.length === 0 ? NaN : streamedTtfb.reduce((a, b) => a + b, 0) / streamedTtfb.length;
    const restMs = meanTtfb - prefillMs - pushMs;
    const ms = (v: number) => (Number.isFinite(v) ? `${v.toFixed(1)} ms` : "—");
    const ttfb = (rs: DemoResult[], p: number) => {
      const ok = rs.filter((r) => r.ok).map((r) => r.ttfbMs);
      return ok.length === 0 ? "—" : `${percentile(ok, p).toFixed(1)} ms`;
    };
    out("");
    out(
      table([
        ["", "disaggregated (proxy → prefill → KV → decode)", "one engine (reference)"],
        ["requests ok", `${succeeded.length}/${requests.length}`, `${reference.filter((r) => r.ok).length}/${requests.length}`],
        ["output identical to the reference", `${identical.length}/${requests.length}`, "—"],
        ["KV bytes moved between daemons", bytes(sentAfter - sentBefore), "—"],
        ["KV push rate, per request", o.transfer === "push" && transferSeconds > 0 ? `${(moved / transferSeconds / 1e9).toFixed(2)} GB/s` : "(pulled by decode)", "—"],
        ["time to first byte p50", ttfb(disaggregated, 50), ttfb(reference, 50)],
        ["time to first byte p99", ttfb(disaggregated, 99), ttfb(reference, 99)],
        ["  mean: prefill (KV computed, put into its daemon)", ms(prefillMs), "—"],
        ["  mean: KV push between the daemons", o.transfer === "push" ? ms(pushMs) : "(in the decode)", "—"],
        ["  mean: the rest, streamed (decode gets and checks the KV; proxy)", ms(restMs), "—"],
      ]),
    );
    out("The simulators write and read the KV in their daemons' pools in place (the local path);");
    out("computing, checking and streaming it is most of the rest of the gap to one engine.");
    const failures = disaggregated.filter((r) => !r.ok || r.text !== reference[r.request.index]!.text);
    for (const f of failures.slice(0, 5)) {
      out(`  request ${f.request.index}: ${f.ok ? "output differs from the reference" : `HTTP ${f.status} ${f.error ?? ""}`}`);
    }
    const left = (await info(c.decodeDaemon.address)).entries + (await info(c.prefillDaemon.address)).entries;
    out(`entries left in the daemons: ${left} (every KV consumed by its decode)`);
    ok = failures.length === 0 && reference.every((r) => r.ok) && left === 0;
  } catch (err) {
    out(`demo failed: ${(err as Error).message}`);
    if (err instanceof ServiceStartError && err.timedOut) out(`(a busy machine? --start-timeout-ms raises the ${o.startTimeoutMs} ms limit)`);
    ok = false;
  } finally {
    for (const signal of SIGNALS) process.off(signal, stopOnSignal);
    const codes = await demo.stop();
    const clean = codes.every((c) => c.code === 0);
    out(`\nstopped ${codes.length} processes: ${codes.map((c) => `${c.name} ${c.code === 0 ? 0 : describeExit(c)}`).join(", ")}`);
    ok &&= clean;
  }
  if (stoppedBy !== undefined) {
    out(`demo: stopped by ${stoppedBy}`);
    return signalExit(stoppedBy);
  }
  out(ok ? "demo: OK" : "demo: FAILED");
  return ok ? 0 : 1;
}

async function info(address: string) {
  const client = new KvferryClient(address);
  try {
    // Generous: on a busy machine the channel's first connection alone can take seconds.
    return await client.serverInfo({ timeoutMs: 30_000 });
  } finally {
    client.close();
  }
}

/** Progress: a bar redrawn in place on a terminal, a line at each quarter otherwise. */
function drawer(total: number, label: string): (done: number) => void {
  const tty = process.stdout.isTTY === true;
  let lastQuarter = -1;
  return (done) => {
    if (tty) {
      process.stdout.write(`\r  ${label} ${progressBar(done, total)}${done === total ? "\n" : ""}`);
      return;
    }
    const quarter = Math.floor((4 * done) / total);
    if (quarter !== lastQuarter) {
      lastQuarter = quarter;
      process.stdout.write(`  ${label} ${progressBar(done, total)}\n`);
    }
  };
}

const FLAGS = {
  ...tableFlags(DEMO_SETTINGS),
  help: HELP_FLAG,
} satisfies Flags;

const USAGE = `Usage: kvferry demo [flags]

Disaggregated serving on this machine, with nothing else running: two kvferry daemons
on loopback, a prefill and a decode engine simulator (OpenAI-compatible; no GPU), the
proxy in front of them, and a non-disaggregated simulator as the reference. Sends the
same requests (mixed prompt lengths, completions and chat, some streamed) through the
proxy and to the reference, prints requests ok, outputs identical to the reference, KV
bytes moved, transfer GB/s and time to first byte p50/p99 side by side, then stops
every process. Exit code 0 when every request matched the reference and every process
stopped cleanly.

Flags:
${flagHelp(FLAGS)}
`;

/** The demo's flags, checked: a bad one is a ConfigError naming it (exit 2). */
function demoOptions(v: FlagValues): DemoOptions {
  const inputs: Record<string, unknown> = tableInputs(DEMO_SETTINGS, v);
  const options = Object.entries(DEMO_SETTINGS).map(([field, spec]: [string, SettingSpec<unknown>]) => {
    const raw = inputs[field];
    return [field, settingValue(spec, raw, (expected) => new ConfigError(`--${kebab(field)}`, kebab(field), raw, expected))];
  });
  return Object.fromEntries(options) as DemoOptions;
}

export const demoCommand: Command = {
  name: "demo",
  summary: "disaggregated serving on this machine: daemons, engine simulators, proxy",
  flags: FLAGS,
  usage: USAGE,
  run: (values) => runDemo(demoOptions(values)),
};
