//! Queries: the user's query string parsed into a tantivy query (all words
//! must match; a word the analyzer splits — `e-mail`, a CJK run — and a
//! `"quoted phrase"` must match as a phrase), restricted to the chats the
//! caller is a member of at query time, run under a time budget, and turned
//! into hits with snippets read from the store.
//!
//! Costs are bounded before anything runs: [`MAX_QUERY_BYTES`] of query,
//! [`MAX_QUERY_TERMS`] terms, [`MAX_LIMIT`] hits, and [`QUERY_BUDGET`] of
//! collection time (after which the hits found so far are returned, marked
//! `partial`).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tantivy::collector::{Collector, SegmentCollector, TopDocs};
use tantivy::columnar::Column;
use tantivy::query::{
    BooleanQuery, EnableScoring, InvertedIndexRangeQuery, Occur, PhraseQuery, Query, RangeQuery, TermQuery,
    TermSetQuery,
};
use tantivy::schema::IndexRecordOption;
use tantivy::snippet::SnippetGenerator;
use tantivy::tokenizer::TokenStream;
use tantivy::{DocAddress, DocId, Score, Searcher, SegmentOrdinal, SegmentReader, Term};

use super::analyzer::analyzer;
use super::index::{Fields, searchable};
use super::{SearchError, SearchIndex, SearchMetrics};
use crate::ids::{ChatId, Seq, UserId};
use crate::store::Store;

/// Longest query string, in bytes (after percent-decoding).
pub const MAX_QUERY_BYTES: usize = 512;

/// Most terms (words, or the bigrams of a CJK run) a query may have: each is a
/// postings list to walk.
pub const MAX_QUERY_TERMS: usize = 16;

/// Most hits one query returns (`limit=`); the default is [`DEFAULT_LIMIT`].
pub const MAX_LIMIT: usize = 100;

/// Hits returned when no `limit=` is given.
pub const DEFAULT_LIMIT: usize = 20;

/// Collection time one query may take; then it answers with the hits found so
/// far (`partial: true`). Far above what a 10-million-message index needs
/// (see PERFORMANCE.md), so only a pathological query meets it.
pub const QUERY_BUDGET: Duration = Duration::from_millis(500);

/// Characters of message text around the matches in a snippet.
pub const SNIPPET_CHARS: usize = 160;

/// How often (in documents collected) the budget clock is read.
const BUDGET_CHECK_EVERY: u32 = 1024;

/// The order of the hits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortOrder {
    /// Newest first (server timestamp), the default.
    Newest,
    /// Best BM25 score first.
    Relevance,
}

/// A validated search request.
#[derive(Clone, Debug)]
pub struct SearchRequest {
    /// The query string (1 to [`MAX_QUERY_BYTES`] bytes).
    pub q: String,
    /// Only this chat (the caller must be a member).
    pub chat: Option<ChatId>,
    /// Only messages with a seq below this (with `chat`).
    pub before_seq: Option<Seq>,
    /// 1 to [`MAX_LIMIT`].
    pub limit: usize,
    /// The order of the hits.
    pub order: SortOrder,
}

/// Why a query is refused (the caller's fault: 400 `invalid_query`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// Nothing to search for.
    #[error("the query is empty")]
    Empty,
    /// Only separators, or only tokens too long to be words.
    #[error("the query has no searchable words")]
    NoWords,
    /// Over [`MAX_QUERY_BYTES`].
    #[error("the query is longer than {MAX_QUERY_BYTES} bytes")]
    TooLong,
    /// Over [`MAX_QUERY_TERMS`].
    #[error("the query has more than {MAX_QUERY_TERMS} terms")]
    TooManyTerms,
    /// A `"` without its closing `"`.
    #[error("unclosed quote in the query")]
    UnclosedQuote,
}

/// One matching message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hit {
    /// The chat.
    pub chat: ChatId,
    /// The message's seq.
    pub seq: Seq,
    /// Who sent it.
    pub sender: UserId,
    /// Server timestamp, ms since the Unix epoch.
    pub server_ts_ms: u64,
    /// Up to [`SNIPPET_CHARS`] characters of the current text around the matches.
    pub snippet: String,
    /// Byte ranges of the matched words within `snippet`.
    pub highlights: Vec<(usize, usize)>,
}

/// What a query found.
#[derive(Clone, Debug, Default)]
pub struct SearchResults {
    /// The hits, in the requested order.
    pub hits: Vec<Hit>,
    /// True when the time budget cut collection short.
    pub partial: bool,
}

