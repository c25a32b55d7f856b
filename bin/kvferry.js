#!/usr/bin/env node
// The `kvferry` command. The TypeScript sources are compiled to dist/ by `npm run build`
// (which `npm test`, `npm run demo` and `npm install` run for you).
import { existsSync } from "node:fs";

const main = new URL("../dist/cli/main.js", import.meta.url);
if (!existsSync(main)) {
  console.error("kvferry is not built yet: run `npm run build` (or `npm test` / `npm run demo`) in the repository first.");
  process.exit(1);
}
const { run } = await import(main.href);
// Exit as soon as the command is done: a client socket still closing (an unreachable
// metadata backend, a gRPC channel) must not keep a stopped command alive. Writes to
// stdout/stderr are synchronous on Linux pipes and files, so nothing is cut short.
process.exit(await run(process.argv.slice(2)));
