//! The `search` scenario (issue 16): fills `--search-messages` messages of
//! Zipf-distributed words over `--search-chats` groups through natterd, waits
//! until the search index has caught up, then measures `GET /v1/search` for
//! one-word and three-word queries.
//!
//! Setup: a sender `bench_q_sender` and readers `bench_q_reader0..` (friends of
//! the sender, in every group; reused across runs). There are as many readers as
//! the queries need under natterd's per-user search limit (60 a minute): each
//! reader asks at most [`QUERIES_PER_READER`] queries.
//!
//! Words: a vocabulary of [`VOCABULARY`] made-up words, ranked, each message
//! [`WORDS_PER_MESSAGE`] words drawn with probability ∝ 1/rank (Zipf, s = 1), like
//! natural text: the top words are in a large share of all messages (long postings
//! lists, the expensive case), the tail in few. Query words are drawn uniformly
//! from the top [`QUERY_RANKS`] ranks, so common and rarer words are both asked.
//!
//! Figures: `acked` and `msgs_per_sec` (the fill through the message path),
//! `search_index_catch_up_s` (from the end of the fill until the index lag is 0),
//! `search_indexed_per_sec` (messages over fill + catch-up time),
//! `search_q1_p50_us` / `search_q1_p99_us` and `search_q3_p50_us` /
//! `search_q3_p99_us` (query latency, client-measured over HTTP/1.1 on loopback;
//! with `--search-query-runs N` the query phase runs N times on the same store,
//! each run printed, these the medians of the runs' figures),
//! `search_index_bytes` and `search_index_bytes_per_message`.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use natter_client::SearchOptions;

use crate::error::BenchError;
use crate::interrupt;
use crate::report::Report;
use crate::scenarios::sync::fill_texts;
use crate::target::{Target, metric_sum};

const PASSWORD: &str = "natter-bench-password";
/// Made-up words in the vocabulary.
pub(crate) const VOCABULARY: usize = 20_000;
/// Words per message (~50 bytes of text).
pub(crate) const WORDS_PER_MESSAGE: usize = 8;
/// Query words are drawn from the top ranks only (rarer ones would mostly miss).
pub(crate) const QUERY_RANKS: usize = 2_000;
/// Queries one reader asks (natterd allows 60 a minute per user).
pub(crate) const QUERIES_PER_READER: u64 = 50;
/// How long the index may take to catch up after the fill.
const CATCH_UP_DEADLINE: Duration = Duration::from_secs(600);

/// The search scenario's flags.
#[derive(Clone, Debug, clap::Args)]
pub(crate) struct SearchArgs {
    /// search: messages to fill before querying.
    #[arg(long, default_value_t = 200_000)]
    pub(crate) search_messages: u64,
    /// search: groups the messages are spread over (every reader is in each).
    #[arg(long, default_value_t = 50)]
    pub(crate) search_chats: u64,
    /// search: queries of each kind (one word, three words).
    #[arg(long, default_value_t = 200)]
    pub(crate) search_queries: u64,
    /// search: times the query phase runs on the one filled store (1 to 9;
    /// each run's figures are printed, the JSON holds their medians).
    #[arg(long, default_value_t = 1)]
    pub(crate) search_query_runs: u64,
}

/// Checks the flags before anything starts.
///
/// # Errors
/// [`BenchError::Usage`] when a flag is out of range.
pub(crate) fn check_args(args: &SearchArgs) -> Result<(), BenchError> {
    if args.search_messages == 0 || args.search_chats == 0 || args.search_chats > 1_000 {
        return Err(BenchError::Usage(
            "--search-messages must be at least 1 and --search-chats 1 to 1000".into(),
        ));
    }
    if args.search_queries == 0 || args.search_queries > 10_000 {
        return Err(BenchError::Usage("--search-queries must be 1 to 10000".into()));
    }
    if args.search_query_runs == 0 || args.search_query_runs > 9 {
        return Err(BenchError::Usage("--search-query-runs must be 1 to 9".into()));
    }
    Ok(())
}

/// The made-up word of `rank` (0-based): syllables in a mixed radix, so every rank
/// has its own word of 2 to 4 syllables.
pub(crate) fn word(rank: usize) -> String {
    const SYLLABLES: [&str; 32] = [
        "ka", "lo", "mi", "nu", "pe", "ra", "si", "to", "va", "ze", "bo", "du", "fi", "ga", "he", "jo", "ku",
        "le", "ma", "ne", "po", "qui", "ru", "sa", "te", "vo", "wa", "xi", "yu", "zo", "an", "el",
    ];
    let mut n = rank + SYLLABLES.len(); // at least two syllables
    let mut out = String::new();
    while n > 0 {
        out.push_str(SYLLABLES[n % SYLLABLES.len()]);
        n /= SYLLABLES.len();
    }
    out
}

