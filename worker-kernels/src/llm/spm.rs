//! SentencePiece-style vocabularies (`tokenizer.ggml.model = llama`: Gemma, Llama 2, Mistral), split
//! exactly as llama.cpp's SPM tokenizer splits them, from the vocabulary and scores in the GGUF.
//!
//! Text is cut at the whole-token texts first (user-defined tokens always, control tokens such as
//! `<start_of_turn>` when asked), spaces become `▁`, and each piece starts as its UTF-8 characters;
//! then, again and again, the adjacent pair whose joined text is a vocabulary entry with the highest
//! score (the leftmost among equals) is merged. What is left that is not a token is spelled by the
//! byte tokens `<0xXX>`, through the merges that made it (llama.cpp's `resegment`).

use std::collections::{BinaryHeap, HashMap};

/// GGUF token types.
const TOKEN_TYPE_UNKNOWN: i32 = 2;
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;
const TOKEN_TYPE_BYTE: i32 = 6;

/// The whitespace SentencePiece writes for a space.
const SPACE: &str = "\u{2581}";

/// A SentencePiece vocabulary.
#[derive(Clone, Debug)]
pub(crate) struct Spm {
    tokens: Vec<String>,
    scores: Vec<f32>,
    types: Vec<i32>,
    ids: HashMap<String, u32>,
    /// The token of each byte (`<0xXX>`), where the vocabulary has it.
    bytes: [Option<u32>; 256],
    /// Whole-token texts, longest first: `(text, id, control)`.
    specials: Vec<(String, u32, bool)>,
    /// A space before the text (`tokenizer.ggml.add_space_prefix`).
    space_prefix: bool,
}

/// A candidate merge of symbols `left` and `right`, ordered as llama.cpp's queue orders them:
/// higher score first, then the leftmost.
#[derive(Debug, PartialEq)]
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    size: usize,
}

impl Eq for Bigram {}

impl Ord for Bigram {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.score
            .total_cmp(&other.score)
            .then(other.left.cmp(&self.left))
    }
}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// A span of the text being merged, linked to its neighbours.
#[derive(Clone, Copy, Debug)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

impl Spm {
    /// A vocabulary of `tokens` with their `scores` and GGUF `types`.
    pub(crate) fn new(
        tokens: Vec<String>,
        scores: Vec<f32>,
        types: Vec<i32>,
        space_prefix: bool,
    ) -> Result<Self, String> {
        if scores.len() != tokens.len() || types.len() != tokens.len() {
            return Err(format!(
                "{} tokens with {} scores and {} types",
                tokens.len(),
                scores.len(),
                types.len()
            ));
        }
        let mut ids = HashMap::with_capacity(tokens.len());
        let mut bytes = [None; 256];
        let mut specials = Vec::new();
        for (i, (text, &kind)) in tokens.iter().zip(&types).enumerate() {
            let id = i as u32;
            ids.entry(text.clone()).or_insert(id);
            match kind {
                TOKEN_TYPE_BYTE => {
                    if let Some(b) = byte_of(text) {
                        bytes[usize::from(b)] = Some(id);
                    }
                }
                TOKEN_TYPE_CONTROL | TOKEN_TYPE_UNKNOWN if !text.is_empty() => {
                    specials.push((text.clone(), id, true));
                }
                TOKEN_TYPE_USER_DEFINED if !text.is_empty() => {
                    specials.push((text.clone(), id, false));
                }
                _ => {}
            }
        }
        // Longest first, as llama.cpp matches them.
        specials.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        Ok(Self {
            tokens,
            scores,
            types,
            ids,
            bytes,
            specials,
            space_prefix,
        })
    }

    /// The id of a token's text.
    pub(crate) fn token_id(&self, text: &str) -> Option<u32> {
        self.ids.get(text).copied()
    }

