//! The storage engine's settings (`--cache-size`, `--journal-limit`) and the
//! journal bound that keeps a restart fast.
//!
//! # Why the journal needs a bound of ours
//!
//! On every start fjall replays its journal files whole: the batches whose
//! data is not yet in a table are inserted into memtables again, the others are
//! read and skipped (both cost time: ~4 µs per record skipped, more per record
//! inserted, measured in `docs/PERFORMANCE.md`). fjall 3.1 seals the active
//! journal only when a memtable flush finds it past 64,000,000 bytes
//! (hard-coded upstream; natter's vendored fjall makes it a setting, and
//! natterd sets [`JOURNAL_ROTATION_SIZE`]), and drops a sealed journal only once every keyspace that has
//! data in it has flushed. A keyspace is flushed when its memtable passes its
//! `max_memtable_size` (64 MiB by default) — so a quiet keyspace (`users`,
//! `cursors`, `last_seen`: a few rows now and then) pins every sealed journal
//! until fjall's `max_journaling_size` (512 MiB) forces it, and a `kill -9`
//! then leaves up to ~576 MB of journal to replay: tens of seconds.
//!
//! [`JournalGuard`] bounds it from outside, through the engine's own
//! operation: the storage writer calls [`JournalGuard::check`] between commits
//! (every [`CHECK_INTERVAL`] at most); once the journal files on disk, or
//! the memtables (the journal compresses, memtables do not), have grown by
//! `--journal-limit` since the last time, it seals the memtable of **every**
//! keyspace that holds unflushed data (`Keyspace::rotate_memtable`, which
//! queues the flush on fjall's own workers; nothing waits for it). So:
//!
//! * while the disk flushes as fast as natterd writes, at most about
//!   `--journal-limit` (twice it while a flush is still running, plus what one
//!   check interval writes) of journal and of memtables is unflushed, which
//!   bounds both the records a restart inserts again and the memory the
//!   memtables take (`natter_store_write_buffer_bytes`);
//! * no keyspace pins a sealed journal for longer than one flush, so the
//!   journal on disk stays below the rotation point ([`JOURNAL_ROTATION_SIZE`])
//!   plus three times `--journal-limit` plus one batch (the active journal is
//!   sealed by the first flush past the rotation point, and the new one grows
//!   while the sealed one's last flushes finish), instead of growing to 576 MB.
//!
//! What the guard alone cannot do is make the active journal shorter than the
//! rotation point (no fjall API seals a journal on request): even a fully
//! flushed journal costs its read at start (~20 MB/s on a busy two-core
//! machine, the records skipped one by one). That is why the rotation point is
//! lowered from upstream's 64 MB to 16 MiB.
//!
//! Nothing about durability changes: the flushes are fjall's own (a table is
//! synced before the journal that holds its data is dropped), and the writer
//! still acknowledges only after its batch's `fdatasync`.
//!
//! # Measuring the journal
//!
//! fjall pre-allocates each journal file to 64 MiB with `set_len` (a sparse
//! file on ext4, xfs, btrfs and tmpfs), so a file's length says nothing about
//! what was written; the blocks the file system allocated for it do
//! (`st_blocks`). [`journal_bytes`] sums them over the `*.jnl` files of the data
//! directory: one `readdir` and one `stat` per file, a few microseconds.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::Store;

/// Default block cache (`--cache-size`): 64 MiB. fjall caches data and index
/// blocks of its tables in it (sync and history reads, dedupe misses); it is
/// the one memory cost that is ours to choose and does not grow with the
/// store. Twice fjall's own default, because a chat server's reads are the
/// recent end of many chats.
pub const DEFAULT_CACHE_SIZE: u64 = 64 << 20;

/// Smallest accepted `--cache-size`: below 1 MiB fjall cannot hold even the
/// index blocks of a handful of tables, and every read goes to the disk.
pub const MIN_CACHE_SIZE: u64 = 1 << 20;

/// Default `--journal-limit`: 16 MiB of journal between two memtable seals.
/// Replay inserts unflushed records at ~7 MB/s of journal and skips flushed
/// ones at ~20 MB/s (release build, two cores at load 11; `docs/PERFORMANCE.md`,
/// "Restart and memory"), so the unflushed part is the one to keep small; below
/// a few MiB the seals would mostly make tiny tables for compaction to merge.
pub const DEFAULT_JOURNAL_LIMIT: u64 = 16 << 20;

/// Journal size past which fjall's next memtable flush seals the active journal
/// and starts a new one: 16 MiB (upstream fjall fixes it at 64,000,000 bytes;
/// natter's vendored fjall makes it a setting, `vendor/fjall/NATTER-PATCHES.md`).
/// Every start reads the active journal whole, the flushed records too, so this
/// bounds the part of a restart that the journal limit cannot.
pub const JOURNAL_ROTATION_SIZE: u64 = 16 << 20;

