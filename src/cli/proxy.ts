// `kvferry proxy`: validate the flags, start the disaggregating proxy, serve until SIGTERM
// or SIGINT, drain, exit 0. Once listening it logs "kvferry proxy serving" with `listen`
// (HOST:PORT, the real port when 0 was asked), as `kvferry daemon` logs its readiness, so
// that a spawn helper can wait for that line and read the address from it.
import { ShutdownSignals } from "./lifecycle.js";
import { loadProxyConfig, PROXY_SETTINGS, type ProxyInputs } from "../proxy/config.js";
import { tableFlags, tableInputs } from "../config/settings.js";
import { Proxy } from "../proxy/proxy.js";
import { PROXY_SERVING } from "../proxy/spawn.js";
import { createLogger } from "./logger.js";
import { flagHelp, HELP_FLAG, text, type Command, type Flags } from "./command.js";

/** Runs the proxy; resolves to the exit code. @throws ConfigError on a bad flag (exit 2). */
export async function runProxy(inputs: ProxyInputs, configFile?: string): Promise<number> {
  const config = loadProxyConfig(inputs, configFile);
  const log = createLogger(config.logLevel);
  // Caught from now on: a signal during start-up is acted on once it serves.
  const signals = new ShutdownSignals(log);
  const proxy = new Proxy(config, log);
  let listen: string;
  try {
    listen = await proxy.start();
  } catch (err) {
    log.fatal({ err }, "cannot start");
    await proxy.shutdown().catch(() => {});
    signals.dispose();
    return 1;
  }
  log.info(
    {
      listen,
      transfer: config.transfer,
      policy: config.policy,
      prefill: proxy.pool.prefill.map((i) => i.url),
      decode: proxy.pool.decode.map((i) => i.url),
      discovery: proxy.discovery?.where,
      healthy: proxy.pool.report(),
    },
    PROXY_SERVING,
  );
  return signals.until(() => proxy.shutdown());
}

// --config, then one flag per setting (proxy/config.ts: its placeholder, doc and default come from there).
const FLAGS = {
  config: { type: "string", help: "FILE", doc: "JSON with any of these settings under their names in snake_case (prefill/decode as arrays), and/or mooncake.json's keys (its metadata_* are used, the rest left to the daemon); flags override it (default $KVFERRY_CONFIG, else $MOONCAKE_CONFIG_PATH)" },
  ...tableFlags(PROXY_SETTINGS),
  help: HELP_FLAG,
} satisfies Flags;

const USAGE = `Usage: kvferry proxy --prefill URL[=DAEMON]... --decode URL[=DAEMON]... [flags]
       kvferry proxy --metadata-server URL [flags]      (discovers the instances)

Serves OpenAI's API (POST /v1/completions and /v1/chat/completions, streaming or
not; GET /v1/models, /health, /metrics) in front of prefill and decode instances.
Each request picks a decode instance, then goes to a prefill instance with
max_tokens 1 and kv_transfer_params {transfer_id, do_remote_decode: true,
source_node}; its KV then moves to the decode instance's node (--transfer), and the
original request goes to the decode instance with kv_transfer_params {transfer_id,
do_remote_prefill: true, source_node, ...}; its answer streams back unchanged.
Discovery: with --metadata-server (or a config naming etcd, redis or http) the
instances are the engines that announced themselves to their daemons (kvferry
simulate does; AnnounceEngine), added and removed as they come and go; --daemon
asks one daemon's ListNodes instead (embedded metadata). A role given by --prefill
or --decode (or the file's prefill/decode) keeps exactly those: flags win per role.
Instances: healthy ones first; one that failed a health check only when no healthy
one is left; one that refuses connections never (its request goes to another).
Upstream errors pass through with their status and body; the proxy's own are
OpenAI-style JSON (502 unreachable, 503 every instance of a role down or draining,
504 timeout). Logs "kvferry proxy serving" with its listen address once ready.

Flags:
${flagHelp(FLAGS)}

Exit codes: 0 after SIGTERM/SIGINT (requests in flight finish first, up to
--drain-ms), 1 when it cannot listen, 2 on a bad flag (the message names the flag,
the value and what was expected).
`;

export const proxyCommand: Command = {
  name: "proxy",
  summary: "the disaggregating OpenAI-compatible proxy: prefill, KV transfer, decode",
  flags: FLAGS,
  usage: USAGE,
  run: (values) => runProxy(tableInputs(PROXY_SETTINGS, values), text(values, "config")),
};
