//! Helpers shared by the commands: paths, running cargo and other programs.

use anyhow::{Context, Result, bail};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The workspace root (parent of `xtask/`).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask is in the workspace").to_path_buf()
}

/// `$CARGO_TARGET_DIR` or `<root>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => {
            let d = PathBuf::from(d);
            if d.is_absolute() { d } else { root().join(d) }
        }
        None => root().join("target"),
    }
}

/// The cargo that runs us (`$CARGO`), else `cargo`.
pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(root());
    // What `cargo run` set for xtask itself. Passed on, it makes a build
    // from here differ from one from a shell (ring's build script watches
    // CARGO_MANIFEST_DIR): each would rebuild what the other built.
    for (name, _) in std::env::vars_os() {
        let n = name.to_string_lossy();
        if n.starts_with("CARGO_PKG_")
            || matches!(
                &*n,
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_BIN_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
            )
        {
            c.env_remove(&name);
        }
    }
    c
}

/// Prints `==> what` and runs `cmd` with inherited stdio; Ok(success).
pub fn step(what: &str, cmd: &mut Command) -> Result<bool> {
    println!("==> {what}");
    let st = cmd.status().with_context(|| format!("cannot start `{what}`"))?;
    Ok(st.success())
}

/// Runs a program quietly and returns its output (None if it cannot start).
pub fn output<I, S>(program: &str, args: I) -> Option<Output>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Command::new(program).args(args).stdin(Stdio::null()).output().ok()
}

/// Stdout of a successful run, else None.
pub fn stdout_of<I, S>(program: &str, args: I) -> Option<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let out = output(program, args)?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs with inherited stdio; error if it fails.
pub fn run_inherit(cmd: &mut Command, what: &str) -> Result<()> {
    let st = cmd.status().with_context(|| format!("cannot start `{what}`"))?;
    if !st.success() {
        bail!("`{what}` failed ({st})");
    }
    Ok(())
}

/// One line to stdout, like [`say!`]; false if it could not be written
/// (stdout closed: `cargo xtask run | head` after `head` exits), so that a
/// command that only reports can stop when nobody reads it any more.
pub fn said(line: std::fmt::Arguments) -> bool {
    use std::io::Write as _;
    writeln!(std::io::stdout().lock(), "{line}").is_ok()
}

/// `println!` that survives a closed or broken stdout (`cargo xtask run |
/// head`, a `tee` killed by Ctrl-C): the line is lost, the program goes on
/// (and cleans up) instead of panicking.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}