/// fjall's background workers (its default is the core count, capped at 4).
/// Worker #0 only flushes memtables, so with two workers one compaction runs at
/// a time: while it works on a deep level for seconds, nothing merges level 0,
/// the memtable seals keep adding level-0 tables, and at 30 level-0 runs fjall
/// halts every write until that compaction ends (measured: stretches of 9–20 s
/// at 0 msg/s in a 10-minute run, `docs/PERFORMANCE.md`, issue 12). Four let up
/// to three compactions (level 0 beside the deep ones) run at once, whatever
/// the core count.
pub const STORE_WORKERS: usize = 4;

/// Message values (the encoded record: ~40 bytes of header plus the text) of
/// at least this many bytes are kept out of the LSM tree, in fjall's blob
/// files, with only a pointer in the tree (key-value separation, for new
/// stores: an existing store keeps the layout it was created with). Compaction
/// then rewrites a large text never, instead of once per level; a short text
/// stays inline, because each blob read is its own cache entry and allocation
/// (measured: a 160-byte text through the blob cache cost ~2x its size in
/// cache bookkeeping). 1 KiB is fjall's own default.
pub const KV_SEPARATION_THRESHOLD: u32 = 1024;

/// Options of the keyspaces that grow with every message (`messages`,
/// `dedupe`): fjall's defaults with the index and filter blocks of every
/// table **partitioned** (4 KiB partitions under a small top-level index)
/// instead of only from level 3 on.
///
/// Why: every send does a point read of `dedupe` that misses (a new
/// `client_msg_id`), which consults a filter at every level. Unpartitioned,
/// an L1 or L2 table's filter and index are one block of hundreds of KiB to
/// a few MiB, read whole (and its checksum computed) whenever it is not in
/// the block cache; once the tables' metadata outgrew `--cache-size`, a
/// full-speed run on a store of ~30 M messages spent ~70 % of its CPU in the
/// event loops copying and hashing those blocks (`pread` + `xxh3`) at ~2,000
/// acked messages a second (`docs/PERFORMANCE.md`, issue 12). Partitioned, a
/// miss reads one 4 KiB filter partition, and the cache holds the partitions
/// that are hot. fjall fixes these options when a keyspace is created: a store
/// created before keeps its layout.
pub fn large_keyspace() -> fjall::KeyspaceCreateOptions {
    use fjall::config::PartitioningPolicy;
    fjall::KeyspaceCreateOptions::default()
        .filter_block_partitioning_policy(PartitioningPolicy::all(true))
        .index_block_partitioning_policy(PartitioningPolicy::all(true))
}

/// Smallest accepted non-zero `--journal-limit`. Every seal makes one small
/// table per written keyspace; below 1 MiB the tables would be tiny and
/// compaction would do little else.
pub const MIN_JOURNAL_LIMIT: u64 = 1 << 20;

/// How often, at most, the writer measures the journal (the same cadence as
/// the free-space check). At the ~20 MB/s of journal the writer writes at
/// full speed, at most ~2 MB go unmeasured past the limit.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// The storage engine's settings, fixed for the life of the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// fjall's block cache, in bytes (at least [`MIN_CACHE_SIZE`]).
    pub cache_size: u64,
    /// Journal growth, in bytes, after which every keyspace's memtable is
    /// sealed and flushed (0: off, fjall's own rotation only; otherwise at
    /// least [`MIN_JOURNAL_LIMIT`]).
    pub journal_limit: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            cache_size: DEFAULT_CACHE_SIZE,
            journal_limit: DEFAULT_JOURNAL_LIMIT,
        }
    }
}

/// Bytes the file system allocated for the journal files (`*.jnl`) in `dir`.
/// A file that vanishes while it is read (fjall dropped a sealed journal)
/// counts as 0.
///
/// # Errors
/// The directory cannot be read.
pub fn journal_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0u64;
    for entry in std::fs::read_dir(dir)? {
        let Ok(entry) = entry else { continue };
        let path = entry.path();
        if path.extension().is_some_and(|ext| ext == "jnl")
            && let Ok(meta) = entry.metadata()
        {
            // st_blocks is in 512-byte units whatever the file system's block size.
            total = total.saturating_add(meta.blocks().saturating_mul(512));
        }
    }
    Ok(total)
}

/// The journal bound: see the module docs. Owned by the storage writer thread
/// (it alone calls [`JournalGuard::check`]).
#[derive(Debug)]
pub struct JournalGuard {
    dir: PathBuf,
    /// `--journal-limit` in bytes (0: off).
    limit: u64,
    /// Journal bytes on disk when the memtables were last sealed (or the
    /// lowest seen since: fjall dropping a sealed journal lowers it).
    baseline: u64,
    /// Unflushed memtable bytes (all keyspaces) when the memtables were last
    /// sealed, or the lowest seen since (flushes lower it).
    buffer_baseline: u64,
    /// Times the memtables were sealed because of the limit.
    seals: u64,
}

