//! The text analysis shared by indexing and queries: word runs of letters and
//! digits, CJK text (which has no spaces) as overlapping bigrams (the idea of
//! Lucene's `CJKBigramFilter`), then tokens over [`MAX_TOKEN_BYTES`] dropped,
//! lower-cased and ASCII-folded (`Café` → `cafe`).
//!
//! A CJK run of one character is kept as a unigram, so a lone `東` is found
//! in a text where it stands alone, but not inside `東京` (indexed as the
//! bigram `東京` only): the price of bigrams, as in Lucene.

use tantivy::tokenizer::{
    AsciiFoldingFilter, LowerCaser, RemoveLongFilter, TextAnalyzer, Token, TokenStream, Tokenizer,
};

/// The name the analyzer is registered under in the index's tokenizer manager.
pub const ANALYZER: &str = "natter";

/// Longest token kept, in bytes (after segmentation, before folding): longer
/// "words" (a pasted hash, a 100,000-character run of one letter) are not
/// searchable words, and would bloat the term dictionary.
pub const MAX_TOKEN_BYTES: usize = 100;

/// The analyzer: [`ChatTokenizer`], then long tokens dropped, lower-casing and
/// ASCII folding.
pub fn analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(ChatTokenizer::default())
        .filter(RemoveLongFilter::limit(MAX_TOKEN_BYTES + 1))
        .filter(LowerCaser)
        .filter(AsciiFoldingFilter)
        .build()
}

/// True for the scripts written without spaces between words, which are
/// indexed as bigrams: Han ideographs, Hiragana, Katakana (full and half
/// width, the prolonged sound mark included) and Hangul.
pub fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30FF      // Hiragana, Katakana
        | 0x31F0..=0x31FF    // Katakana phonetic extensions
        | 0x3400..=0x4DBF    // CJK extension A
        | 0x4E00..=0x9FFF    // CJK unified ideographs
        | 0xF900..=0xFAFF    // CJK compatibility ideographs
        | 0xFF66..=0xFF9F    // half-width Katakana
        | 0x1100..=0x11FF    // Hangul Jamo
        | 0x3130..=0x318F    // Hangul compatibility Jamo
        | 0xAC00..=0xD7AF    // Hangul syllables
        | 0x20000..=0x2FA1F  // CJK extensions B.. and compatibility supplement
    )
}

/// Splits text into word runs (letters and digits outside the CJK scripts)
/// and CJK bigrams; everything else separates tokens. Positions count the
/// tokens emitted, so a phrase of bigrams matches consecutive bigrams.
#[derive(Clone, Default)]
pub(crate) struct ChatTokenizer {
    tokens: Vec<Token>,
}

/// The stream of one text's tokens (computed up front: a message is at most
/// 100,000 characters).
pub(crate) struct ChatTokenStream<'a> {
    tokens: &'a mut Vec<Token>,
    next: usize,
    current: Token,
}

impl Tokenizer for ChatTokenizer {
    type TokenStream<'a> = ChatTokenStream<'a>;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> ChatTokenStream<'a> {
        self.tokens.clear();
        segment(text, &mut self.tokens);
        ChatTokenStream {
            tokens: &mut self.tokens,
            next: 0,
            current: Token::default(),
        }
    }
}

impl TokenStream for ChatTokenStream<'_> {
    fn advance(&mut self) -> bool {
        match self.tokens.get_mut(self.next) {
            Some(token) => {
                self.current = std::mem::take(token);
                self.next += 1;
                true
            }
            None => false,
        }
    }

    fn token(&self) -> &Token {
        &self.current
    }

    fn token_mut(&mut self) -> &mut Token {
        &mut self.current
    }
}

/// What a character is to the segmenter.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Word,
    Cjk,
    Other,
}

fn class(c: char) -> Class {
    if is_cjk(c) {
        Class::Cjk
    } else if c.is_alphanumeric() {
        Class::Word
    } else {
        Class::Other
    }
}

/// Appends the tokens of `text` to `out`.
fn segment(text: &str, out: &mut Vec<Token>) {
    let mut chars = text.char_indices().peekable();
    let mut position = 0;
    let mut push = |out: &mut Vec<Token>, from: usize, to: usize| {
        out.push(Token {
            offset_from: from,
            offset_to: to,
            position,
            text: text.get(from..to).unwrap_or_default().to_owned(),
            position_length: 1,
        });
        position += 1;
    };
    while let Some((start, c)) = chars.next() {
        match class(c) {
            Class::Other => {}
            Class::Word => {
                let mut end = start + c.len_utf8();
                while let Some(&(i, d)) = chars.peek() {
                    if class(d) != Class::Word {
                        break;
                    }
                    end = i + d.len_utf8();
                    chars.next();
                }
                push(out, start, end);
            }
            Class::Cjk => {
                // Bigrams over the run: (c0 c1), (c1 c2), …; a run of one is a unigram.
                let mut prev = (start, c.len_utf8());
                let mut emitted = false;
                while let Some(&(i, d)) = chars.peek() {
                    if class(d) != Class::Cjk {
                        break;
                    }
                    push(out, prev.0, i + d.len_utf8());
                    emitted = true;
                    prev = (i, d.len_utf8());
                    chars.next();
                }
                if !emitted {
                    push(out, prev.0, prev.0 + prev.1);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(text: &str) -> Vec<String> {
        let mut analyzer = analyzer();
        let mut stream = analyzer.token_stream(text);
        let mut out = Vec::new();
        while stream.advance() {
            out.push(stream.token().text.clone());
        }
        out
    }

    #[test]
    fn words_are_lower_cased_and_folded() {
        assert_eq!(
            tokens("Café, NAÏVE über-cool 42"),
            ["cafe", "naive", "uber", "cool", "42"]
        );
    }

    #[test]
    fn cjk_runs_become_bigrams_and_lone_characters_unigrams() {
        assert_eq!(tokens("東京タワー"), ["東京", "京タ", "タワ", "ワー"]);
        assert_eq!(tokens("東 京"), ["東", "京"]);
        assert_eq!(tokens("in東京now"), ["in", "東京", "now"]);
        assert_eq!(tokens("서울역"), ["서울", "울역"]);
    }

    #[test]
    fn positions_are_consecutive_and_offsets_point_into_the_text() {
        let text = "a 東京タワー b";
        let mut analyzer = analyzer();
        let mut stream = analyzer.token_stream(text);
        let mut expected_position = 0;
        while stream.advance() {
            let t = stream.token();
            assert_eq!(t.position, expected_position);
            expected_position += 1;
            assert!(text.get(t.offset_from..t.offset_to).is_some());
        }
        assert_eq!(expected_position, 6);
    }

    #[test]
    fn tokens_over_the_limit_are_dropped() {
        let long = "x".repeat(MAX_TOKEN_BYTES + 1);
        let fits = "y".repeat(MAX_TOKEN_BYTES);
        assert_eq!(tokens(&format!("{long} {fits} z")), [fits.as_str(), "z"]);
    }
}