/// The clauses of `q`: each a list of analysed tokens that must appear
/// consecutively (a single-token list is a term).
///
/// # Errors
/// [`QueryError`] for an empty, too long, unbalanced or too big query.
pub fn parse(q: &str) -> Result<Vec<Vec<String>>, QueryError> {
    if q.trim().is_empty() {
        return Err(QueryError::Empty);
    }
    if q.len() > MAX_QUERY_BYTES {
        return Err(QueryError::TooLong);
    }
    if q.matches('"').count() % 2 == 1 {
        return Err(QueryError::UnclosedQuote);
    }
    let mut analyzer = analyzer();
    let mut clauses = Vec::new();
    let mut terms = 0;
    // Even pieces are outside quotes (one clause per whitespace-separated
    // word), odd ones inside (one clause per phrase).
    for (i, piece) in q.split('"').enumerate() {
        let groups: Vec<&str> = if i % 2 == 0 {
            piece.split_whitespace().collect()
        } else {
            vec![piece]
        };
        for group in groups {
            let mut stream = analyzer.token_stream(group);
            let mut tokens = Vec::new();
            while stream.advance() {
                tokens.push(stream.token().text.clone());
            }
            terms += tokens.len();
            if terms > MAX_QUERY_TERMS {
                return Err(QueryError::TooManyTerms);
            }
            if !tokens.is_empty() {
                clauses.push(tokens);
            }
        }
    }
    if clauses.is_empty() {
        return Err(QueryError::NoWords);
    }
    Ok(clauses)
}

fn text_query(fields: &Fields, clauses: &[Vec<String>]) -> Vec<(Occur, Box<dyn Query>)> {
    clauses
        .iter()
        .map(|tokens| {
            let mut terms: Vec<Term> = tokens
                .iter()
                .map(|t| Term::from_field_text(fields.text, t))
                .collect();
            let query: Box<dyn Query> = if terms.len() == 1 {
                let term = terms.remove(0);
                Box::new(TermQuery::new(term, IndexRecordOption::WithFreqs))
            } else {
                Box::new(PhraseQuery::new(terms))
            };
            (Occur::Must, query)
        })
        .collect()
}

impl SearchIndex {
    /// Runs `req` over the documents of `chats` (the caller's chats now,
    /// already checked), reading each hit's current text from `store` for its
    /// snippet; a hit whose message is gone or deleted in the store (the index
    /// is a moment behind) is left out.
    ///
    /// # Errors
    /// [`SearchError::Query`] for a bad query; index or store failures.
    pub fn search(
        &self,
        store: &Store,
        chats: &[ChatId],
        req: &SearchRequest,
    ) -> Result<SearchResults, SearchError> {
        let clauses = parse(&req.q).map_err(SearchError::Query)?;
        if chats.is_empty() {
            return Ok(SearchResults::default());
        }
        let fields = &self.fields;
        let searcher = self.reader.searcher();
        let deadline = Instant::now() + QUERY_BUDGET;
        let timed_out = Arc::new(AtomicBool::new(false));
        let found: Vec<(ChatId, Seq)> = match req.order {
            SortOrder::Newest => newest(
                &searcher,
                fields,
                &clauses,
                chats,
                req,
                deadline,
                &timed_out,
                &self.metrics,
            )?,
            SortOrder::Relevance => relevance(&searcher, fields, &clauses, chats, req, deadline, &timed_out)?,
        };
        let text_only = BooleanQuery::new(text_query(fields, &clauses));
        let mut snippets = SnippetGenerator::create(&searcher, &text_only, fields.text)
            .map_err(|e| SearchError::Index(e.to_string()))?;
        snippets.set_max_num_chars(SNIPPET_CHARS);
        let mut hits = Vec::with_capacity(found.len());
        for (chat, seq) in found {
            let Some(msg) = store
                .message(chat, seq)
                .map_err(|e| SearchError::Store(e.to_string()))?
            else {
                continue;
            };
            if !searchable(&msg) {
                continue;
            }
            let snippet = snippets.snippet(&msg.text);
            let mut fragment = snippet.fragment().to_owned();
            let mut highlights: Vec<(usize, usize)> =
                snippet.highlighted().iter().map(|r| (r.start, r.end)).collect();
            if fragment.is_empty() {
                // No highlighted word in the text (a phrase the generator does not
                // see as such): the text's beginning.
                fragment = msg.text.chars().take(SNIPPET_CHARS).collect();
                highlights.clear();
            }
            hits.push(Hit {
                chat,
                seq,
                sender: msg.sender,
                server_ts_ms: msg.server_ts_ms,
                snippet: fragment,
                highlights,
            });
        }
        Ok(SearchResults {
            hits,
            partial: timed_out.load(Ordering::Relaxed),
        })
    }
}