    /// Token ids of `text` (no BOS). With `parse_special`, control-token text is that token.
    pub(crate) fn encode(&self, text: &str, parse_special: bool) -> Vec<u32> {
        // Cut at whole-token texts: raw pieces and tokens, in order.
        enum Part<'a> {
            Raw(&'a str),
            Token(u32),
        }
        let mut parts = vec![Part::Raw(text)];
        for (special, id, control) in &self.specials {
            if *control && !parse_special {
                continue;
            }
            let mut next = Vec::with_capacity(parts.len());
            for part in parts {
                match part {
                    Part::Raw(raw) => {
                        let mut rest = raw;
                        while let Some(at) = rest.find(special.as_str()) {
                            if at > 0 {
                                next.push(Part::Raw(&rest[..at]));
                            }
                            next.push(Part::Token(*id));
                            rest = &rest[at + special.len()..];
                        }
                        if !rest.is_empty() {
                            next.push(Part::Raw(rest));
                        }
                    }
                    token => next.push(token),
                }
            }
            parts = next;
        }
        let mut out = Vec::new();
        let mut after_special = true;
        for part in parts {
            match part {
                Part::Token(id) => {
                    out.push(id);
                    after_special = true;
                }
                Part::Raw(raw) => {
                    let mut piece = String::new();
                    if self.space_prefix && after_special {
                        piece.push(' ');
                    }
                    piece.push_str(raw);
                    self.merge(&piece.replace(' ', SPACE), &mut out);
                    after_special = false;
                }
            }
        }
        out
    }

