//! Word boundaries for any tokenizer, told from the marks its vocabulary uses:
//! WordPiece's `##` on pieces that continue a word, SentencePiece's `▁` on
//! pieces that begin one, and byte-level BPE's `Ġ` for a space plus the
//! character classes its pre-tokenizer splits on.
//!
//! The whole-word and span maskers group tokens by these boundaries, so one
//! strategy masks whole words under every tokenizer kind. The grouping matches
//! `transformers`' `word_ids()` on the parity fixtures (`tests/it/families.rs`).

/// How a tokenizer marks where its words begin; read from `tokenizer.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WordMarks {
    /// WordPiece (BERT, DistilBERT): a piece that continues a word starts with
    /// this prefix (`##`). Punctuation is a word of its own.
    ContinuationPrefix(String),
    /// SentencePiece / Metaspace (XLM-R): a piece that begins a word starts with
    /// this marker (`▁`); a word runs to the next whitespace.
    WordMarker(String),
    /// Byte-level BPE (RoBERTa, GPT-2): `Ġ` stands for a space. A piece begins a
    /// word when it begins with a space, or when its first character is of
    /// another class (letter, digit, space, other) than the previous piece's
    /// last, which is where the byte-level pre-tokenizer splits (an English
    /// contraction such as `'s` stays one word).
    ByteLevel,
    /// No marks known: every token is a word of its own.
    EveryToken,
}

/// Character classes of the byte-level pre-tokenizer's pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Letter,
    Digit,
    Space,
    Other,
}

/// What a word boundary needs to know about one vocabulary entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PieceEdges {
    /// Carries its kind's mark: `##` (continues), `▁` or a leading space (begins).
    marked: bool,
    first: Class,
    last: Class,
    /// Every character is whitespace.
    all_space: bool,
    /// The last character is a plain space (not a newline or tab).
    ends_in_plain_space: bool,
    /// The piece is one plain space, which begins the word after it.
    lone_space: bool,
    /// The piece is a lone apostrophe, or the rest of an English contraction
    /// (`s`, `t`, `re`, `ve`, `m`, `ll`, `d`): the pre-tokenizer keeps `'s` whole.
    apostrophe: bool,
    contraction_tail: bool,
}

impl WordMarks {
    /// The edges of every vocabulary entry, `tokens[id]` → `edges[id]`.
    pub fn edges(&self, tokens: &[String]) -> Vec<PieceEdges> {
        tokens.iter().map(|t| self.piece(t)).collect()
    }

    fn piece(&self, token: &str) -> PieceEdges {
        let text = match self {
            WordMarks::ByteLevel => byte_level_text(token),
            _ => token.to_string(),
        };
        let marked = match self {
            WordMarks::ContinuationPrefix(p) | WordMarks::WordMarker(p) => token.starts_with(p.as_str()),
            WordMarks::ByteLevel => text.starts_with(char::is_whitespace),
            WordMarks::EveryToken => false,
        };
        let class_of = |c: Option<char>| c.map_or(Class::Other, class);
        PieceEdges {
            marked,
            first: class_of(text.chars().next()),
            last: class_of(text.chars().last()),
            all_space: !text.is_empty() && text.chars().all(char::is_whitespace),
            ends_in_plain_space: text.ends_with(' '),
            lone_space: text == " ",
            apostrophe: text == "'",
            contraction_tail: ["s", "t", "re", "ve", "m", "ll", "d"].contains(&text.as_str()),
        }
    }