/// Best BM25 score first: every match is scored (tantivy's top-k by score),
/// restricted by a term set of the caller's chats.
fn relevance(
    searcher: &Searcher,
    fields: &Fields,
    clauses: &[Vec<String>],
    chats: &[ChatId],
    req: &SearchRequest,
    deadline: Instant,
    timed_out: &Arc<AtomicBool>,
) -> Result<Vec<(ChatId, Seq)>, SearchError> {
    let mut subqueries = text_query(fields, clauses);
    subqueries.push((Occur::Must, membership_query(fields, chats)));
    if let Some(before) = req.before_seq {
        subqueries.push((
            Occur::Must,
            Box::new(RangeQuery::new(
                Bound::Unbounded,
                Bound::Excluded(Term::from_field_u64(fields.seq, before.0)),
            )),
        ));
    }
    let query = BooleanQuery::new(subqueries);
    let top = TopDocs::with_limit(req.limit).order_by_score();
    let addresses: Vec<DocAddress> = searcher
        .search(&query, &Budget::new(top, deadline, timed_out.clone()))
        .map_err(|e| SearchError::Index(e.to_string()))?
        .into_iter()
        .map(|(_, a)| a)
        .collect();
    let mut found = Vec::with_capacity(addresses.len());
    for address in addresses {
        let segment = searcher.segment_reader(address.segment_ord);
        let column = |name: &str| -> Result<u64, SearchError> {
            segment
                .fast_fields()
                .u64(name)
                .map_err(|e| SearchError::Index(e.to_string()))?
                .first(address.doc_id)
                .ok_or_else(|| SearchError::Index(format!("document without {name}")))
        };
        found.push((ChatId(column("chat")?), Seq(column("seq")?)));
    }
    Ok(found)
}

fn membership_query(fields: &Fields, chats: &[ChatId]) -> Box<dyn Query> {
    Box::new(TermSetQuery::new(
        chats.iter().map(|c| Term::from_field_u64(fields.chat, c.0)),
    ))
}

