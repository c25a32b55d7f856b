// The simulator's tokenizer: deterministic, simple, and nothing like a real model's.
//
// Text splits into chat markers (`<|user|>`), runs of letters and digits, and single
// punctuation characters; whitespace separates tokens and is dropped. A token's id is a
// stable hash (FNV-1a, 32 bits) of its text folded into the vocabulary, so the same text
// gives the same ids on every node and in every run. Every prompt starts with BOS, so
// even an empty prompt has one token (and so a KV of at least one token per layer).
//
// Chat requests become one prompt through a fixed template:
//   <|system|>\n…\n<|user|>\n…\n<|assistant|>\n

/** Size of the simulated vocabulary; ids are in [0, VOCAB_SIZE). */
export const VOCAB_SIZE = 32000;
/** Begin-of-sequence, the first token of every prompt. */
export const BOS_ID = 1;
/** Ids below this are reserved for special tokens (BOS, …). */
const FIRST_ORDINARY_ID = 3;

const TOKEN = /<\|[a-z_]+\|>|[\p{L}\p{N}_]+|[^\s\p{L}\p{N}_]/gu;

/** FNV-1a over the UTF-16 code units of `text`: stable, fast, well spread. */
function fnv1a(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h;
}

/** The id of one token's text. */
export function tokenId(text: string): number {
  return FIRST_ORDINARY_ID + (fnv1a(text) % (VOCAB_SIZE - FIRST_ORDINARY_ID));
}

/** The prompt's token ids, BOS first. */
export function tokenize(prompt: string): Uint32Array {
  const pieces = prompt.match(TOKEN) ?? [];
  const ids = new Uint32Array(pieces.length + 1);
  ids[0] = BOS_ID;
  for (let i = 0; i < pieces.length; i++) ids[i + 1] = tokenId(pieces[i]!);
  return ids;
}

export interface ChatMessage {
  role: string;
  content: string;
}

/** The prompt a chat request stands for: each message under its role's marker, then the assistant's. */
export function chatPrompt(messages: readonly ChatMessage[]): string {
  return messages.map((m) => `<|${m.role}|>\n${m.content}\n`).join("") + "<|assistant|>\n";
}