    /// `token` without its word mark (`##`, `▁`): the text a piece adds to its word.
    pub fn bare<'a>(&self, token: &'a str) -> &'a str {
        match self {
            WordMarks::ContinuationPrefix(p) | WordMarks::WordMarker(p) => token.strip_prefix(p.as_str()).unwrap_or(token),
            WordMarks::ByteLevel => token.strip_prefix('\u{120}').unwrap_or(token),
            WordMarks::EveryToken => token,
        }
    }

    /// Whether `cur` begins a new word when it follows `prev` (both ordinary tokens).
    pub fn begins_word(&self, prev: &PieceEdges, cur: &PieceEdges) -> bool {
        match self {
            WordMarks::ContinuationPrefix(_) => !cur.marked,
            WordMarks::WordMarker(_) => cur.marked,
            WordMarks::EveryToken => true,
            WordMarks::ByteLevel => {
                if cur.first == Class::Space {
                    // A run of whitespace is one word; a space before a word begins it.
                    !(cur.all_space && prev.all_space) || cur.lone_space
                } else if prev.last == Class::Space {
                    // One plain space joins the word after it (` ?\p{L}+`); a newline does not.
                    !(prev.all_space && prev.ends_in_plain_space)
                } else {
                    prev.last != cur.first && !(prev.apostrophe && cur.contraction_tail)
                }
            }
        }
    }
}

fn class(c: char) -> Class {
    if c.is_whitespace() {
        Class::Space
    } else if c.is_numeric() {
        Class::Digit
    } else if c.is_alphabetic() || c == char::REPLACEMENT_CHARACTER {
        // A piece cut inside a multi-byte character counts as a letter.
        Class::Letter
    } else {
        Class::Other
    }
}

/// The text a byte-level token stands for: GPT-2 maps the bytes that are not
/// printable (0..=32, 127..=160, 173) to the characters from U+0100 on, in order.
fn byte_level_text(token: &str) -> String {
    let bytes: Vec<u8> = token
        .chars()
        .map(|c| {
            let n = c as u32;
            match n {
                0..=255 => n as u8,
                256..=288 => (n - 256) as u8,
                289..=322 => (n - 289 + 127) as u8,
                323 => 173,
                _ => b'a',
            }
        })
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn groups(marks: WordMarks, tokens: &[&str]) -> Vec<Vec<&'static str>> {
        let owned: Vec<String> = tokens.iter().map(|t| t.to_string()).collect();
        let edges = marks.edges(&owned);
        let mut out: Vec<Vec<String>> = Vec::new();
        for (i, t) in owned.iter().enumerate() {
            if i == 0 || marks.begins_word(&edges[i - 1], &edges[i]) {
                out.push(vec![t.clone()]);
            } else {
                out.last_mut().unwrap().push(t.clone());
            }
        }
        out.into_iter().map(|g| g.into_iter().map(|s| &*s.leak()).collect()).collect()
    }

    #[test]
    fn wordpiece_continues_on_the_prefix() {
        let g = groups(WordMarks::ContinuationPrefix("##".into()), &["token", "##izer", "'", "s", "run"]);
        assert_eq!(g, vec![vec!["token", "##izer"], vec!["'"], vec!["s"], vec!["run"]]);
    }

    #[test]
    fn sentencepiece_begins_on_the_marker() {
        let g = groups(WordMarks::WordMarker("▁".into()), &["▁token", "izer", ",", "▁run", "▁", "x"]);
        assert_eq!(g, vec![vec!["▁token", "izer", ","], vec!["▁run"], vec!["▁", "x"]]);
    }

    #[test]
    fn byte_level_splits_on_spaces_and_classes() {
        // "token" "izer" "," " run" "s" "\n" "2024" "!" — and a lone space that joins its word.
        let g = groups(WordMarks::ByteLevel, &["token", "izer", "'", "s", ",", "Ġrun", "s", "Ċ", "20", "24", "!", "Ġ", "Ġ", "x", "Ċ", "ĠĠ"]);
        assert_eq!(
            g,
            vec![
                vec!["token", "izer"],
                vec!["'", "s"],
                vec![","],
                vec!["Ġrun", "s"],
                vec!["Ċ"],
                vec!["20", "24"],
                vec!["!"],
                vec!["Ġ"],
                vec!["Ġ", "x"],
                vec!["Ċ", "ĠĠ"]
            ]
        );
    }

    #[test]
    fn byte_level_text_undoes_the_byte_map() {
        assert_eq!(byte_level_text("Ġhello"), " hello");
        assert_eq!(byte_level_text("Ċ"), "\n");
        assert_eq!(byte_level_text("ĉ"), "\t");
        assert_eq!(byte_level_text("Ã©"), "é");
    }
}
