// Editing the top level of a JSON object's text without re-serializing the rest: the proxy
// sets a few members of a client's request (max_tokens, kv_transfer_params, ...) and must
// pass every other byte through as sent. JSON.parse + JSON.stringify would not: an integer
// above 2^53 (a `seed`) loses digits, `1.0` becomes `1`, `1e2` becomes `100`.
//
// The text must be a JSON object that JSON.parse accepted: the scanner below only finds
// where each top-level member starts and ends, it does not validate.

interface Member {
  key: string;
  /** The member's text, `"key": value`, as written. */
  text: string;
}

const WHITESPACE = new Set([" ", "\t", "\n", "\r"]);

/** The index just past the string literal that opens at `at` (a `"`). */
function endOfString(text: string, at: number): number {
  for (let i = at + 1; i < text.length; i++) {
    if (text[i] === "\\") i++;
    else if (text[i] === '"') return i + 1;
  }
  throw new SyntaxError("unterminated string");
}

/** The index just past the value that starts at `at`. */
function endOfValue(text: string, at: number): number {
  const first = text[at];
  if (first === '"') return endOfString(text, at);
  if (first === "{" || first === "[") {
    let depth = 0;
    for (let i = at; i < text.length; i++) {
      const c = text[i];
      if (c === '"') i = endOfString(text, i) - 1;
      else if (c === "{" || c === "[") depth++;
      else if ((c === "}" || c === "]") && --depth === 0) return i + 1;
    }
    throw new SyntaxError("unterminated object or array");
  }
  // A number, true, false or null: up to the next delimiter.
  let i = at;
  while (i < text.length && text[i] !== "," && text[i] !== "}" && !WHITESPACE.has(text[i]!)) i++;
  return i;
}

function skipWhitespace(text: string, at: number): number {
  while (at < text.length && WHITESPACE.has(text[at]!)) at++;
  return at;
}

/** The top-level members of a JSON object text, in order, each as written. */
function membersOf(text: string): Member[] {
  let i = skipWhitespace(text, 0);
  if (text[i] !== "{") throw new SyntaxError("not a JSON object");
  const members: Member[] = [];
  i = skipWhitespace(text, i + 1);
  if (text[i] === "}") return members;
  for (;;) {
    const start = i;
    const keyEnd = endOfString(text, i);
    const key = JSON.parse(text.slice(i, keyEnd)) as string;
    i = skipWhitespace(text, keyEnd);
    if (text[i] !== ":") throw new SyntaxError(`no ":" after key ${JSON.stringify(key)}`);
    i = skipWhitespace(text, i + 1);
    const valueEnd = endOfValue(text, i);
    members.push({ key, text: text.slice(start, valueEnd) });
    i = skipWhitespace(text, valueEnd);
    if (text[i] === "}") return members;
    if (text[i] !== ",") throw new SyntaxError(`expected "," or "}" after key ${JSON.stringify(key)}`);
    i = skipWhitespace(text, i + 1);
  }
}

/**
 * `text` (a JSON object) with the members of `set` written in (replacing any of the same
 * key), and the keys of `drop` removed; every other member is kept exactly as written.
 * A value of `undefined` in `set` removes that key too.
 */
export function withMembers(text: string, set: Record<string, unknown>, drop: readonly string[] = []): string {
  const replaced = new Set([...Object.keys(set), ...drop]);
  const kept = membersOf(text).filter((m) => !replaced.has(m.key)).map((m) => m.text);
  const added = Object.entries(set)
    .filter(([, value]) => value !== undefined)
    .map(([key, value]) => `${JSON.stringify(key)}:${JSON.stringify(value)}`);
  return `{${[...kept, ...added].join(",")}}`;
}
