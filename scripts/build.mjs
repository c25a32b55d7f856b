#!/usr/bin/env node
// The build: TypeScript → dist/, and the descriptor sets that reflection serves.
import { execFileSync } from "node:child_process";
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));
const bin = (name) => join(root, "node_modules/.bin", name);
const run = (cmd, args) => execFileSync(cmd, args, { cwd: root, stdio: ["ignore", "inherit", "inherit"] });

rmSync(join(root, "dist"), { recursive: true, force: true });
run(bin("tsc"), ["-p", "tsconfig.json"]);
mkdirSync(join(root, "dist/descriptors"), { recursive: true });
run(bin("buf"), ["build", "-o", "dist/descriptors/kvferry.binpb"]);
run(bin("buf"), ["build", "node_modules/grpc-health-check/proto", "-o", "dist/descriptors/health.binpb"]);
writeFileSync(join(root, "dist/.built"), `${new Date().toISOString()}\n`);
