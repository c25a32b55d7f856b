// `kvferry metadata-server`: serve the in-memory http metadata store (metadata/http-server.ts)
// until SIGTERM or SIGINT, then exit 0. Once listening it logs "kvferry metadata-server
// serving" with `listen` (HOST:PORT, the real port when 0 was asked) and `url` (what a
// daemon's metadata_server names), as `kvferry daemon` logs its readiness.
import { ShutdownSignals } from "./lifecycle.js";
import { ConfigError } from "../errors.js";
import { formatHostPort, listenAddress, type HostPort } from "../config/parse.js";
import { startMetadataServer } from "../metadata/http-server.js";
import { createLogger } from "./logger.js";
import type { LogLevel } from "../config/config.js";
import { flagHelp, HELP_FLAG, LOG_LEVEL_FLAG, text, type Command, type Flags } from "./command.js";

export interface MetadataServerInputs {
  listen?: string;   // --listen
  path?: string;     // --path
  logLevel?: string; // --log-level
}

export const METADATA_SERVER_DEFAULT_LISTEN = "127.0.0.1:8080";
const LOG_LEVELS = ["trace", "debug", "info", "warn", "error", "fatal", "silent"];
const PATH = /^\/[A-Za-z0-9\-._~!$&'()*+,;=:@%/]{0,255}$/;

function parseInputs(inputs: MetadataServerInputs): { listen: HostPort; path: string; logLevel: LogLevel } {
  const listenText = inputs.listen ?? METADATA_SERVER_DEFAULT_LISTEN;
  const listen = listenAddress("127.0.0.1")(listenText, true);
  if (!listen.ok) throw new ConfigError("--listen", "listen", listenText, listen.expected);
  const path = inputs.path ?? "/metadata";
  if (!PATH.test(path)) {
    throw new ConfigError("--path", "path", path, `a URL path starting with "/", at most 256 characters, without "?" or "#" (e.g. /metadata)`);
  }
  const logLevel = inputs.logLevel ?? "info";
  if (!LOG_LEVELS.includes(logLevel)) throw new ConfigError("--log-level", "log-level", logLevel, `one of ${LOG_LEVELS.join(" | ")}`);
  return { listen: listen.value, path, logLevel: logLevel as LogLevel };
}

/** Runs the server; resolves to the exit code. @throws ConfigError on a bad flag (exit 2). */
export async function runMetadataServer(inputs: MetadataServerInputs): Promise<number> {
  const { listen, path, logLevel } = parseInputs(inputs);
  const log = createLogger(logLevel);
  // Caught from now on: a signal during start-up is acted on once it serves.
  const signals = new ShutdownSignals(log);
  let server;
  try {
    server = await startMetadataServer({ host: listen.host, port: listen.port, path }, log);
  } catch (err) {
    log.fatal({ err, listen: formatHostPort(listen) }, "cannot start");
    signals.dispose();
    return 1;
  }
  log.info({ listen: formatHostPort({ host: listen.host, port: server.port }), url: server.url }, "kvferry metadata-server serving");
  return signals.until(() => server.close());
}

const FLAGS = {
  listen: { type: "string", help: "HOST:PORT", doc: "where to listen (default 127.0.0.1:8080; PORT alone means 127.0.0.1:PORT; port 0 picks one)" },
  path: { type: "string", help: "PATH", doc: "the URL path served (default /metadata)" },
  "log-level": LOG_LEVEL_FLAG,
  help: HELP_FLAG,
} satisfies Flags;

const USAGE = `Usage: kvferry metadata-server [flags]

Serves an in-memory key-value store over Mooncake's http metadata protocol
(GET / PUT / DELETE PATH?key=KEY, GET /health) for daemons and Mooncake transfer
engines whose metadata_server is its URL, answering as Mooncake's own server does:
a key containing "rpc_meta" (an engine's address) is refused (400) a different
value while it exists, so a second engine under a name in use fails to start.
Nothing is persisted: after a restart the daemons write their records again.
Logs "kvferry metadata-server serving" with the URL once listening.

Flags:
${flagHelp(FLAGS)}

Exit codes: 0 after SIGTERM/SIGINT, 1 when it cannot listen, 2 on a bad flag.
`;

export const metadataServerCommand: Command = {
  name: "metadata-server",
  summary: "an in-memory http metadata store (metadata_server: http://HOST:PORT/metadata)",
  flags: FLAGS,
  usage: USAGE,
  run: (values) =>
    runMetadataServer({ listen: text(values, "listen"), path: text(values, "path"), logLevel: text(values, "log-level") }),
};
