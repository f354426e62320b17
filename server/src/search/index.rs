//! The tantivy index under `--data-dir/search/`: its schema, opening it (or
//! starting afresh when its schema changed), one document per searchable
//! message, and the durable watermark carried in each commit's payload.
//!
//! | field    | kind                       | why |
//! |----------|----------------------------|-----|
//! | `id`     | raw string `"chat:seq"`, indexed | the unique key: delete-term before every add, so a replay never indexes a message twice |
//! | `chat`   | u64, indexed + fast        | the membership filter (a term set of the caller's chats) and `chat_id=` |
//! | `seq`    | u64, indexed + fast        | the hit's identity, `before_seq=` |
//! | `sender` | u64, fast                  | shown in hits |
//! | `ts`     | u64, fast (ms since epoch) | newest-first order |
//! | `ts_s`   | u64, indexed (`ts` / 1000, whole seconds) | newest-first time windows: a window is a range of these terms, one postings list per second (`query.rs`); seconds, not ms, so a window over sparse traffic is not thousands of one-document lists |
//! | `text`   | [`super::analyzer`], positions, **not stored** | the words; snippets read the text from the store (the truth, and no second copy of every text on disk) |

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tantivy::directory::MmapDirectory;
use tantivy::schema::{
    FAST, Field, INDEXED, IndexRecordOption, STRING, Schema, TextFieldIndexing, TextOptions,
};
use tantivy::{Index, IndexWriter, TantivyDocument, Term};

use super::SearchError;
use super::analyzer::{ANALYZER, analyzer};
use crate::core::{MessageKind, StoredMessage};
use crate::ids::ChatId;

/// Bumped whenever the schema or the analysis changes: an index written with
/// another version is rebuilt from the store at start.
pub const SCHEMA_VERSION: u32 = 2;

/// The directory under `--data-dir` that holds the index.
pub const INDEX_DIR: &str = "search";

/// Memory the index writer buffers before it writes a segment on its own, in
/// bytes: 50 MB, tantivy's usual figure; commits come sooner (every second).
pub(crate) const WRITER_HEAP_BYTES: usize = 50_000_000;

/// The schema's fields.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Fields {
    /// `"chat:seq"`, the unique key.
    pub id: Field,
    /// The chat id.
    pub chat: Field,
    /// The message's seq.
    pub seq: Field,
    /// The sender's user id.
    pub sender: Field,
    /// Server timestamp, ms since the Unix epoch.
    pub ts: Field,
    /// The server timestamp in whole seconds since the Unix epoch.
    pub ts_s: Field,
    /// The analysed text.
    pub text: Field,
}

/// The schema and its fields.
pub(crate) fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let text_options = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer(ANALYZER)
            .set_index_option(IndexRecordOption::WithFreqsAndPositions),
    );
    let fields = Fields {
        id: b.add_text_field("id", STRING),
        chat: b.add_u64_field("chat", INDEXED | FAST),
        seq: b.add_u64_field("seq", INDEXED | FAST),
        sender: b.add_u64_field("sender", FAST),
        ts: b.add_u64_field("ts", FAST),
        ts_s: b.add_u64_field("ts_s", INDEXED),
        text: b.add_text_field("text", text_options),
    };
    (b.build(), fields)
}

/// The unique key term of `(chat, seq)`.
pub(crate) fn key_term(fields: &Fields, chat: ChatId, seq: u64) -> Term {
    Term::from_field_text(fields.id, &format!("{}:{seq}", chat.0))
}

/// The durable watermark: per chat, the highest seq whose effect is in the
/// index. Carried in the payload of each tantivy commit, so it is exactly as
/// durable as the documents it describes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Watermark {
    /// Highest applied seq per chat (absent: nothing applied).
    pub chats: HashMap<ChatId, u64>,
}

#[derive(Serialize, Deserialize)]
struct Payload {
    v: u32,
    /// `[chat, seq]` pairs.
    marks: Vec<(u64, u64)>,
}

impl Watermark {
    /// The commit payload.
    pub fn encode(&self) -> String {
        let mut marks: Vec<(u64, u64)> = self.chats.iter().map(|(c, s)| (c.0, *s)).collect();
        marks.sort_unstable();
        serde_json::to_string(&Payload {
            v: SCHEMA_VERSION,
            marks,
        })
        .unwrap_or_default()
    }

    /// Reads a commit payload; `None` when absent, unreadable or of another
    /// schema version (the index is then rebuilt).
    pub fn decode(payload: Option<&str>) -> Option<Self> {
        let p: Payload = serde_json::from_str(payload?).ok()?;
        (p.v == SCHEMA_VERSION).then(|| Self {
            chats: p.marks.into_iter().map(|(c, s)| (ChatId(c), s)).collect(),
        })
    }

    /// The highest applied seq of `chat` (0: none).
    pub fn get(&self, chat: ChatId) -> u64 {
        self.chats.get(&chat).copied().unwrap_or(0)
    }
}