/// A small deterministic generator (xorshift64*), so runs are comparable.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n as u64) as usize
    }
}

/// Zipf (s = 1) ranks by inverse transform over the cumulative weights.
pub(crate) struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    pub(crate) fn new(n: usize) -> Self {
        let mut total = 0.0;
        let cumulative = (1..=n)
            .map(|r| {
                total += 1.0 / r as f64;
                total
            })
            .collect();
        Self { cumulative }
    }

    pub(crate) fn sample(&self, rng: &mut Rng) -> usize {
        let total = self.cumulative.last().copied().unwrap_or(1.0);
        let x = rng.below(1 << 30) as f64 / f64::from(1u32 << 30) * total;
        self.cumulative
            .partition_point(|c| *c < x)
            .min(self.cumulative.len() - 1)
    }
}

fn login(target: &Target, name: &str) -> Result<natter_client::Login, BenchError> {
    match target.http.signup(name, PASSWORD) {
        Ok(_) => {}
        Err(e) if e.http_status() == Some(409) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(target.http.login(name, PASSWORD, "bench")?)
}

fn befriend(
    target: &Target,
    a: &natter_client::Login,
    b: &natter_client::Login,
    b_name: &str,
) -> Result<(), BenchError> {
    match target.http.friend_request(&a.token, b_name) {
        Ok(_) => {}
        Err(e) if e.http_status() == Some(409) => {}
        Err(e) => return Err(e.into()),
    }
    match target.http.accept_friend(&b.token, a.user_id) {
        Ok(()) => Ok(()),
        Err(e) if e.http_status().is_some_and(|s| s == 404 || s == 409) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn metric(target: &Target, name: &str) -> Result<f64, BenchError> {
    let text = target.http.metrics()?;
    metric_sum(&text, name)
        .ok_or_else(|| BenchError::Setup(format!("natterd reports no {name} (no search?)")))
}

#[allow(clippy::expect_used)] // constant bounds that hdrhistogram documents as valid
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("1 µs .. 1 h at 3 digits is a valid histogram")
}

/// Runs the scenario against `target`.
///
/// # Errors
/// [`BenchError::Client`] / [`BenchError::Setup`] when natterd refuses the setup, a
/// query fails or the index does not catch up; [`BenchError::Interrupted`] after Ctrl-C.
pub(crate) fn run(target: &Target, args: &SearchArgs) -> Result<Report, BenchError> {
    let sender = login(target, "bench_q_sender")?;
    let readers_needed = (2 * args.search_queries * args.search_query_runs).div_ceil(QUERIES_PER_READER);
    let mut readers = Vec::new();
    for i in 0..readers_needed {
        let name = format!("bench_q_reader{i}");
        let reader = login(target, &name)?;
        befriend(target, &sender, &reader, &name)?;
        readers.push(reader);
    }
    let member_ids: Vec<u64> = readers.iter().map(|r| r.user_id).collect();
    let mut chats = Vec::new();
    for i in 0..args.search_chats {
        chats.push(
            target
                .http
                .create_group(&sender.token, &format!("search {i}"), &member_ids)?,
        );
    }
    let zipf = Zipf::new(VOCABULARY);
    let vocabulary: Vec<String> = (0..VOCABULARY).map(word).collect();
    let mut rng = Rng::new(0x5EED);
    let indexed_before = metric(target, "natter_search_observed_total")?;
    let docs_before = metric(target, "natter_search_docs")?;
    println!(
        "filling {} messages over {} chats ...",
        args.search_messages,
        chats.len()
    );
    let started = Instant::now();
    fill_texts(target, &sender.token, &chats, args.search_messages, |_| {
        let words: Vec<&str> = (0..WORDS_PER_MESSAGE)
            .map(|_| vocabulary[zipf.sample(&mut rng)].as_str())
            .collect();
        words.join(" ")
    })?;
    let fill_secs = started.elapsed().as_secs_f64();
    println!(
        "filled in {fill_secs:.1}s ({:.0} sends/s); waiting for the index ...",
        args.search_messages as f64 / fill_secs
    );
    let fill_end = Instant::now();
    loop {
        interrupt::check()?;
        // Handed to the indexer through its queue, or (when the queue overflowed
        // and those batches were dropped) caught up from the store: then only
        // the documents show that the fill is in.
        let observed = metric(target, "natter_search_observed_total")? - indexed_before;
        let docs = metric(target, "natter_search_docs")? - docs_before;
        let all_in = observed >= args.search_messages as f64 || docs >= args.search_messages as f64;
        if metric(target, "natter_search_lag_messages")? == 0.0 && all_in {
            break;
        }
        if fill_end.elapsed() > CATCH_UP_DEADLINE {
            return Err(BenchError::Setup(format!(
                "the index did not catch up within {CATCH_UP_DEADLINE:?}"
            )));
        }
        std::thread::park_timeout(Duration::from_millis(20));
    }
    let catch_up_s = fill_end.elapsed().as_secs_f64();
    let total_s = started.elapsed().as_secs_f64();
    println!("index caught up {catch_up_s:.2}s after the fill; querying ...");

    let (mut asked, mut hits_total, mut errors, mut partial) = (0u64, 0u64, 0u64, 0u64);
    let q = |h: &Histogram<u64>, p| (!h.is_empty()).then(|| h.value_at_quantile(p));
    // Per run: [q1 p50, q1 p99, q3 p50, q3 p99].
    let mut runs: Vec<[Option<u64>; 4]> = Vec::new();
    for run in 0..args.search_query_runs {
        let mut q1 = histogram();
        let mut q3 = histogram();
        let mut run_hits = [0u64; 2];
        for (kind, words, hist, kind_hits) in [
            ("one-word", 1, &mut q1, 0usize),
            ("three-word", 3, &mut q3, 1usize),
        ] {
            for _ in 0..args.search_queries {
                interrupt::check()?;
                let q: Vec<&str> = (0..words)
                    .map(|_| vocabulary[rng.below(QUERY_RANKS)].as_str())
                    .collect();
                let q = q.join(" ");
                let reader = &readers[(asked / QUERIES_PER_READER) as usize % readers.len()];
                asked += 1;
                let t = Instant::now();
                let answer = target.http.search(
                    &reader.token,
                    &q,
                    &SearchOptions {
                        limit: Some(20),
                        ..SearchOptions::default()
                    },
                );
                let us = u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX).max(1);
                match answer {
                    Ok(a) => {
                        hits_total += a.hits.len() as u64;
                        if let Some(h) = run_hits.get_mut(kind_hits) {
                            *h += a.hits.len() as u64;
                        }
                        partial += u64::from(a.partial);
                        let _ = hist.record(us);
                    }
                    Err(e) => {
                        errors += 1;
                        eprintln!("{kind} query {q:?}: {e}");
                    }
                }
            }
        }
        let figures = [q(&q1, 0.5), q(&q1, 0.99), q(&q3, 0.5), q(&q3, 0.99)];
        let ms = |v: Option<u64>| v.map_or("-".to_owned(), |us| format!("{:.2}", us as f64 / 1000.0));
        println!(
            "query run {}: one-word p50 {} ms p99 {} ms ({:.1} hits/query) · three-word p50 {} ms p99 {} ms ({:.1} hits/query)",
            run + 1,
            ms(figures[0]),
            ms(figures[1]),
            run_hits[0] as f64 / args.search_queries as f64,
            ms(figures[2]),
            ms(figures[3]),
            run_hits[1] as f64 / args.search_queries as f64,
        );
        runs.push(figures);
    }
    let median = |i: usize| {
        let mut v: Vec<u64> = runs.iter().filter_map(|r| r.get(i).copied().flatten()).collect();
        v.sort_unstable();
        v.get(v.len() / 2).copied()
    };
    let docs = metric(target, "natter_search_docs")?;
    let bytes = metric(target, "natter_search_index_bytes")?;
    println!(
        "{asked} queries, {hits_total} hits, {partial} partial, {errors} errors; index {docs:.0} docs, {bytes:.0} bytes"
    );
    let mut report = Report::new("search", "tcp");
    report.sent = Some(args.search_messages);
    report.acked = Some(args.search_messages);
    report.duration_s = Some(fill_secs);
    report.msgs_per_sec = Some(args.search_messages as f64 / fill_secs);
    report.errors = Some(errors);
    report.search_index_catch_up_s = Some(catch_up_s);
    report.search_indexed_per_sec = Some(args.search_messages as f64 / total_s);
    report.search_q1_p50_us = median(0);
    report.search_q1_p99_us = median(1);
    report.search_q3_p50_us = median(2);
    report.search_q3_p99_us = median(3);
    report.search_index_docs = Some(docs as u64);
    report.search_index_bytes = Some(bytes as u64);
    report.search_index_bytes_per_message = (docs > 0.0).then(|| bytes / docs);
    report.search_partial = Some(partial);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_distinct_and_zipf_favours_low_ranks() {
        let words: std::collections::HashSet<String> = (0..VOCABULARY).map(word).collect();
        assert_eq!(words.len(), VOCABULARY);
        let zipf = Zipf::new(1000);
        let mut rng = Rng::new(1);
        let draws: Vec<usize> = (0..10_000).map(|_| zipf.sample(&mut rng)).collect();
        assert!(draws.iter().all(|r| *r < 1000));
        let top = draws.iter().filter(|r| **r == 0).count();
        let tail = draws.iter().filter(|r| **r == 999).count();
        assert!(top > 500 && tail < 50, "top {top}, tail {tail}");
    }
}
