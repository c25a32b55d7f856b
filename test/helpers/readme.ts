// README.md's shell examples as tests see them: a section by its heading, its ```sh blocks,
// and each block cut into the commands a terminal would run one by one.
//
//   const section = readmeSection("The seed's setup, step by step");
//   for (const block of shellBlocks(section)) for (const command of shellCommands(block)) ...
//
// A command is one line, or several joined by a trailing backslash, an open quote or a
// here-document (`<<'EOF'` … `EOF`). A command that ends in `&` runs in the background.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { REPO } from "./daemon.js";

export const README = join(REPO, "README.md");

/** The text under `## heading` (or any level) up to the next heading of the same or a higher level. */
export function readmeSection(heading: string, path = README): string {
  const lines = readFileSync(path, "utf8").split("\n");
  const start = lines.findIndex((l) => /^#+ /.test(l) && l.replace(/^#+ /, "") === heading);
  if (start < 0) throw new Error(`${path}: no heading "${heading}"`);
  const level = lines[start].indexOf(" ");
  let end = start + 1;
  let fenced = false;
  for (; end < lines.length; end++) {
    if (lines[end].startsWith("```")) fenced = !fenced;
    const m = /^(#+) /.exec(lines[end]);
    if (!fenced && m && m[1].length <= level) break;
  }
  return lines.slice(start + 1, end).join("\n");
}

/** The bodies of the ```sh blocks of `markdown`, in order. */
export function shellBlocks(markdown: string): string[] {
  const blocks: string[] = [];
  const re = /^```sh\n([\s\S]*?)^```$/gm;
  for (let m = re.exec(markdown); m !== null; m = re.exec(markdown)) blocks.push(m[1]);
  return blocks;
}

export interface ShellCommand {
  /** The command's text, lines joined with "\n" as written. */
  readonly text: string;
  /** Whether it ends in `&` (outside a comment): it keeps running in the background. */
  readonly background: boolean;
}

/** Cuts a block into commands; blank lines and whole-line comments are dropped. */
export function shellCommands(block: string): ShellCommand[] {
  const commands: ShellCommand[] = [];
  let pending: string[] = [];
  let quote: "'" | '"' | undefined;
  let heredoc: string | undefined;
  for (const line of block.split("\n")) {
    if (pending.length === 0 && (line.trim() === "" || line.trim().startsWith("#"))) continue;
    pending.push(line);
    if (heredoc !== undefined) {
      if (line === heredoc) heredoc = undefined;
    } else {
      const scan = scanLine(line, quote);
      quote = scan.quote;
      heredoc = scan.heredoc;
      if (quote !== undefined || heredoc !== undefined || scan.code.endsWith("\\")) continue;
    }
    if (heredoc !== undefined) continue;
    const text = pending.join("\n");
    const code = codeOf(text);
    commands.push({ text, background: /(^|[^&])&$/.test(code) });
    pending = [];
  }
  if (pending.length > 0) throw new Error(`an unfinished command at the end of a block: ${pending.join("\n")}`);
  return commands;
}

/** One line's quoting state after it, its code without a trailing comment, and a here-document it opens. */
function scanLine(line: string, open: "'" | '"' | undefined): { quote: "'" | '"' | undefined; code: string; heredoc?: string } {
  let quote = open;
  let code = "";
  for (let i = 0; i < line.length; i++) {
    const c = line[i];
    if (quote === "'") {
      if (c === "'") quote = undefined;
    } else if (quote === '"') {
      if (c === "\\") code += line[i++] ?? "";
      else if (c === '"') quote = undefined;
    } else if (c === "'" || c === '"') {
      quote = c;
    } else if (c === "#" && (i === 0 || /\s/.test(line[i - 1]))) {
      break;
    }
    code += c;
  }
  const doc = quote === undefined ? /<<-?\s*['"]?([A-Za-z_]+)['"]?/.exec(code) : null;
  return { quote, code: code.trimEnd(), heredoc: doc?.[1] };
}

/** A command's text without comments, trimmed (here-document bodies left out). */
function codeOf(text: string): string {
  const lines = text.split("\n");
  let quote: "'" | '"' | undefined;
  let last = "";
  for (const line of lines) {
    const scan = scanLine(line, quote);
    quote = scan.quote;
    last = scan.code;
    if (scan.heredoc !== undefined) return scan.code.trim();
  }
  return last.trim();
}
