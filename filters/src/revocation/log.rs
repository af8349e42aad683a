//! The revocation log (`revocation.persist_file`): append-only text, one
//! JSON object per line, `{"op":"revoke","key":..,"exp":..}` or
//! `{"op":"remove","key":..}`. Every append is written and `sync_data`'ed
//! before it returns, so an admin API that answers 2xx after it loses
//! nothing to a `kill -9` or a power cut.
//!
//! A key is written in one of two forms: `"key"`, the key string itself
//! (every append, and every log written before the list stored hashes), or
//! `"h"`, its [`KeyHash`] as 32 hex digits (what compaction writes, since the
//! list keeps only hashes). Replay hashes `"key"` values, so both forms, and
//! files mixing them, load alike; a line with both fields or neither, or a
//! malformed `"h"`, is unreadable.
//!
//! At start the log is replayed: entries already expired are dropped, a torn
//! last line (an append cut short, which was never acknowledged) is reported
//! and cut off, an unreadable line elsewhere is reported and skipped. When
//! the log holds more than twice as many lines as there are live entries it
//! is rewritten with the live entries only (temp file, fsync, rename, fsync
//! of the directory: a crash leaves either the old or the new file).
//!
//! The caller serialises appends and compaction (one `Mutex<RevocationLog>`)
//! and, for a revocation, appends first and updates the list second, under
//! that lock, so a compaction's snapshot never misses an acknowledged entry.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{KeyHash, RevocationList};

/// A log with fewer lines than this is never compacted.
pub const COMPACT_MIN_LINES: u64 = 1024;

/// A key as a log line carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogKey {
    /// The key string, `"key"`: appends, and logs from before hashing.
    Raw(String),
    /// The stored form, `"h"`: compaction output.
    Hashed(KeyHash),
}

impl LogKey {
    /// The form the list stores.
    pub fn hash(&self) -> KeyHash {
        match self {
            LogKey::Raw(key) => KeyHash::of(key),
            LogKey::Hashed(h) => *h,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "WireEvent", into = "WireEvent")]
pub enum LogEvent {
    Revoke { key: LogKey, exp: u64 },
    Remove { key: LogKey },
}

/// A log line as JSON: exactly one of `key` and `h`.
#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
enum WireEvent {
    Revoke {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        h: Option<String>,
        exp: u64,
    },
    Remove {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        h: Option<String>,
    },
}

fn wire_key(key: LogKey) -> (Option<String>, Option<String>) {
    match key {
        LogKey::Raw(key) => (Some(key), None),
        LogKey::Hashed(h) => (None, Some(h.to_string())),
    }
}

fn log_key(key: Option<String>, h: Option<String>) -> Result<LogKey, String> {
    match (key, h) {
        (Some(key), None) => Ok(LogKey::Raw(key)),
        (None, Some(h)) => KeyHash::from_hex(&h)
            .map(LogKey::Hashed)
            .ok_or_else(|| "`h` must be 32 hex digits".to_string()),
        _ => Err("exactly one of `key` and `h` expected".to_string()),
    }
}

impl From<LogEvent> for WireEvent {
    fn from(e: LogEvent) -> WireEvent {
        match e {
            LogEvent::Revoke { key, exp } => {
                let (key, h) = wire_key(key);
                WireEvent::Revoke { key, h, exp }
            }
            LogEvent::Remove { key } => {
                let (key, h) = wire_key(key);
                WireEvent::Remove { key, h }
            }
        }
    }
}

impl TryFrom<WireEvent> for LogEvent {
    type Error = String;

    fn try_from(w: WireEvent) -> Result<LogEvent, String> {
        Ok(match w {
            WireEvent::Revoke { key, h, exp } => LogEvent::Revoke {
                key: log_key(key, h)?,
                exp,
            },
            WireEvent::Remove { key, h } => LogEvent::Remove {
                key: log_key(key, h)?,
            },
        })
    }
}

/// What a replay found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Replay {
    /// Entries live at the replay's `now`, `(key, exp)`, in no given order;
    /// load them with [`RevocationList::revoke_hash`].
    pub entries: Vec<(KeyHash, u64)>,
    /// One line per line skipped; never fatal. Names line numbers only.
    pub warnings: Vec<String>,
    /// Lines in the file, the unreadable ones included.
    pub lines: u64,
}

