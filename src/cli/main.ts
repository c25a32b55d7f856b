// kvferry's command line: `kvferry <command> [flags]`. Each command lives in its own file
// (flags, help, run); this file only dispatches and turns bad input into exit code 2.
import { ConfigError } from "../errors.js";
import { flagHelp, parseFlags, type Command } from "./command.js";
import { daemonCommand } from "./daemon.js";
import { demoCommand } from "./demo.js";
import { EXIT_USAGE } from "./exit-codes.js";
import { metadataServerCommand } from "./metadata-server.js";
import { proxyCommand } from "./proxy.js";
import { simulateCommand } from "./simulate.js";
import { statusCommand } from "./status.js";
import { VERSION } from "../version.js";

/** Exit codes: 0 fine, 1 failure at run time, 2 bad usage or bad configuration, 3 metadata backend unreachable. */
export { EXIT_METADATA, EXIT_USAGE } from "./exit-codes.js";

/** In the order `kvferry --help` lists them. */
const COMMANDS: readonly Command[] = [demoCommand, daemonCommand, proxyCommand, simulateCommand, statusCommand, metadataServerCommand];

const USAGE = `kvferry — KV-cache transfer service for disaggregated LLM serving

Usage: kvferry <command> [flags]

Commands:
${[...COMMANDS, { name: "version", summary: "print kvferry's version (also `kvferry --version`)" }, { name: "help", summary: "show this help, or `kvferry help <command>`" }]
  .map((c) => `  ${c.name.padEnd(16)} ${c.summary}`)
  .join("\n")}

Run \`kvferry <command> --help\` for a command's flags.
`;

const FULL_USAGE = `${USAGE}
Flags of \`kvferry daemon\`:
${flagHelp(daemonCommand.flags)}
`;

export async function run(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === "help" || name === "--help" || name === "-h") {
    const topic = COMMANDS.find((c) => c.name === rest[0]);
    process.stdout.write(topic?.usage ?? FULL_USAGE);
    return 0;
  }
  if (name === "version" || name === "--version" || name === "-V") {
    process.stdout.write(`kvferry ${VERSION}\n`);
    return 0;
  }
  const command = COMMANDS.find((c) => c.name === name);
  if (command === undefined) {
    process.stderr.write(`kvferry: unknown command ${JSON.stringify(name)}\n\n${USAGE}`);
    return EXIT_USAGE;
  }
  try {
    const values = parseFlags(rest, command.flags);
    if (values.help) {
      process.stdout.write(command.usage);
      return 0;
    }
    return await command.run(values);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`kvferry: invalid configuration: ${err.message}\n`);
      return EXIT_USAGE;
    }
    if (err instanceof TypeError && "code" in err && String(err.code).startsWith("ERR_PARSE_ARGS")) {
      process.stderr.write(`kvferry ${name}: ${err.message}\nRun \`kvferry ${name} --help\` for the flags.\n`);
      return EXIT_USAGE;
    }
    throw err;
  }
}
