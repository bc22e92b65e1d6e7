// Writes extra-reference-cases.json: ids from the Rust tiktoken core (npm tiktoken 1.0.22, the engine Python tiktoken
// wraps) for text the shipped reference cases do not stress: contractions next to ſ, K (Kelvin), marks and other
// scripts, random strings over every Unicode plane mixed with the characters where Kimi's regex is subtle, and the
// code points whose class depends on the Unicode version.
// Usage, from a folder where `npm install tiktoken@1.0.22` was run:
//   node <repo>/KimiLinear.Tests/Fixtures/tokenizer/make-extra-reference-cases.mjs
import { createRequire } from "module";
import fs from "fs";
import path from "path";
import { fileURLToPath } from "url";

const { Tiktoken } = createRequire(path.join(process.cwd(), "noop.js"))("tiktoken/lite");
const dir = path.dirname(fileURLToPath(import.meta.url));
const ref = JSON.parse(fs.readFileSync(path.join(dir, "reference-cases.json"), "utf8"));
const specials = JSON.parse(fs.readFileSync(path.join(dir, "kimi-special-tokens.json"), "utf8"));
const enc = new Tiktoken(fs.readFileSync(path.join(dir, "tiktoken.model"), "utf8"), specials, ref.pat_str);

const contractions = [];
for (const w of ["it", "IT", "x", "don", "We", "ſ", "s", "Ab", "é", "汉", "1", " ", "", "ǅ", "ʰ"])
  for (const c of ["'ſ", "'S", "'s", "'ſſ", "'T", "'RE", "'rE", "'Ve", "'M", "'LL", "'lL", "'D", "'K", "'\u212A", "'k", "'ß", "'", "''s", "'\u0301s"])
    for (const f of ["", "a", "s", "ſ", "ss", " x", "1", "汉", "'s", "\u0301", "A", "ab", "tion"])
      contractions.push(w + c + f);

// A fixed linear congruential generator, so the file is reproducible.
let seed = 12345;
const next = n => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed % n; };
const alphabet = ["a", "s", "t", "'", "ſ", "S", "A", " ", "  ", "\n", "\r\n", "\t", "1", "123", "汉", "字", "⺀", "〇", "々", "か",
  "ア", "ー", "ก", "ع", "\u0301", "\u0903", "é", "ǅ", "ʰ", "ª", "🙂", "👩\u200d💻", "𝔘", "𝟏", "𠀀", "\u00a0", "\u3000", "\u2028",
  "\u0085", "\u000b", "\u001c", "!", ".", "<|im_end|>", "[EOS]", "_", "-", "’", "½", "²", "Ⅻ", "٣", "\ufffd", "\u200b", "\ufeff"];
const randomCodePoint = () => {
  const r = next(10);
  let cp = r < 5 ? next(0x3000) : r < 8 ? next(0x10000) : 0x10000 + next(0x100000);
  if (cp >= 0xd800 && cp <= 0xdfff) cp = 0x41;   // no lone surrogates: JavaScript would pass them on as-is
  return String.fromCodePoint(cp);
};
const random = [];
for (let i = 0; i < 5000; i++) {
  let text = "";
  for (let j = 1 + next(20); j > 0; j--) text += next(2) ? alphabet[next(alphabet.length)] : randomCodePoint();
  random.push(text);
}

// Code points that are Han in Unicode 17 but unassigned in the engine's Unicode 16 tables, between letters: split
// differently under the two versions, and BPE merges across the boundary make the ids differ.
const unicode17Han = [];
for (const [first, last] of [[0x16fe0, 0x16fff], [0x2b720, 0x2b75f], [0x2cea0, 0x2cebf], [0x323a0, 0x3347f]])
  for (let base = first; base <= last; base += 32)
    for (const [before, after] of [["a", ""], ["A", "a"]]) {
      let text = "";
      for (let cp = base; cp < base + 32 && cp <= last; cp++) text += before + String.fromCodePoint(cp) + after;
      unicode17Han.push(text);
    }

const cases = texts => texts.map(text => ({ text, ids: Array.from(enc.encode(text, "all")) }));
fs.writeFileSync(path.join(dir, "extra-reference-cases.json"), JSON.stringify({
  about: "Ids from npm tiktoken 1.0.22 (the Rust tiktoken core) with reference-cases.json's pat_str and the 258 special " +
    "tokens (allowed_special='all'); made by make-extra-reference-cases.mjs.",
  contractions: cases(contractions),
  random: cases(random),
  unicode17Han: cases(unicode17Han),
}));
