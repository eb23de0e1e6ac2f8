//! Orphan subword pieces: a text post-processing for NAR output (ours; not in the paper).
//!
//! The NAR decoder fills every slot position at once, so a word-continuation piece of the
//! byte-level BPE (a token without the leading-space marker `Ġ`) can land next to a piece of
//! another word and glue onto it when the ids are decoded: `what` + `ther` reads `whatther`.
//! On the shipped SQuAD-QG model this happens to about one output in five, nearly always right
//! after the question word. The repair: a word built from several pieces is kept when it is
//! a word of the source text (a copied word, as most multi-piece words of a question are);
//! otherwise only its first piece is kept and the orphan continuation pieces are dropped.
//!
//! Works on one output's ids `[n]` (before `</s>`) and the source's words; the ids and exit
//! layers of a [`super::Generation`] stay as generated, only its text changes.

use std::collections::HashSet;

use crate::error::Result;
use crate::tokenizer::BartTokenizer;

/// Which ids begin a word, and the text of a run of ids: what the repair needs of a
/// tokenizer.
pub(crate) struct WordPieces<'a> {
    tokenizer: &'a BartTokenizer,
    /// `starts[id]`: the id begins a word (a `Ġ` token or a special token).
    starts: Vec<bool>,
}

impl<'a> WordPieces<'a> {
    pub(crate) fn new(tokenizer: &'a BartTokenizer) -> Self {
        Self {
            starts: tokenizer.word_starts(),
            tokenizer,
        }
    }

    fn starts_word(&self, id: u32) -> bool {
        // Ids outside the table are left whole (decoding reports them).
        self.starts.get(id as usize).copied().unwrap_or(true)
    }

    /// The whitespace-separated words of the decoded `source` ids.
    pub(crate) fn source_words(&self, source: &[u32]) -> Result<HashSet<String>> {
        Ok(self
            .tokenizer
            .decode(source)?
            .split_whitespace()
            .map(str::to_string)
            .collect())
    }

    /// `ids` with the continuation pieces of every multi-piece word that is not in
    /// `source_words` dropped (the word's first piece stays). Position 0 always begins a word.
    pub(crate) fn drop_orphans(
        &self,
        ids: &[u32],
        source_words: &HashSet<String>,
    ) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity(ids.len());
        let mut start = 0;
        while start < ids.len() {
            let mut end = start + 1;
            while end < ids.len() && !self.starts_word(ids[end]) {
                end += 1;
            }
            let word = &ids[start..end];
            if word.len() == 1 {
                out.push(word[0]);
            } else {
                let text = self.tokenizer.decode(word)?;
                if source_words.contains(text.trim()) {
                    out.extend_from_slice(word);
                } else {
                    out.push(word[0]);
                }
            }
            start = end;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Byte-level pieces: `what` (sentence-initial), `Ġfur` + `ther` (`further`), `Ġwas`, `Ġ?`.
    const VOCAB: &str = r#"{"<s>":0,"<pad>":1,"</s>":2,"<unk>":3,"w":4,"h":5,"a":6,"t":7,"Ġ":8,"what":9,"Ġfur":10,"ther":11,"Ġwas":12,"Ġ?":13,"<mask>":14}"#;

    fn tokenizer() -> (tempfile::TempDir, BartTokenizer) {
        let d = tempfile::tempdir().expect("temp dir");
        let v = d.path().join("vocab.json");
        let m = d.path().join("merges.txt");
        std::fs::write(&v, VOCAB).expect("write vocab");
        std::fs::write(&m, "#version: 0.2\n").expect("write merges");
        let tok = BartTokenizer::from_files(&v, &m).expect("load tokenizer");
        (d, tok)
    }

    #[test]
    fn word_starts_follow_the_space_marker() {
        let (_d, tok) = tokenizer();
        let starts = tok.word_starts();
        assert_eq!(starts.len(), 15);
        // Specials and `Ġ` tokens begin words; `what` (no marker) and `ther` do not.
        for id in [0, 1, 2, 3, 8, 10, 12, 13, 14] {
            assert!(starts[id], "id {id}");
        }
        for id in [4, 9, 11] {
            assert!(!starts[id], "id {id}");
        }
    }

    #[test]
    fn glued_pieces_stay_only_as_source_words() {
        let (_d, tok) = tokenizer();
        let p = WordPieces::new(&tok);
        // Source "further was": `further` is a source word, `whatther` is not.
        let src = p.source_words(&[0, 10, 11, 12, 2]).expect("source words");
        assert!(src.contains("further") && src.contains("was"));
        assert_eq!(
            tok.decode(&[9, 11, 12, 13]).expect("decode"),
            "whatther was ?"
        );
        let out = p.drop_orphans(&[9, 11, 12, 13], &src).expect("repair");
        assert_eq!(out, vec![9, 12, 13]);
        assert_eq!(tok.decode(&out).expect("decode"), "what was ?");
        // A glued word found in the source is kept whole.
        assert_eq!(
            p.drop_orphans(&[9, 10, 11, 13], &src).expect("repair"),
            vec![9, 10, 11, 13]
        );
        // Without it in the source, only its first piece stays.
        let other = p.source_words(&[0, 12, 2]).expect("source words");
        assert_eq!(
            p.drop_orphans(&[9, 10, 11, 13], &other).expect("repair"),
            vec![9, 10, 13]
        );
        // A lone continuation piece at position 0 is a word of its own; empty stays empty.
        assert_eq!(
            p.drop_orphans(&[11, 12], &other).expect("repair"),
            vec![11, 12]
        );
        assert!(p.drop_orphans(&[], &other).expect("repair").is_empty());
    }
}
