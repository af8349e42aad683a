//! Helpers shared by the micro-benches (`benches/benches/*.rs`) and the
//! memory tools (`src/bin/*.rs`): process memory from `/proc/self/status`,
//! the test keys, the clock and a tiny argument reader.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

/// A `kB` field of `/proc/self/status` (`VmRSS`, `VmHWM`, ...) in bytes;
/// `None` off Linux.
pub fn proc_status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        let kb: u64 = rest.trim().strip_suffix("kB")?.trim().parse().ok()?;
        Some(kb * 1024)
    })
}

/// Resident set size in bytes (0 when unknown).
pub fn rss() -> u64 {
    proc_status_bytes("VmRSS").unwrap_or(0)
}

/// Bytes as MiB with one decimal.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Hands freed heap pages back to the kernel. glibc keeps freed memory in
/// its arenas, so RSS after a mass free says little about what the program
/// still holds until this runs. Returns false where it is not available.
pub fn trim_heap() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only walks glibc's own arenas; no pointers of
        // ours are involved.
        unsafe { libc::malloc_trim(0) };
        true
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `filters/tests/fixtures/`: throw-away test keys, reused so the Rust
/// benches and `pyjwt_bench.py` verify with the very same keys.
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../filters/tests/fixtures")
}

pub fn fixture(name: &str) -> Vec<u8> {
    let path = fixtures_dir().join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The HS256 secret of the benches (also in `pyjwt_bench.py`).
pub const HS256_SECRET: &[u8] = b"asgi-gate-bench-secret-0123456789abcdef";

/// exp of the bench tokens: 2100-01-01T00:00:00Z.
pub const FAR_EXP: u64 = 4_102_444_800;

/// A 36-character UUID-v4-looking string, as a `jti` would be.
pub fn uuid_like(rng: &mut fastrand::Rng) -> String {
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        rng.u32(..),
        rng.u16(..),
        rng.u16(..0x1000),
        rng.u16(0x8000..0xc000),
        rng.u64(..1 << 48)
    )
}

/// `--name VALUE` options over `std::env::args`; panics with `usage` on a
/// bad value, exits on `--help`.
pub struct Args {
    args: Vec<String>,
    usage: &'static str,
}

impl Args {
    pub fn from_env(usage: &'static str) -> Self {
        let args: Vec<String> = std::env::args().skip(1).collect();
        if args.iter().any(|a| a == "--help" || a == "-h") {
            println!("{usage}");
            std::process::exit(0);
        }
        Args { args, usage }
    }

    /// The value after `--name`, parsed.
    pub fn get<T: std::str::FromStr>(&self, name: &str) -> Option<T> {
        let flag = format!("--{name}");
        let i = self.args.iter().position(|a| *a == flag)?;
        let raw = self.args.get(i + 1).unwrap_or_else(|| self.fail(name));
        Some(
            raw.replace('_', "")
                .parse()
                .unwrap_or_else(|_| self.fail(name)),
        )
    }

    fn fail(&self, name: &str) -> ! {
        eprintln!("bad or missing value for --{name}\n{}", self.usage);
        std::process::exit(2);
    }
}