    /// llama.cpp's `llm_tokenizer_spm_session::tokenize` of one piece.
    fn merge<'t>(&self, text: &'t str, out: &mut Vec<u32>) {
        let mut symbols: Vec<Symbol> = Vec::new();
        for (start, c) in text.char_indices() {
            let i = symbols.len();
            symbols.push(Symbol {
                start,
                len: c.len_utf8(),
                prev: i.checked_sub(1),
                next: (start + c.len_utf8() < text.len()).then_some(i + 1),
            });
        }
        if symbols.is_empty() {
            return;
        }
        let mut queue = BinaryHeap::new();
        let mut rev_merge: HashMap<&'t str, (usize, usize)> = HashMap::new();
        let try_add = |left: Option<usize>,
                       right: Option<usize>,
                       symbols: &[Symbol],
                       queue: &mut BinaryHeap<Bigram>,
                       rev_merge: &mut HashMap<&'t str, (usize, usize)>| {
            let (Some(left), Some(right)) = (left, right) else {
                return;
            };
            let (a, b) = (symbols[left], symbols[right]);
            let joined = &text[a.start..a.start + a.len + b.len];
            let Some(&id) = self.ids.get(joined) else {
                return;
            };
            queue.push(Bigram {
                score: self.scores[id as usize],
                left,
                right,
                size: joined.len(),
            });
            rev_merge.insert(joined, (left, right));
        };
        for i in 1..symbols.len() {
            try_add(Some(i - 1), Some(i), &symbols, &mut queue, &mut rev_merge);
        }
        while let Some(bigram) = queue.pop() {
            let (left, right) = (symbols[bigram.left], symbols[bigram.right]);
            // One side already merged into something else: stale.
            if left.len == 0 || right.len == 0 || left.len + right.len != bigram.size {
                continue;
            }
            symbols[bigram.left].len += right.len;
            symbols[bigram.right].len = 0;
            symbols[bigram.left].next = right.next;
            if let Some(next) = right.next {
                symbols[next].prev = Some(bigram.left);
            }
            let prev = symbols[bigram.left].prev;
            let next = symbols[bigram.left].next;
            try_add(
                prev,
                Some(bigram.left),
                &symbols,
                &mut queue,
                &mut rev_merge,
            );
            try_add(
                Some(bigram.left),
                next,
                &symbols,
                &mut queue,
                &mut rev_merge,
            );
        }
        let mut at = Some(0);
        while let Some(i) = at {
            self.resegment(text, &symbols, &rev_merge, symbols[i], out);
            at = symbols[i].next;
        }
    }

    /// A merged symbol as tokens: itself if it is one, else the two it was made of, down to bytes.
    fn resegment(
        &self,
        text: &str,
        symbols: &[Symbol],
        rev_merge: &HashMap<&str, (usize, usize)>,
        symbol: Symbol,
        out: &mut Vec<u32>,
    ) {
        let piece = &text[symbol.start..symbol.start + symbol.len];
        if let Some(&id) = self.ids.get(piece) {
            out.push(id);
            return;
        }
        match rev_merge.get(piece) {
            Some(&(left, right)) => {
                self.resegment(text, symbols, rev_merge, symbols[left], out);
                self.resegment(text, symbols, rev_merge, symbols[right], out);
            }
            None => out.extend(piece.bytes().filter_map(|b| self.bytes[usize::from(b)])),
        }
    }

    /// The text of `ids`: `▁` as spaces, byte tokens as their bytes, control tokens as their text.
    pub(crate) fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            let Some(text) = self.tokens.get(id as usize) else {
                continue;
            };
            match self.types[id as usize] {
                TOKEN_TYPE_BYTE => bytes.extend(byte_of(text)),
                _ => bytes.extend_from_slice(text.replace(SPACE, " ").as_bytes()),
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// The byte a byte token (`<0xXX>`) stands for.
fn byte_of(text: &str) -> Option<u8> {
    text.strip_prefix("<0x")
        .and_then(|t| t.strip_suffix('>'))
        .and_then(|h| u8::from_str_radix(h, 16).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A toy vocabulary: characters, a few merges with scores, byte tokens and a control token.
    fn toy() -> Spm {
        let mut tokens: Vec<(String, f32, i32)> = vec![
            ("<unk>".into(), 0.0, TOKEN_TYPE_UNKNOWN),
            ("<s>".into(), 0.0, TOKEN_TYPE_CONTROL),
            ("\n\n".into(), 0.0, TOKEN_TYPE_USER_DEFINED),
        ];
        for (t, s) in [
            ("▁", -1.0),
            ("a", -2.0),
            ("b", -3.0),
            ("c", -4.0),
            ("ab", -5.0),
            ("▁a", -6.0),
            ("▁ab", -7.0),
            ("bc", -1.5),
        ] {
            tokens.push((t.into(), s, 1));
        }
        for b in 0..=255u8 {
            tokens.push((format!("<0x{b:02X}>"), 0.0, TOKEN_TYPE_BYTE));
        }
        let (t, rest): (Vec<String>, Vec<(f32, i32)>) =
            tokens.into_iter().map(|(t, s, k)| (t, (s, k))).unzip();
        let (s, k) = rest.into_iter().unzip();
        Spm::new(t, s, k, false).expect("consistent")
    }

    #[test]
    fn merges_by_score_and_spells_the_rest_in_bytes() {
        let spm = toy();
        let id = |t: &str| spm.token_id(t).expect("in the toy vocabulary");
        // "abc": "bc" (−1.5) beats "ab" (−5): a + bc.
        assert_eq!(spm.encode("abc", false), vec![id("a"), id("bc")]);
        // " ab": "▁a" (−6) and "ab" (−5) compete; "ab" first, then "▁" + "ab" = "▁ab".
        assert_eq!(spm.encode(" ab", false), vec![id("▁ab")]);
        // "é" is no token: its two UTF-8 bytes.
        assert_eq!(spm.encode("é", false), vec![id("<0xC3>"), id("<0xA9>")]);
        // The control token only when asked; the user-defined one always.
        assert_eq!(spm.encode("<s>a", true), vec![id("<s>"), id("a")]);
        assert_eq!(
            spm.encode("a\n\nb", false),
            vec![id("a"), id("\n\n"), id("b")]
        );
        assert_eq!(spm.decode(&spm.encode(" ab é\n\n", false)), " ab é\n\n");
    }
}