/// Newest first, ordered by `(ts, chat, seq)` descending (a total order, so a
/// page cut inside one millisecond is the same every time and `before_seq`
/// pages neither repeat nor skip a hit).
///
/// Three plans, chosen per query from document frequencies (cheap term
/// dictionary reads), whichever is estimated to touch fewer documents:
///
/// * **Whole index, words only**: every match of the words collected, the
///   membership checked per match on the `chat` column. Costs about the
///   rarest word's postings: cheap when one of the words is rare.
/// * **Whole index with a term set**: the words ANDed with a term set of the
///   caller's chats. Costs about the documents of the caller's chats (tantivy
///   builds the term set's bitset): cheap when the caller's chats are small.
/// * **Time windows from the newest back**: the words ANDed with a `ts_s`
///   (whole seconds) term range `[lo, hi)`, the membership checked per match on the `chat` column;
///   the first window is sized to hold about twice `limit` matches if words
///   and chats were independent, each next one (older, disjoint) is
///   [`WINDOW_GROWTH`] times longer, until `limit` hits are found or the oldest
///   document is passed. A window only touches the segments whose `ts` span
///   meets it. Exact: every document of a later window is older than every
///   document of an earlier one, so once `limit` hits are found no older
///   document can displace one. Costs about the documents in the windows
///   visited, which for a common word is a few thousand however large the
///   index grows.
#[expect(
    clippy::too_many_arguments,
    reason = "one query's borrowed parts, passed once from `run`"
)]
fn newest(
    searcher: &Searcher,
    fields: &Fields,
    clauses: &[Vec<String>],
    chats: &[ChatId],
    req: &SearchRequest,
    deadline: Instant,
    timed_out: &Arc<AtomicBool>,
    metrics: &SearchMetrics,
) -> Result<Vec<(ChatId, Seq)>, SearchError> {
    let collector = Newest {
        limit: req.limit,
        chats: Arc::new(chats.iter().map(|c| c.0).collect()),
        before_seq: req.before_seq.map(|s| s.0),
        deadline,
        timed_out: timed_out.clone(),
    };
    let index_err = |e: tantivy::TantivyError| SearchError::Index(e.to_string());
    let docs = searcher.num_docs();
    if docs == 0 {
        return Ok(Vec::new());
    }
    // The rarest word bounds the matches; the caller's chats' documents bound
    // the term set's cost (past MEMBERSHIP_FREQ_CHATS chats, not counted:
    // assumed to be all of them).
    let mut rarest = docs;
    for token in clauses.iter().flatten() {
        rarest = rarest.min(
            searcher
                .doc_freq(&Term::from_field_text(fields.text, token))
                .map_err(index_err)?,
        );
    }
    if rarest == 0 {
        return Ok(Vec::new());
    }
    let member_docs = if chats.len() <= MEMBERSHIP_FREQ_CHATS {
        let mut n = 0;
        for chat in chats {
            n += searcher
                .doc_freq(&Term::from_field_u64(fields.chat, chat.0))
                .map_err(index_err)?;
        }
        n.min(docs)
    } else {
        docs
    };
    if member_docs == 0 {
        return Ok(Vec::new());
    }
    let limit = req.limit as u64;
    // Documents a window must span to hold ~2 × limit hits: 2·limit / (P(words) · P(chats)).
    let window_docs = (2 * limit)
        .saturating_mul(docs)
        .saturating_div(rarest)
        .saturating_mul(docs)
        .saturating_div(member_docs)
        .max(FIRST_WINDOW_DOCS)
        .min(docs);
    // The estimated documents each plan touches (the module's `newest` docs).
    tracing::debug!(docs, rarest, member_docs, window_docs, "search plan inputs");
    let with_term_set = member_docs + rarest.min(member_docs);
    let words_only = rarest;
    if with_term_set.min(words_only) <= window_docs {
        metrics.query_whole.fetch_add(1, Ordering::Relaxed);
        let mut subqueries = text_query(fields, clauses);
        if with_term_set < words_only {
            subqueries.push((Occur::Must, membership_query(fields, chats)));
        }
        let hits = searcher
            .search(&BooleanQuery::new(subqueries), &collector)
            .map_err(index_err)?;
        return Ok(hits.into_iter().map(|k| (ChatId(k.chat), Seq(k.seq))).collect());
    }
    // The time span of the index, and of each segment (its `ts` column's bounds).
    let mut spans = Vec::with_capacity(searcher.segment_readers().len());
    for segment in searcher.segment_readers() {
        let ts = segment.fast_fields().u64("ts").map_err(index_err)?;
        spans.push((ts.min_value(), ts.max_value()));
    }
    // Windows are whole seconds of `ts_s`: [lo, hi) in seconds.
    let oldest = spans.iter().map(|s| s.0).min().unwrap_or(0) / 1000;
    let newest = spans.iter().map(|s| s.1).max().unwrap_or(0) / 1000;
    let span_s = newest - oldest + 1;
    // As long as `window_docs` would last at the index's average rate.
    let mut window_s = u64::try_from(u128::from(span_s) * u128::from(window_docs) / u128::from(docs))
        .unwrap_or(span_s)
        .max(1);
    let mut hits: Vec<NewestKey> = Vec::with_capacity(req.limit);
    let mut hi = newest.saturating_add(1);
    while hi > oldest {
        let lo = hi.saturating_sub(window_s).max(oldest);
        let mut subqueries = text_query(fields, clauses);
        subqueries.push((
            Occur::Must,
            Box::new(InvertedIndexRangeQuery::new(
                Bound::Included(Term::from_field_u64(fields.ts_s, lo)),
                Bound::Excluded(Term::from_field_u64(fields.ts_s, hi)),
            )),
        ));
        let query = BooleanQuery::new(subqueries);
        let weight = query
            .weight(EnableScoring::disabled_from_searcher(searcher))
            .map_err(index_err)?;
        let mut fruits = Vec::new();
        for (ord, segment) in searcher.segment_readers().iter().enumerate() {
            let Some(&(min, max)) = spans.get(ord) else {
                continue;
            };
            if max / 1000 < lo || min / 1000 >= hi {
                continue;
            }
            let ord = u32::try_from(ord).map_err(|_| SearchError::Index("too many segments".to_owned()))?;
            fruits.push(
                collector
                    .collect_segment(weight.as_ref(), ord, segment)
                    .map_err(index_err)?,
            );
        }
        metrics.query_windows.fetch_add(1, Ordering::Relaxed);
        hits.extend(collector.merge_fruits(fruits).map_err(index_err)?);
        tracing::debug!(
            lo,
            hi,
            hits = hits.len(),
            left_us = deadline.saturating_duration_since(Instant::now()).as_micros() as u64,
            "search window"
        );
        if hits.len() >= req.limit || timed_out.load(Ordering::Relaxed) || Instant::now() >= deadline {
            if hits.len() < req.limit && lo > oldest {
                timed_out.store(true, Ordering::Relaxed);
            }
            break;
        }
        hi = lo;
        window_s = window_s.saturating_mul(WINDOW_GROWTH);
    }
    hits.truncate(req.limit);
    Ok(hits.into_iter().map(|k| (ChatId(k.chat), Seq(k.seq))).collect())
}

