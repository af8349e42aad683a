//! The revocation log (`revocation.persist_file`): append-only text, one
//! JSON object per line, `{"op":"revoke","key":..,"exp":..}` or
//! `{"op":"remove","key":..}`. Every append is written and `sync_data`'ed
//! before it returns, so an admin API that answers 2xx after it loses
//! nothing to a `kill -9` or a power cut.
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

use super::RevocationList;

/// A log with fewer lines than this is never compacted.
pub const COMPACT_MIN_LINES: u64 = 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum LogEvent {
    Revoke { key: String, exp: u64 },
    Remove { key: String },
}

/// What a replay found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Replay {
    /// Entries live at the replay's `now`, `(key, exp)`, in no given order.
    pub entries: Vec<(String, u64)>,
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
}

/// Replays log bytes. Also says whether the last line lacks its newline and
/// whether that unterminated line was readable.
fn replay_bytes(data: &[u8], now: u64) -> (Replay, Option<bool>) {
    let mut live: HashMap<String, u64> = HashMap::new();
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
                        let e = live.entry(key).or_insert(exp);
                        *e = (*e).max(exp);
                    }
                    LogEvent::Remove { key } => {
                        live.remove(&key);
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
        let mut line = serde_json::to_vec(event).map_err(io::Error::other)?;
        line.push(b'\n');
        let written = self
            .file
            .write_all(&line)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            // Best effort: do not leave a partial line for the next append.
            let _ = self.file.set_len(self.len);
            return Err(e);
        }
        self.len += line.len() as u64;
        self.lines += 1;
        Ok(())
    }

    pub fn append_revoke(&mut self, key: &str, exp: u64) -> io::Result<()> {
        self.append(&LogEvent::Revoke {
            key: key.to_owned(),
            exp,
        })
    }

    pub fn append_remove(&mut self, key: &str) -> io::Result<()> {
        self.append(&LogEvent::Remove {
            key: key.to_owned(),
        })
    }

    /// More than twice as many lines as `live` entries, and past the floor.
    pub fn needs_compaction(&self, live: usize) -> bool {
        self.lines > self.compact_min_lines && self.lines > 2 * live as u64
    }

    /// Rewrites the log with exactly `live` (temp file in the same
    /// directory, fsync, rename over the log, fsync of the directory).
    pub fn compact(&mut self, live: &[(String, u64)]) -> io::Result<()> {
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
                    key: key.clone(),
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
        sync_dir(&self.path)?;
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        self.len = len;
        self.lines = live.len() as u64;
        Ok(())
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

    fn sorted(mut v: Vec<(String, u64)>) -> Vec<(String, u64)> {
        v.sort();
        v
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
            vec![
                ("b".to_string(), 200),
                ("weird \"key\"\nwith newline".to_string(), 300)
            ]
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
        assert_eq!(r.entries, vec![("new".to_string(), 1000)]);
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
        assert_eq!(r.entries, vec![("a".to_string(), 100)]);
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
            vec![
                ("k1".to_string(), 1000),
                ("k2".to_string(), 1000),
                ("k3".to_string(), 1000),
                ("k4".to_string(), 1000),
                ("late".to_string(), 2000),
            ]
        );
        assert!(!dir.path().join("rev.log.compact.tmp").exists());
    }

    #[test]
    fn small_logs_are_not_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = RevocationLog::open(&dir.path().join("rev.log"), 0).unwrap();
        assert!(!log.needs_compaction(0));
    }
}