#[derive(Debug)]
pub struct RevocationLog {
    path: PathBuf,
    file: File,
    /// Bytes of the file known to be whole lines.
    len: u64,
    lines: u64,
    compact_min_lines: u64,
    /// `file` may be the unlinked pre-compaction file (reopening the new one
    /// failed): the next append reopens first.
    stale: bool,
    /// The directory fsync; replaceable so tests can make it fail.
    sync_dir: fn(&Path) -> io::Result<()>,
}

/// Replays log bytes. Also says whether the last line lacks its newline and
/// whether that unterminated line was readable.
fn replay_bytes(data: &[u8], now: u64) -> (Replay, Option<bool>) {
    let mut live: HashMap<KeyHash, u64> = HashMap::new();
    let mut warnings = Vec::new();
    let mut lines = 0u64;
    let mut unterminated = None;
    let ends_with_newline = data.last().is_none_or(|b| *b == b'\n');
    let mut segments: Vec<&[u8]> = data.split(|b| *b == b'\n').collect();
    if ends_with_newline {
        // split leaves an empty segment after the final newline.
        segments.pop();
    }
    let count = segments.len();
    for (i, line) in segments.into_iter().enumerate() {
        lines += 1;
        let last_torn = !ends_with_newline && i + 1 == count;
        if line.iter().all(u8::is_ascii_whitespace) {
            if last_torn {
                unterminated = Some(false);
            }
            continue;
        }
        match serde_json::from_slice::<LogEvent>(line) {
            Ok(event) => {
                if last_torn {
                    unterminated = Some(true);
                }
                match event {
                    LogEvent::Revoke { key, exp } => {
                        let e = live.entry(key.hash()).or_insert(exp);
                        *e = (*e).max(exp);
                    }
                    LogEvent::Remove { key } => {
                        live.remove(&key.hash());
                    }
                }
            }
            Err(_) if last_torn => {
                unterminated = Some(false);
                warnings.push(format!(
                    "line {}: torn last line (an unfinished write) ignored",
                    i + 1
                ));
            }
            Err(_) => warnings.push(format!("line {}: unreadable entry skipped", i + 1)),
        }
    }
    let entries = live.into_iter().filter(|(_, exp)| now < *exp).collect();
    (
        Replay {
            entries,
            warnings,
            lines,
        },
        unterminated,
    )
}