/// The first newest-first window covers at least this many documents (at the
/// index's average rate): below it, the per-window overhead (a term range, a
/// bitset per segment) outweighs the documents saved.
pub const FIRST_WINDOW_DOCS: u64 = 4096;

/// Each next (older) newest-first window is this many times longer than the
/// one before: a query whose estimate was wrong by a factor f takes about
/// log₄ f more windows, and the documents visited stay within ~4/3 of the last
/// window's.
pub const WINDOW_GROWTH: u64 = 4;

/// Up to this many chats, a query counts the documents of the caller's chats
/// (one term-dictionary read per chat and segment) to choose its plan; a
/// caller in more is assumed to see the whole index.
const MEMBERSHIP_FREQ_CHATS: usize = 256;

/// A newest-first hit's sort key, compared as `(ts, chat, seq)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct NewestKey {
    ts: u64,
    chat: u64,
    seq: u64,
}

/// Keeps the `limit` greatest [`NewestKey`]s among matches of the caller's
/// chats (and below `before_seq`), read from the fast fields; stops
/// collecting at `deadline` (raising `timed_out`).
struct Newest {
    limit: usize,
    chats: Arc<HashSet<u64>>,
    before_seq: Option<u64>,
    deadline: Instant,
    timed_out: Arc<AtomicBool>,
}

struct NewestSegment {
    limit: usize,
    chats: Arc<HashSet<u64>>,
    before_seq: Option<u64>,
    chat: Column<u64>,
    seq: Column<u64>,
    ts: Column<u64>,
    /// Min-heap of the best `limit` so far.
    best: BinaryHeap<Reverse<NewestKey>>,
    deadline: Instant,
    timed_out: Arc<AtomicBool>,
    countdown: u32,
    stopped: bool,
}

impl Collector for Newest {
    type Fruit = Vec<NewestKey>;
    type Child = NewestSegment;

    fn for_segment(&self, _ord: SegmentOrdinal, segment: &SegmentReader) -> tantivy::Result<Self::Child> {
        let fast = segment.fast_fields();
        Ok(NewestSegment {
            limit: self.limit,
            chats: self.chats.clone(),
            before_seq: self.before_seq,
            chat: fast.u64("chat")?,
            seq: fast.u64("seq")?,
            ts: fast.u64("ts")?,
            best: BinaryHeap::with_capacity(self.limit + 1),
            deadline: self.deadline,
            timed_out: self.timed_out.clone(),
            countdown: 1,
            stopped: false,
        })
    }

    fn requires_scoring(&self) -> bool {
        false
    }

    fn merge_fruits(&self, fruits: Vec<Vec<NewestKey>>) -> tantivy::Result<Vec<NewestKey>> {
        let mut all: Vec<NewestKey> = fruits.into_iter().flatten().collect();
        all.sort_unstable_by(|a, b| b.cmp(a));
        all.truncate(self.limit);
        Ok(all)
    }
}

impl SegmentCollector for NewestSegment {
    type Fruit = Vec<NewestKey>;

    fn collect(&mut self, doc: DocId, _score: Score) {
        if self.stopped {
            return;
        }
        self.countdown = self.countdown.saturating_sub(1);
        if self.countdown == 0 {
            self.countdown = BUDGET_CHECK_EVERY;
            if Instant::now() >= self.deadline {
                self.stopped = true;
                self.timed_out.store(true, Ordering::Relaxed);
                return;
            }
        }
        let (Some(ts), Some(chat), Some(seq)) =
            (self.ts.first(doc), self.chat.first(doc), self.seq.first(doc))
        else {
            return;
        };
        let key = NewestKey { ts, chat, seq };
        if self.best.len() >= self.limit && self.best.peek().is_some_and(|Reverse(min)| key <= *min) {
            return;
        }
        if !self.chats.contains(&chat) || self.before_seq.is_some_and(|b| seq >= b) {
            return;
        }
        self.best.push(Reverse(key));
        if self.best.len() > self.limit {
            self.best.pop();
        }
    }

