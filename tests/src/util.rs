//! Small helpers: running commands, temporary directories, polling, JSON.

/// `eprintln!` for drop paths: a write error (stderr closed, as in `cargo
/// xtask run 2>&1 | head`) is ignored instead of panicking, since a panic
/// while a guard drops during unwinding aborts and leaves namespaces behind.
#[macro_export]
macro_rules! note {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

use anyhow::{Context, Result, bail};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Runs a command to completion; fails with its stderr when it exits non-zero.
pub fn run<I, S>(program: &str, args: I) -> Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let shown = format!("{program} {}", args.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" "));
    let out = Command::new(program).args(&args).output().with_context(|| format!("cannot run `{shown}`"))?;
    if !out.status.success() {
        bail!(
            "`{shown}` failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Like [`run`] but ignores failure (for clean-up).
pub fn run_quiet<I, S>(program: &str, args: I)
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let _ = Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

/// The prefix of every namespace, instance and directory this process makes.
pub fn prefix() -> String {
    format!("p2pt-{}", std::process::id())
}

/// A fresh unique name `p2pt-<pid>-<n>-<tag>`; short enough for netns names.
pub fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{}-{}-{tag}", prefix(), N.fetch_add(1, Ordering::Relaxed))
}

/// CLOCK_MONOTONIC in ns: the clock the controllers stamp map changes with
/// (shared by every network namespace of the host).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A directory under the system temp dir, removed on drop.
pub struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl TempDir {
    pub fn new(tag: &str) -> Result<Self> {
        let path = std::env::temp_dir().join(unique(tag));
        std::fs::create_dir_all(&path).with_context(|| format!("create {}", path.display()))?;
        Ok(TempDir { path, keep: std::env::var_os("P2P_TESTS_KEEP").is_some() })
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.path.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.keep || std::thread::panicking() {
            crate::note!("(kept {} for inspection)", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Polls `f` every 50 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Reads `path` in a JSON document as u64 (`"delivered.data"`, array
/// elements by index: `"bootstrap.0.failures"`), 0 if absent.
pub fn json_u64(v: &serde_json::Value, path: &str) -> u64 {
    let mut cur = v;
    for part in path.split('.') {
        let next = match (cur, part.parse::<usize>()) {
            (serde_json::Value::Array(a), Ok(i)) => a.get(i),
            _ => cur.get(part),
        };
        match next {
            Some(next) => cur = next,
            None => return 0,
        }
    }
    cur.as_u64().unwrap_or(0)
}

/// The last `n` lines of a text file (for failure reports).
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Xorshift64: enough randomness for picking keys and nodes, no dependency.
pub struct Rng(u64);

impl Rng {
    pub fn seeded(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    /// Seeded from the clock.
    pub fn from_clock() -> Rng {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Rng::seeded(t.as_nanos() as u64)
    }

    /// Seeded from `P2P_TEST_SEED` if set, else the clock; prints the seed
    /// so that a failing run can be repeated.
    pub fn for_test() -> Rng {
        let seed = std::env::var("P2P_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(Rng::from_clock().0);
        eprintln!("random seed {seed} (P2P_TEST_SEED={seed} repeats it)");
        Rng::seeded(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.below(v.len())]
    }
}
