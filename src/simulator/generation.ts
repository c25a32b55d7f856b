// Token generation: what the simulated model "says", as a pure function of its KV cache.
//
// The digest of every layer's bytes (SHA-256, in layer order) seeds a xorshift128
// generator that picks words from a fixed vocabulary of plain English. Because the output
// depends on the KV and on nothing else, a decode instance that received the right KV
// writes exactly what a non-disaggregated (`both`) instance writes from the prompt alone,
// and a prefill instance's single token is the first of those.
import { createHash, type Hash } from "node:crypto";

/** The words the simulated model knows. Each generated token is one of them. */
export const WORDS: readonly string[] = [
  "the", "a", "of", "and", "to", "in", "is", "that", "it", "for", "on", "with", "as", "was",
  "at", "by", "from", "this", "which", "or", "be", "are", "but", "not", "can", "will",
  "model", "cache", "layer", "token", "prompt", "answer", "data", "memory", "node", "network",
  "river", "ferry", "harbour", "boat", "water", "crossing", "morning", "evening", "light",
  "quiet", "quick", "steady", "small", "large", "simple", "careful", "bright", "early", "late",
  "carries", "moves", "holds", "returns", "waits", "arrives", "leaves", "sends", "reads",
  "writes", "keeps", "finds", "makes", "takes", "gives", "every", "each", "some", "many",
  "few", "one", "two", "three", "here", "there", "then", "now", "again", "still", "always",
  "never", "together", "across", "between", "under", "over",
];

/** Accumulates the digest of a KV cache, one layer at a time in layer order. */
export class KvDigest {
  readonly #hash: Hash = createHash("sha256").update("kvferry-simulator generation\0");

  update(layer: Uint8Array): this {
    this.#hash.update(layer);
    return this;
  }

  digest(): Buffer {
    return this.#hash.digest();
  }
}

/**
 * The texts of the first `count` tokens generated from a KV whose digest is `kvDigest`:
 * one word each, with a leading space, sentences capitalized and ended by a period.
 * Deterministic; the first `n` of a longer generation equal a generation of `n`.
 */
export function generate(kvDigest: Uint8Array, count: number): string[] {
  const seed = Buffer.from(kvDigest.buffer, kvDigest.byteOffset, kvDigest.byteLength);
  let x = seed.readUInt32LE(0) | 1;
  let y = seed.readUInt32LE(4);
  let z = seed.readUInt32LE(8);
  let w = seed.readUInt32LE(12);
  const out: string[] = [];
  let sentenceStart = true;
  for (let i = 0; i < count; i++) {
    // xorshift128 (Marsaglia): period 2^128 - 1, never stuck since x is odd at the start.
    const t = x ^ (x << 11);
    x = y;
    y = z;
    z = w;
    w = (w ^ (w >>> 19) ^ (t ^ (t >>> 8))) >>> 0;
    // Low bits pick the word; high bits end a sentence (1 in 8) or a clause (1 in 16).
    let word = WORDS[w % WORDS.length]!;
    if (sentenceStart) word = word[0]!.toUpperCase() + word.slice(1);
    const ending = w >>> 28;
    const punctuation = ending < 2 ? "." : ending === 2 ? "," : "";
    out.push(` ${word}${punctuation}`);
    sentenceStart = punctuation === ".";
  }
  return out;
}
