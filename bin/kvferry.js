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
process.exitCode = await run(process.argv.slice(2));