    fn harvest(self) -> Vec<NewestKey> {
        self.best.into_iter().map(|Reverse(k)| k).collect()
    }
}

/// A collector that forwards to `inner` until `deadline`, then ignores the
/// remaining documents and raises `timed_out`.
struct Budget<C> {
    inner: C,
    deadline: Instant,
    timed_out: Arc<AtomicBool>,
}

impl<C> Budget<C> {
    fn new(inner: C, deadline: Instant, timed_out: Arc<AtomicBool>) -> Self {
        Self {
            inner,
            deadline,
            timed_out,
        }
    }
}

struct BudgetSegment<S> {
    inner: S,
    deadline: Instant,
    timed_out: Arc<AtomicBool>,
    countdown: u32,
    stopped: bool,
}

impl<S> BudgetSegment<S> {
    /// False once the deadline passed (checked every [`BUDGET_CHECK_EVERY`] documents).
    fn allowed(&mut self) -> bool {
        if self.stopped {
            return false;
        }
        self.countdown = self.countdown.saturating_sub(1);
        if self.countdown == 0 {
            self.countdown = BUDGET_CHECK_EVERY;
            if Instant::now() >= self.deadline {
                self.stopped = true;
                self.timed_out.store(true, Ordering::Relaxed);
                return false;
            }
        }
        true
    }
}

impl<C: Collector> Collector for Budget<C> {
    type Fruit = C::Fruit;
    type Child = BudgetSegment<C::Child>;

    fn for_segment(&self, ord: SegmentOrdinal, segment: &SegmentReader) -> tantivy::Result<Self::Child> {
        Ok(BudgetSegment {
            inner: self.inner.for_segment(ord, segment)?,
            deadline: self.deadline,
            timed_out: self.timed_out.clone(),
            countdown: 1,
            stopped: false,
        })
    }

    fn requires_scoring(&self) -> bool {
        self.inner.requires_scoring()
    }

    fn merge_fruits(
        &self,
        fruits: Vec<<Self::Child as SegmentCollector>::Fruit>,
    ) -> tantivy::Result<Self::Fruit> {
        self.inner.merge_fruits(fruits)
    }
}

impl<S: SegmentCollector> SegmentCollector for BudgetSegment<S> {
    type Fruit = S::Fruit;

    fn collect(&mut self, doc: DocId, score: Score) {
        if self.allowed() {
            self.inner.collect(doc, score);
        }
    }

    fn harvest(self) -> Self::Fruit {
        self.inner.harvest()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_phrases_and_cjk_runs_become_clauses() {
        assert_eq!(parse("Café  tower").unwrap(), vec![vec!["cafe"], vec!["tower"]]);
        assert_eq!(
            parse("\"big red\" e-mail").unwrap(),
            vec![vec!["big", "red"], vec!["e", "mail"]]
        );
        assert_eq!(parse("東京").unwrap(), vec![vec!["東京"]]);
        assert_eq!(
            parse("東京タワー").unwrap(),
            vec![vec!["東京", "京タ", "タワ", "ワー"]]
        );
    }

    #[test]
    fn bad_queries_are_refused_with_their_reason() {
        assert_eq!(parse(""), Err(QueryError::Empty));
        assert_eq!(parse("   "), Err(QueryError::Empty));
        assert_eq!(parse("?!"), Err(QueryError::NoWords));
        assert_eq!(parse("\"open"), Err(QueryError::UnclosedQuote));
        assert_eq!(parse(&"a".repeat(MAX_QUERY_BYTES + 1)), Err(QueryError::TooLong));
        let terms: Vec<String> = (0..=MAX_QUERY_TERMS).map(|i| format!("w{i}")).collect();
        assert_eq!(parse(&terms.join(" ")), Err(QueryError::TooManyTerms));
        let terms: Vec<String> = (0..MAX_QUERY_TERMS).map(|i| format!("w{i}")).collect();
        assert!(parse(&terms.join(" ")).is_ok());
    }
}
