//! `--watch`: reload when the config file or a TLS listener's files change,
//! as SIGHUP does. The directories holding them are watched (inotify), not
//! the files: a Kubernetes ConfigMap or Secret volume changes by swapping
//! its `..data` symlink, which a watch on the file itself never sees.
//! Events are debounced, and a reload runs only when some watched file's
//! bytes differ from those last tried, so a burst of writes (or an editor's
//! save dance) is one reload and a refused config is logged once.

use std::collections::BTreeSet;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustix::fs::inotify::{self, CreateFlags, WatchFlags};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::gate::Shared;

/// A reload waits until the directory has been quiet this long...
const QUIET: Duration = Duration::from_millis(300);
/// ...but never longer than this after the first event of a burst.
const MAX_WAIT: Duration = Duration::from_secs(2);

/// When a burst of events is due: `QUIET` after its last event, or
/// `MAX_WAIT` after its first, whichever comes first. Time is passed in.
#[derive(Debug, Default)]
pub struct Debounce {
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Debounce {
    pub fn event(&mut self, now: Instant) {
        self.first.get_or_insert(now);
        self.last = Some(now);
    }

    /// The deadline of the pending burst, if any.
    pub fn due(&self) -> Option<Instant> {
        let (first, last) = (self.first?, self.last?);
        Some((last + QUIET).min(first + MAX_WAIT))
    }

    pub fn clear(&mut self) {
        *self = Debounce::default();
    }
}

/// The bytes of every watched file (`None`: unreadable now).
fn snapshot(files: &[PathBuf]) -> Vec<Option<Vec<u8>>> {
    files.iter().map(|f| std::fs::read(f).ok()).collect()
}

fn watch_dirs(fd: &OwnedFd, files: &[PathBuf]) -> std::io::Result<()> {
    let dirs: BTreeSet<&Path> = files
        .iter()
        .map(|f| match f.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        })
        .collect();
    // Everything that can replace a file's bytes or what its name points to.
    let mask = WatchFlags::CREATE
        | WatchFlags::MOVED_TO
        | WatchFlags::MOVED_FROM
        | WatchFlags::DELETE
        | WatchFlags::CLOSE_WRITE
        | WatchFlags::MODIFY
        | WatchFlags::ATTRIB;
    for d in dirs {
        inotify::add_watch(fd, d, mask)
            .map_err(|e| std::io::Error::other(format!("cannot watch {}: {e}", d.display())))?;
    }
    Ok(())
}

/// Blocks reading inotify events on a thread of its own (no `unsafe`
/// fd registration with the runtime); each batch read is one nudge.
fn read_events(fd: OwnedFd, nudge: mpsc::Sender<()>) {
    let mut buf = [MaybeUninit::<u8>::uninit(); 4096];
    let mut reader = inotify::Reader::new(fd.as_fd(), &mut buf);
    loop {
        match reader.next() {
            Ok(_) => {
                // Full: a nudge is already pending, which is all that matters.
                if let Err(mpsc::error::TrySendError::Closed(_)) = nudge.try_send(()) {
                    return;
                }
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                tracing::error!(error = %e, "config watch failed; reload with SIGHUP");
                return;
            }
        }
    }
}

/// Sets up the watch; the returned future reloads until the process ends.
pub fn start(
    shared: Arc<Shared>,
    files: Vec<PathBuf>,
) -> std::io::Result<impl std::future::Future<Output = ()>> {
    let fd = inotify::init(CreateFlags::CLOEXEC)?;
    watch_dirs(&fd, &files)?;
    // Taken now, so a change made after start but before the first event counts.
    let seen = snapshot(&files);
    let (tx, rx) = mpsc::channel(1);
    std::thread::Builder::new()
        .name("config-watch".into())
        .spawn(move || read_events(fd, tx))?;
    Ok(run(shared, files, rx, seen))
}

async fn run(
    shared: Arc<Shared>,
    files: Vec<PathBuf>,
    mut events: mpsc::Receiver<()>,
    mut seen: Vec<Option<Vec<u8>>>,
) {
    let mut burst = Debounce::default();
    loop {
        let deadline = burst.due();
        tokio::select! {
            event = events.recv() => {
                if event.is_none() {
                    return; // the reader thread logged why
                }
                burst.event(Instant::now());
            }
            _ = sleep_until(deadline), if deadline.is_some() => {
                burst.clear();
                let now = snapshot(&files);
                // A file mid-swap can be missing for an instant; the next
                // event (its creation) brings it back.
                if now == seen || now.iter().any(Option::is_none) {
                    continue;
                }
                seen = now;
                tracing::info!("config or certificate files changed; reloading");
                crate::gate::log_reload(&shared.reload().await);
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(d) = deadline {
        tokio::time::sleep_until(d).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_due_when_quiet_or_at_the_cap() {
        let t0 = Instant::now();
        let mut d = Debounce::default();
        assert_eq!(d.due(), None);
        d.event(t0);
        assert_eq!(d.due(), Some(t0 + QUIET));
        // Each event pushes the deadline out...
        d.event(t0 + Duration::from_millis(200));
        assert_eq!(d.due(), Some(t0 + Duration::from_millis(200) + QUIET));
        // ...up to MAX_WAIT after the first, so steady churn still reloads.
        d.event(t0 + Duration::from_millis(1900));
        assert_eq!(d.due(), Some(t0 + MAX_WAIT));
        d.clear();
        assert_eq!(d.due(), None);
    }
}