/// Opens the index in `data_dir/search/` (creating it), with the analyzer
/// registered, and its watermark. An index whose schema or payload version is
/// not this build's is emptied (the watermark starts at zero, so the indexer
/// rebuilds it from the store).
///
/// # Errors
/// The directory cannot be created or the index cannot be opened.
pub(crate) fn open(data_dir: &Path) -> Result<(Index, Fields, Watermark), SearchError> {
    let dir = data_dir.join(INDEX_DIR);
    std::fs::create_dir_all(&dir).map_err(|e| SearchError::Io(e.to_string()))?;
    let (schema, fields) = schema();
    let opened = MmapDirectory::open(&dir)
        .map_err(|e| SearchError::Index(e.to_string()))
        .and_then(|d| {
            Index::open_or_create(d, schema.clone()).map_err(|e| SearchError::Index(e.to_string()))
        });
    let index = match opened {
        Ok(index) => index,
        Err(e) => {
            // Another schema (an older natterd) or a damaged index: start afresh.
            tracing::warn!(error = %e, dir = %dir.display(), "search index unusable; rebuilding it from the store");
            std::fs::remove_dir_all(&dir).map_err(|e| SearchError::Io(e.to_string()))?;
            std::fs::create_dir_all(&dir).map_err(|e| SearchError::Io(e.to_string()))?;
            let d = MmapDirectory::open(&dir).map_err(|e| SearchError::Index(e.to_string()))?;
            Index::create(d, schema, tantivy::IndexSettings::default())
                .map_err(|e| SearchError::Index(e.to_string()))?
        }
    };
    index.tokenizers().register(ANALYZER, analyzer());
    let metas = index
        .load_metas()
        .map_err(|e| SearchError::Index(e.to_string()))?;
    let watermark = match Watermark::decode(metas.payload.as_deref()) {
        Some(w) => w,
        None if metas.segments.iter().any(|s| s.num_docs() > 0) => {
            // Its documents cannot be told from the ones the rebuild adds (the
            // rebuild only adds, see `upsert`): start from an empty index.
            tracing::warn!("search index has no readable watermark; rebuilding it from the store");
            drop(index);
            std::fs::remove_dir_all(&dir).map_err(|e| SearchError::Io(e.to_string()))?;
            return open(data_dir);
        }
        None => Watermark::default(),
    };
    Ok((index, fields, watermark))
}

/// A writer with one indexing thread (the machine's cores belong to the
/// message path).
///
/// # Errors
/// tantivy could not take the index lock or allocate its buffers.
pub(crate) fn writer(index: &Index) -> Result<IndexWriter, SearchError> {
    index
        .writer_with_num_threads(1, WRITER_HEAP_BYTES)
        .map_err(|e| SearchError::Index(e.to_string()))
}

/// Whether `msg` (in its current stored state) has a document: a text that
/// is not deleted. Edit and Delete records never do (an edit's text is the
/// target's current text, indexed under the target).
pub(crate) fn searchable(msg: &StoredMessage) -> bool {
    msg.meta.kind == MessageKind::Text && msg.meta.deleted.0 == 0 && !msg.text.is_empty()
}

/// Makes the index hold exactly `msg`'s current state: its document (if any)
/// deleted when `replace`, then added again when it is [`searchable`].
///
/// `replace` is false only for a text applied from its own record above the
/// chat's watermark: a document `(chat, seq)` is only ever made by applying a
/// record at or after `seq`, and everything applied (committed or not) is at
/// or below the watermark, so there is none to delete. Skipping the delete
/// matters: tantivy keeps every queued delete (≈ 250 bytes) until the next
/// commit and applies each to every segment, so one per message was most of
/// the indexer's memory and much of its time.
///
/// # Errors
/// The writer failed (its worker died).
pub(crate) fn upsert(
    writer: &IndexWriter,
    fields: &Fields,
    msg: &StoredMessage,
    replace: bool,
) -> Result<bool, SearchError> {
    if replace {
        writer.delete_term(key_term(fields, msg.chat, msg.seq.0));
    }
    if !searchable(msg) {
        return Ok(false);
    }
    let mut doc = TantivyDocument::default();
    doc.add_text(fields.id, format!("{}:{}", msg.chat.0, msg.seq.0));
    doc.add_u64(fields.chat, msg.chat.0);
    doc.add_u64(fields.seq, msg.seq.0);
    doc.add_u64(fields.sender, msg.sender.0);
    doc.add_u64(fields.ts, msg.server_ts_ms);
    doc.add_u64(fields.ts_s, msg.server_ts_ms / 1000);
    doc.add_text(fields.text, &msg.text);
    writer
        .add_document(doc)
        .map_err(|e| SearchError::Index(e.to_string()))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermark_round_trips_and_refuses_other_versions() {
        let mut w = Watermark::default();
        w.chats.insert(ChatId(3), 17);
        w.chats.insert(ChatId(1), 2);
        assert_eq!(Watermark::decode(Some(&w.encode())), Some(w.clone()));
        assert_eq!(Watermark::decode(Some(r#"{"v":0,"marks":[]}"#)), None);
        assert_eq!(Watermark::decode(Some("garbage")), None);
        assert_eq!(Watermark::decode(None), None);
        assert_eq!(w.get(ChatId(3)), 17);
        assert_eq!(w.get(ChatId(9)), 0);
    }

    #[test]
    fn an_index_without_a_readable_watermark_is_emptied_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let (index, fields, _) = open(dir.path()).unwrap();
        let mut writer = writer(&index).unwrap();
        let mut doc = TantivyDocument::default();
        doc.add_text(fields.id, "1:1");
        doc.add_u64(fields.chat, 1);
        doc.add_text(fields.text, "hello");
        writer.add_document(doc).unwrap();
        // Committed without a payload: its documents are not covered by a watermark.
        writer.commit().unwrap();
        drop(writer);
        drop(index);
        let (index, _, watermark) = open(dir.path()).unwrap();
        assert_eq!(watermark, Watermark::default());
        let docs: u32 = index
            .load_metas()
            .unwrap()
            .segments
            .iter()
            .map(|s| s.num_docs())
            .sum();
        assert_eq!(docs, 0, "the rebuild would add its documents a second time");
    }
}