fn read_or_empty(path: &Path) -> io::Result<Vec<u8>> {
    match fs::read(path) {
        Ok(data) => Ok(data),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

fn sync_dir(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

impl RevocationLog {
    /// Replays `path` without changing it (a missing file is empty).
    pub fn replay(path: &Path, now: u64) -> io::Result<Replay> {
        Ok(replay_bytes(&read_or_empty(path)?, now).0)
    }

    /// Opens the log for appending (creating it), replays it, and repairs
    /// its end so the next append starts on a line of its own: a torn last
    /// line is cut off, a readable one missing only its newline gets it.
    pub fn open(path: &Path, now: u64) -> io::Result<(RevocationLog, Replay)> {
        let data = read_or_empty(path)?;
        let (replay, unterminated) = replay_bytes(&data, now);
        let mut file = OpenOptions::new().create(true).append(true).open(path)?;
        let mut len = data.len() as u64;
        match unterminated {
            None => {}
            Some(true) => {
                file.write_all(b"\n")?;
                file.sync_data()?;
                len += 1;
            }
            Some(false) => {
                let keep = data
                    .iter()
                    .rposition(|b| *b == b'\n')
                    .map_or(0, |p| p as u64 + 1);
                file.set_len(keep)?;
                file.sync_data()?;
                len = keep;
            }
        }
        sync_dir(path)?;
        let lines = if unterminated == Some(false) {
            replay.lines - 1
        } else {
            replay.lines
        };
        Ok((
            RevocationLog {
                path: path.to_path_buf(),
                file,
                len,
                lines,
                compact_min_lines: COMPACT_MIN_LINES,
                stale: false,
                sync_dir,
            },
            replay,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// Lowers or raises the compaction floor (tests, tuning).
    pub fn set_compact_min_lines(&mut self, n: u64) {
        self.compact_min_lines = n;
    }

    /// Appends one event and syncs it to disk before returning. On error the
    /// file is cut back to its last whole line.
    pub fn append(&mut self, event: &LogEvent) -> io::Result<()> {
        self.append_all(std::slice::from_ref(event))
    }

    /// Appends events with one sync for all (entries heard from other
    /// gates, which may come by the thousand); all or none are kept.
    pub fn append_all(&mut self, events: &[LogEvent]) -> io::Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        if self.stale {
            self.file = OpenOptions::new().append(true).open(&self.path)?;
            self.stale = false;
        }
        let mut buf = Vec::new();
        for event in events {
            serde_json::to_writer(&mut buf, event).map_err(io::Error::other)?;
            buf.push(b'\n');
        }
        let written = self
            .file
            .write_all(&buf)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            // Best effort: do not leave a partial line for the next append.
            let _ = self.file.set_len(self.len);
            return Err(e);
        }
        self.len += buf.len() as u64;
        self.lines += events.len() as u64;
        Ok(())
    }

    pub fn append_revoke(&mut self, key: &str, exp: u64) -> io::Result<()> {
        self.append(&LogEvent::Revoke {
            key: LogKey::Raw(key.to_owned()),
            exp,
        })
    }

    pub fn append_remove(&mut self, key: &str) -> io::Result<()> {
        self.append(&LogEvent::Remove {
            key: LogKey::Raw(key.to_owned()),
        })
    }

    /// More than twice as many lines as `live` entries, and past the floor.
    pub fn needs_compaction(&self, live: usize) -> bool {
        self.lines > self.compact_min_lines && self.lines > 2 * live as u64
    }

    /// Rewrites the log with exactly `live`, keys in their `"h"` form (temp
    /// file in the same directory, fsync, rename over the log, fsync of the
    /// directory).
    pub fn compact(&mut self, live: &[(KeyHash, u64)]) -> io::Result<()> {
        let mut tmp_name = self.path.as_os_str().to_owned();
        tmp_name.push(".compact.tmp");
        let tmp = PathBuf::from(tmp_name);
        let mut len = 0u64;
        {
            let f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            let mut w = BufWriter::new(f);
            for (key, exp) in live {
                let mut line = serde_json::to_vec(&LogEvent::Revoke {
                    key: LogKey::Hashed(*key),
                    exp: *exp,
                })
                .map_err(io::Error::other)?;
                line.push(b'\n');
                w.write_all(&line)?;
                len += line.len() as u64;
            }
            let f = w.into_inner().map_err(|e| e.into_error())?;
            f.sync_all()?;
        }
        fs::rename(&tmp, &self.path)?;
        // From here the log is the new file whatever the directory fsync
        // says: appends must go to it, not to the unlinked old one.
        self.len = len;
        self.lines = live.len() as u64;
        match OpenOptions::new().append(true).open(&self.path) {
            Ok(f) => self.file = f,
            Err(e) => {
                self.stale = true;
                return Err(e);
            }
        }
        (self.sync_dir)(&self.path)
    }

    /// Compacts from `list` when [`RevocationLog::needs_compaction`]; true
    /// if it did. Call it under the same lock as the appends.
    pub fn compact_if_needed(&mut self, list: &RevocationList, now: u64) -> io::Result<bool> {
        if !self.needs_compaction(list.len()) {
            return Ok(false);
        }
        let live = list.snapshot(now);
        if !self.needs_compaction(live.len()) {
            return Ok(false);
        }
        self.compact(&live)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(mut v: Vec<(KeyHash, u64)>) -> Vec<(KeyHash, u64)> {
        v.sort();
        v
    }

    /// `(key, exp)` pairs in stored form, sorted like [`sorted`].
    fn hashed(v: &[(&str, u64)]) -> Vec<(KeyHash, u64)> {
        sorted(v.iter().map(|(k, e)| (KeyHash::of(k), *e)).collect())
    }

    #[test]
    fn replay_after_appends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rev.log");
        let (mut log, replay) = RevocationLog::open(&path, 0).unwrap();
        assert_eq!(replay, Replay::default());
        log.append_revoke("a", 100).unwrap();
        log.append_revoke("b", 200).unwrap();
        log.append_revoke("weird \"key\"\nwith newline", 300)
            .unwrap();
        log.append_remove("a").unwrap();
        log.append_revoke("b", 150).unwrap();
        drop(log);
        let r = RevocationLog::replay(&path, 10).unwrap();
        assert_eq!(r.lines, 5);
        assert!(r.warnings.is_empty());
        assert_eq!(
            sorted(r.entries),
            hashed(&[("b", 200), ("weird \"key\"\nwith newline", 300)])
        );
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("{\"op\":\"revoke\",\"key\":\"a\",\"exp\":100}\n"));
        assert!(text.contains("{\"op\":\"remove\",\"key\":\"a\"}\n"));
    }

    #[test]
    fn expired_entries_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rev.log");
        let (mut log, _) = RevocationLog::open(&path, 0).unwrap();
        log.append_revoke("old", 100).unwrap();
        log.append_revoke("edge", 500).unwrap();
        log.append_revoke("new", 1000).unwrap();
        let r = RevocationLog::replay(&path, 500).unwrap();
        assert_eq!(r.entries, hashed(&[("new", 1000)]));
    }

    #[test]
    fn torn_last_line_reported_and_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rev.log");
        fs::write(
            &path,
            "{\"op\":\"revoke\",\"key\":\"a\",\"exp\":100}\n{\"op\":\"revoke\",\"ke",
        )
        .unwrap();
        let r = RevocationLog::replay(&path, 0).unwrap();
        assert_eq!(r.entries, hashed(&[("a", 100)]));
        assert_eq!(r.warnings.len(), 1);
        assert!(r.warnings[0].contains("line 2") && r.warnings[0].contains("torn"));
        let (mut log, r2) = RevocationLog::open(&path, 0).unwrap();
        assert_eq!(r2.warnings.len(), 1);
        assert_eq!(log.lines(), 1);
        log.append_revoke("b", 100).unwrap();
        drop(log);
        let r = RevocationLog::replay(&path, 0).unwrap();
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        assert_eq!(r.lines, 2);
        assert_eq!(r.entries.len(), 2);
    }

    #[test]
    fn readable_last_line_without_newline_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rev.log");
        fs::write(&path, "{\"op\":\"revoke\",\"key\":\"a\",\"exp\":100}").unwrap();
        let (mut log, r) = RevocationLog::open(&path, 0).unwrap();
        assert!(r.warnings.is_empty());
        log.append_revoke("b", 100).unwrap();
        let r = RevocationLog::replay(&path, 0).unwrap();
        assert!(r.warnings.is_empty());
        assert_eq!(r.entries.len(), 2);
    }

    #[test]
    fn garbled_middle_line_is_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rev.log");
        fs::write(
            &path,
            b"{\"op\":\"revoke\",\"key\":\"a\",\"exp\":100}\n\xff\xfe garbage\n{\"op\":\"explode\"}\n\n{\"op\":\"revoke\",\"key\":\"b\",\"exp\":100}\n",
        )
        .unwrap();
        let r = RevocationLog::replay(&path, 0).unwrap();
        assert_eq!(r.warnings.len(), 2);
        assert!(r.warnings[0].starts_with("line 2:"));
        assert!(r.warnings[1].starts_with("line 3:"));
        assert_eq!(r.entries.len(), 2);
        assert_eq!(r.lines, 5);
    }

    #[test]
    fn missing_file_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let r = RevocationLog::replay(&dir.path().join("none.log"), 0).unwrap();
        assert_eq!(r, Replay::default());
    }

    #[test]
    fn compaction_shrinks_and_keeps_live_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rev.log");
        let (mut log, _) = RevocationLog::open(&path, 0).unwrap();
        log.set_compact_min_lines(10);
        let list = RevocationList::new();
        for i in 0..40u64 {
            let key = format!("k{i}");
            let exp = if i < 5 { 1000 } else { 50 };
            log.append_revoke(&key, exp).unwrap();
            list.revoke(&key, exp, 0);
        }
        log.append_remove("k0").unwrap();
        list.remove("k0");
        let before = fs::metadata(&path).unwrap().len();
        assert!(
            !log.compact_if_needed(&list, 10).unwrap(),
            "39 live of 41 lines"
        );
        list.sweep(60);
        assert!(log.compact_if_needed(&list, 60).unwrap());
        assert_eq!(log.lines(), 4);
        assert!(fs::metadata(&path).unwrap().len() < before / 5);
        // Appends go on after compaction, and a replay sees everything.
        log.append_revoke("late", 2000).unwrap();
        drop(log);
        let r = RevocationLog::replay(&path, 60).unwrap();
        assert!(r.warnings.is_empty());
        assert_eq!(
            sorted(r.entries),
            hashed(&[
                ("k1", 1000),
                ("k2", 1000),
                ("k3", 1000),
                ("k4", 1000),
                ("late", 2000),
            ])
        );
        assert!(!dir.path().join("rev.log.compact.tmp").exists());
        // Compacted lines carry the hash; the append after them the key.
        let text = fs::read_to_string(&path).unwrap();
        let k1 = format!(
            "{{\"op\":\"revoke\",\"h\":\"{}\",\"exp\":1000}}\n",
            KeyHash::of("k1")
        );
        assert!(text.contains(&k1), "{text}");
        assert!(!text.contains("\"key\":\"k1\""));
        assert!(text.ends_with("{\"op\":\"revoke\",\"key\":\"late\",\"exp\":2000}\n"));
    }

    #[test]
    fn appends_after_a_compaction_whose_directory_fsync_failed_reach_the_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rev.log");
        let (mut log, _) = RevocationLog::open(&path, 0).unwrap();
        log.set_compact_min_lines(2);
        for k in ["a", "b", "c"] {
            log.append_revoke(k, 100).unwrap();
        }
        log.sync_dir = |_| Err(io::Error::other("injected directory fsync failure"));
        assert!(log.compact(&[(KeyHash::of("a"), 100)]).is_err());
        // The caller got an error for the compaction, not for this append:
        // acknowledged, so it must be in the file that replays.
        log.append_revoke("after", 200).unwrap();
        drop(log);
        let r = RevocationLog::replay(&path, 0).unwrap();
        assert_eq!(sorted(r.entries), hashed(&[("a", 100), ("after", 200)]));
    }

    #[test]
    fn append_all_writes_hashed_events_in_one_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rev.log");
        let (mut log, _) = RevocationLog::open(&path, 0).unwrap();
        log.append_all(&[
            LogEvent::Revoke {
                key: LogKey::Hashed(KeyHash::of("x")),
                exp: 100,
            },
            LogEvent::Revoke {
                key: LogKey::Hashed(KeyHash::of("y")),
                exp: 100,
            },
            LogEvent::Remove {
                key: LogKey::Hashed(KeyHash::of("x")),
            },
        ])
        .unwrap();
        assert_eq!(log.lines(), 3);
        drop(log);
        let r = RevocationLog::replay(&path, 0).unwrap();
        assert_eq!(r.entries, hashed(&[("y", 100)]));
    }

    #[test]
    fn raw_and_hashed_lines_replay_alike() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rev.log");
        let h = |k: &str| KeyHash::of(k).to_string();
        fs::write(
            &path,
            format!(
                concat!(
                    "{{\"op\":\"revoke\",\"key\":\"old-a\",\"exp\":100}}\n",
                    "{{\"op\":\"revoke\",\"h\":\"{}\",\"exp\":100}}\n",
                    "{{\"op\":\"revoke\",\"h\":\"{}\",\"exp\":200}}\n",
                    "{{\"op\":\"revoke\",\"key\":\"c\",\"exp\":100}}\n",
                    "{{\"op\":\"remove\",\"h\":\"{}\"}}\n",
                    "{{\"op\":\"remove\",\"key\":\"old-a\"}}\n",
                ),
                h("b"),
                h("old-a"),
                h("c"),
            ),
        )
        .unwrap();
        let r = RevocationLog::replay(&path, 0).unwrap();
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        // old-a: revoked raw, extended hashed, removed raw; c: raw then
        // removed hashed.
        assert_eq!(sorted(r.entries), hashed(&[("b", 100)]));
    }

    #[test]
    fn bad_key_fields_are_unreadable_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rev.log");
        let good = KeyHash::of("x").to_string();
        fs::write(
            &path,
            format!(
                concat!(
                    "{{\"op\":\"revoke\",\"key\":\"x\",\"h\":\"{}\",\"exp\":100}}\n",
                    "{{\"op\":\"revoke\",\"exp\":100}}\n",
                    "{{\"op\":\"revoke\",\"h\":\"abc\",\"exp\":100}}\n",
                    "{{\"op\":\"remove\"}}\n",
                    "{{\"op\":\"revoke\",\"h\":\"{}\",\"exp\":100}}\n",
                ),
                good, good
            ),
        )
        .unwrap();
        let r = RevocationLog::replay(&path, 0).unwrap();
        assert_eq!(r.warnings.len(), 4, "{:?}", r.warnings);
        assert_eq!(r.entries, hashed(&[("x", 100)]));
    }

    #[test]
    fn small_logs_are_not_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = RevocationLog::open(&dir.path().join("rev.log"), 0).unwrap();
        assert!(!log.needs_compaction(0));
    }
}
