//! Long texts cut into pieces a tokenizer can take one at a time, so that a
//! text of any length is tokenized in bounded memory (a tokenizer's working
//! state is some hundred bytes per input byte: offsets, alignments, token
//! strings).
//!
//! A cut is made before a space (U+0020) that follows a character other than
//! whitespace, so a run of whitespace is never split and the piece after the
//! cut begins with its space. That is a word boundary for every pre-tokenizer
//! of the shipped families: BERT's whitespace and punctuation split, byte-level
//! BPE's regex (a space only ever leads the word after it), SentencePiece's
//! Metaspace (a space becomes `▁`, which begins the next word). So the ids of
//! the pieces, concatenated, equal the ids of the whole text. Only a piece with
//! no such space in it (one "word" longer than the piece) is cut at a
//! character boundary, inside that word: its ids there may differ from the
//! whole text's.

/// The size of a piece: far longer than any line of prose, small enough that
/// tokenizing it takes a few MB.
pub const PIECE_BYTES: usize = 64 << 10;

/// Where the first piece of at most `max` bytes of `text` ends: `text.len()`
/// when it fits, else the last cut before a space within `max` bytes, else the
/// last character boundary (at least one character).
pub fn cut(text: &str, max: usize) -> usize {
    if text.len() <= max {
        return text.len();
    }
    let bytes = text.as_bytes();
    // A space byte is a whole character, so `i` is a character boundary.
    for i in (1..=max).rev() {
        if bytes[i] == b' ' && text[..i].chars().next_back().is_some_and(|c| !c.is_whitespace()) {
            return i;
        }
    }
    let mut i = max;
    while i > 0 && !text.is_char_boundary(i) {
        i -= 1;
    }
    if i == 0 {
        // The first character alone is longer than `max`.
        i = text.chars().next().map_or(0, char::len_utf8);
    }
    i
}

/// `text` as consecutive pieces of at most `max` bytes each (but a first
/// character longer than `max`), cut as [`cut`] says; nothing for "".
pub fn pieces(text: &str, max: usize) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let (piece, after) = rest.split_at(cut(rest, max));
        rest = after;
        Some(piece)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_go_before_a_space_that_ends_a_word() {
        assert_eq!(pieces("", 4).count(), 0);
        assert_eq!(pieces("short", 64).collect::<Vec<_>>(), ["short"]);
        assert_eq!(pieces("aa bb cc dd", 6).collect::<Vec<_>>(), ["aa bb", " cc dd"]);
        // A whitespace run stays whole, in the piece it begins.
        assert_eq!(pieces("aa   bb cc", 6).collect::<Vec<_>>(), ["aa", "   bb", " cc"]);
        assert_eq!(pieces("a\t b c", 4).collect::<Vec<_>>(), ["a\t b", " c"]);
        // No space to cut before: a character boundary, never inside a character.
        assert_eq!(pieces("ééééé", 3).collect::<Vec<_>>(), ["é", "é", "é", "é", "é"]);
        assert_eq!(pieces("€", 1).collect::<Vec<_>>(), ["€"]);
        for (text, max) in [("the cat  sat\ton the mat ", 5), ("x y z", 1), ("日本 語の テキスト です", 7)] {
            let all: Vec<&str> = pieces(text, max).collect();
            assert_eq!(all.concat(), text);
            assert!(all.iter().all(|p| p.len() <= max.max(p.chars().next().unwrap().len_utf8())), "{all:?}");
        }
    }
}