impl JournalGuard {
    /// A guard of the journal in `dir` with a limit of `limit` bytes (0: off).
    pub fn new(dir: PathBuf, limit: u64) -> Self {
        let baseline = journal_bytes(&dir).unwrap_or(0);
        Self {
            dir,
            limit,
            baseline,
            buffer_baseline: 0,
            seals: 0,
        }
    }

    /// Measures the journal and the memtables and, once either has grown by
    /// the limit since the last seal, seals the memtable of every keyspace
    /// holding unflushed data (their flushes run on fjall's workers). Returns
    /// the journal bytes on disk.
    ///
    /// Both are measured because the journal compresses and memtables do not:
    /// repetitive texts grow a memtable many times faster than the journal,
    /// and fjall's own bound on a memtable (`max_memtable_size`, 64 MiB, fixed
    /// in each keyspace when it is created) is far above the limit. Memtable
    /// growth is read from fjall's count of unflushed bytes, which only
    /// writes raise and only flushes lower.
    ///
    /// A seal is put off while an earlier flush is still outstanding, up to
    /// twice the limit: a flush that is about to finish should not be joined
    /// by more sealed memtables (fjall halts writes at four sealed memtables
    /// per keyspace). Past twice the limit it seals anyway: when the disk
    /// flushes slower than natterd writes, that halt is the backpressure that
    /// keeps the journal bounded (acknowledgements slow down instead).
    pub fn check(&mut self, store: &Store) -> u64 {
        let bytes = match journal_bytes(&self.dir) {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::warn!(%error, dir = %self.dir.display(), "cannot measure the journal");
                return 0;
            }
        };
        self.baseline = self.baseline.min(bytes);
        let buffered = store.write_buffer_bytes();
        self.buffer_baseline = self.buffer_baseline.min(buffered);
        let grown = bytes
            .saturating_sub(self.baseline)
            .max(buffered.saturating_sub(self.buffer_baseline));
        if self.limit == 0
            || grown < self.limit
            || (store.db.outstanding_flushes() > 0 && grown < self.limit.saturating_mul(2))
        {
            return bytes;
        }
        let mut sealed = 0usize;
        for name in store.db.list_keyspace_names() {
            let keyspace = match store.db.keyspace(&name, fjall::KeyspaceCreateOptions::default) {
                Ok(keyspace) => keyspace,
                Err(error) => {
                    tracing::warn!(%error, keyspace = &*name, "cannot open keyspace to seal its memtable");
                    continue;
                }
            };
            match keyspace.rotate_memtable() {
                Ok(true) => sealed += 1,
                Ok(false) => {}
                // The journal is poisoned: the next commit fails and the
                // poison rule stops the process; nothing to do here.
                Err(error) => tracing::warn!(%error, keyspace = &*name, "cannot seal memtable"),
            }
        }
        self.baseline = bytes;
        self.buffer_baseline = buffered;
        self.seals += 1;
        tracing::debug!(
            journal_bytes = bytes,
            keyspaces = sealed,
            "journal limit reached: memtables sealed"
        );
        bytes
    }

    /// Times [`JournalGuard::check`] sealed the memtables.
    pub fn seals(&self) -> u64 {
        self.seals
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use super::*;
    use crate::core::WriteOp;
    use crate::ids::{ChatId, ClientMsgId, CoreId, Seq, UserId};
    use crate::store::StoredMessage;

    /// The point of journal rotation natterd sets (`worker_pool.rs`: a flush
    /// that finds the active journal past it seals the journal).
    const FJALL_JOURNAL_ROTATION: u64 = JOURNAL_ROTATION_SIZE;

    /// `len` bytes of printable text that lz4 cannot shrink (fjall compresses
    /// journal values of 4 KiB and more), from a xorshift generator.
    fn noise(len: usize, seed: u64) -> String {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                char::from(b'!' + (x % 90) as u8)
            })
            .collect()
    }

    fn big_message(chat: u64, seq: u64, text: &str) -> WriteOp {
        WriteOp::Message {
            origin: CoreId(0),
            msg: StoredMessage {
                chat: ChatId(chat),
                seq: Seq(seq),
                sender: UserId(1),
                server_ts_ms: 1_700_000_000_000 + seq,
                client_msg_id: ClientMsgId(seq),
                text: text.to_owned(),
                meta: Default::default(),
            },
        }
    }

    /// Writes `total` bytes of messages (in batches of `batch` bytes) into a
    /// store opened with `limit`, after one account write that leaves a quiet
    /// keyspace (`users`, `usernames`, `meta`) with unflushed data, running the
    /// guard after every batch the way the writer does. Returns the largest
    /// journal on disk seen after any batch, and the number of seals.
    fn write_past(limit: u64, total: u64, batch: u64) -> (u64, u64) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            Store::open_with(
                dir.path(),
                &Settings {
                    journal_limit: limit,
                    ..Settings::default()
                },
            )
            .unwrap(),
        );
        store.create_user("quiet", "$argon2id$stub").unwrap();
        let text = noise(64 << 10, 7);
        let per_batch = (batch / text.len() as u64).max(1);
        let mut guard = JournalGuard::new(dir.path().to_owned(), limit);
        let mut seq = 0;
        let mut largest = 0;
        let mut written = 0;
        while written < total {
            let ops: Vec<_> = (0..per_batch)
                .map(|_| {
                    seq += 1;
                    big_message(1, seq, &text)
                })
                .collect();
            store.commit_writes(&ops);
            written += per_batch * text.len() as u64;
            largest = largest.max(guard.check(&store));
        }
        // Let the last flushes finish, then see what is left on disk.
        let deadline = Instant::now() + Duration::from_secs(60);
        while store.db.outstanding_flushes() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            store.db.outstanding_flushes(),
            0,
            "fjall's flushes did not finish within 60 s: the journal left on disk would mean nothing"
        );
        largest = largest.max(guard.check(&store));
        (largest, guard.seals())
    }

    #[test]
    fn a_store_written_far_past_the_limit_keeps_its_journal_below_the_rotation_point_plus_the_limit() {
        let limit = 8 << 20;
        let batch = 1 << 20;
        let (largest, seals) = write_past(limit, 400 << 20, batch);
        assert!(seals >= 10, "the guard sealed only {seals} times over 400 MiB");
        // The active journal is sealed by the first flush that finds it past
        // the rotation point: at most twice the limit later (a seal put off
        // while a flush runs), plus the batch that crossed it. Until the last
        // keyspace with data in the sealed journal has flushed, the sealed one
        // stays on disk while the new one grows by up to another limit. Here
        // the guard runs after every batch.
        let bound = FJALL_JOURNAL_ROTATION + 3 * limit + 2 * batch;
        assert!(
            largest <= bound,
            "journal reached {largest} B on disk, bound {bound} B"
        );
    }

    /// The same write without the guard: the quiet keyspaces pin the sealed
    /// journals, which pile up far past the bound above (so the test above can
    /// fail, and the guard is what holds it).
    #[test]
    fn without_the_limit_a_quiet_keyspace_lets_the_journal_pile_up() {
        let (largest, seals) = write_past(0, 400 << 20, 1 << 20);
        assert_eq!(seals, 0);
        assert!(
            largest > FJALL_JOURNAL_ROTATION + (64 << 20),
            "journal only reached {largest} B without the limit"
        );
    }

    #[test]
    fn large_texts_live_in_blob_files_short_ones_inline_and_both_read_back_after_a_flush_and_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let long = noise(10_000, 7);
        let short = "a short text".to_owned();
        {
            let store = Store::open(dir.path()).unwrap();
            assert!(
                store.messages.is_kv_separated(),
                "a new store separates large values"
            );
            store.commit_writes(&[big_message(5, 1, &long), big_message(5, 2, &short)]);
            store.messages.rotate_memtable_and_wait().unwrap();
            assert_eq!(
                store.messages.blob_file_count(),
                1,
                "the flush wrote the large text to a blob file"
            );
            // Once the flush is done nothing is sealed or queued (the table may
            // already have moved below level 0: leveled compaction moves a
            // table that overlaps nothing down at once).
            let lsm = store.lsm_state();
            assert_eq!((lsm.sealed_memtables, lsm.flushes_pending), (0, 0), "{lsm:?}");
            let page = store.messages_page(ChatId(5), Seq(0), 10, usize::MAX).unwrap();
            let texts: Vec<&str> = page.iter().map(|m| m.text.as_str()).collect();
            assert_eq!(texts, [long.as_str(), short.as_str()]);
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            store.message(ChatId(5), Seq(1)).unwrap().map(|m| m.text),
            Some(long)
        );
        assert_eq!(
            store.message(ChatId(5), Seq(2)).unwrap().map(|m| m.text),
            Some(short)
        );
    }

    #[test]
    fn journal_bytes_counts_allocated_blocks_not_the_preallocated_length() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let empty = journal_bytes(dir.path()).unwrap();
        assert!(empty < 1 << 20, "a fresh journal counts {empty} B");
        let text = noise(1 << 20, 11);
        let ops: Vec<_> = (1..=4).map(|seq| big_message(1, seq, &text)).collect();
        store.commit_writes(&ops);
        let written = journal_bytes(dir.path()).unwrap();
        assert!(
            written >= empty + (4 << 20) && written < empty + (6 << 20),
            "4 MiB written, journal counts {written} B (from {empty} B)"
        );
    }
}
