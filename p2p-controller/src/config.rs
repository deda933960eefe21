//! `run --config FILE` and `config check|example` (issue 11). The file is
//! TOML; its keys are `run`'s long options as written on the command line
//! (`store-quota = "1GiB"`, `bootstrap = ["/ip4/…", …]`, `no-mdns = true`).
//! Its options are put into the command line before clap reads it, except
//! those also given there: the command line wins, a repeatable option's
//! list as a whole. So the file accepts exactly what `run` accepts, values
//! are checked by the same code, and an error about an option that came
//! from the file names the file and line.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::CommandFactory;

use crate::cli::Cli;
use crate::error::{Error, Result};

/// A `run` option: its long name, whether it takes a value, whether it
/// may be repeated, its help and its default.
pub struct RunOption {
    pub long: String,
    /// The values it accepts, when it names them.
    pub choices: Vec<String>,
    pub takes_value: bool,
    pub repeatable: bool,
    pub help: String,
    pub default: Option<String>,
}

/// `run`'s options, in `--help` order, but `--config` and `--help`.
pub fn run_options() -> Vec<RunOption> {
    let cmd = Cli::command();
    let Some(run) = cmd.find_subcommand("run") else { return Vec::new() };
    run.get_arguments()
        .filter(|a| !a.is_global_set())
        .filter_map(|a| {
            let long = a.get_long()?.to_string();
            if long == "config" || long == "help" {
                return None;
            }
            let action = a.get_action();
            Some(RunOption {
                choices: a
                    .get_possible_values()
                    .iter()
                    .filter(|v| !v.is_hide_set())
                    .map(|v| v.get_name().to_string())
                    .collect(),
                takes_value: action.takes_values(),
                repeatable: matches!(action, clap::ArgAction::Append),
                help: a.get_long_help().or(a.get_help()).map(|h| h.to_string()).unwrap_or_default(),
                default: a.get_default_values().first().map(|v| v.to_string_lossy().into_owned()),
                long,
            })
        })
        .collect()
}

/// A configuration file, read and turned into `run` arguments.
#[derive(Debug, Default)]
pub struct Config {
    pub file: PathBuf,
    /// Option → the line its key is on.
    lines: BTreeMap<String, usize>,
    /// Option → its arguments (`--key value`…), in the file's order.
    args: Vec<(String, Vec<String>)>,
}

impl Config {
    /// Reads and checks `file`: TOML, known keys, value types.
    pub fn load(file: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(file)
            .map_err(|e| Error::File { path: file.into(), reason: format!("cannot read: {e}") })?;
        Config::parse(file, &text)
    }

    pub fn parse(file: &Path, text: &str) -> Result<Config> {
        let bad = |line: usize, why: String| Error::File { path: file.into(), reason: format!("line {line}: {why}") };
        let table: BTreeMap<String, toml::Spanned<toml::Value>> = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start)).unwrap_or(1);
            bad(line, e.message().trim().to_string())
        })?;
        let options = run_options();
        let mut cfg = Config { file: file.into(), ..Config::default() };
        let mut entries: Vec<(usize, String, toml::Value)> =
            table.into_iter().map(|(k, v)| (line_of(text, v.span().start), k, v.into_inner())).collect();
        entries.sort_by_key(|(line, _, _)| *line);
        for (line, key, value) in entries {
            let Some(opt) = options.iter().find(|o| o.long == key) else {
                let hint = options
                    .iter()
                    .find(|o| o.long.replace('-', "_") == key || o.long == key.replace('_', "-"))
                    .map(|o| format!(" (did you mean {}?)", o.long))
                    .unwrap_or_default();
                return Err(bad(
                    line,
                    format!("unknown key {key:?}{hint}: keys are `run`'s options without the dashes, see `run --help`"),
                ));
            };
            let flag = format!("--{key}");
            let scalar = |v: &toml::Value| -> Result<String> {
                match v {
                    toml::Value::String(s) => Ok(s.clone()),
                    toml::Value::Integer(i) => Ok(i.to_string()),
                    toml::Value::Float(f) => Ok(f.to_string()),
                    toml::Value::Boolean(b) => Ok(b.to_string()),
                    other => Err(bad(line, format!("{key}: a {} is not a value of --{key}", other.type_str()))),
                }
            };
            let args = match (&value, opt.takes_value) {
                (toml::Value::Boolean(true), false) => vec![flag],
                (toml::Value::Boolean(false), false) => Vec::new(),
                (_, false) => return Err(bad(line, format!("{key} is a switch: true or false"))),
                (toml::Value::Array(items), true) if opt.repeatable => {
                    let mut a = Vec::new();
                    for v in items {
                        a.push(flag.clone());
                        a.push(scalar(v)?);
                    }
                    a
                }
                (toml::Value::Array(_), true) => return Err(bad(line, format!("{key} takes one value, not a list"))),
                (v, true) => vec![flag, scalar(v)?],
            };
            cfg.lines.insert(key.clone(), line);
            cfg.args.push((key, args));
        }
        Ok(cfg)
    }

    /// How many options the file sets.
    pub fn len(&self) -> usize {
        self.args.len()
    }

    pub fn is_empty(&self) -> bool {
        self.args.is_empty()
    }

    /// The file's arguments but those of `given` options.
    fn args_except(&self, given: &[String]) -> Vec<String> {
        self.args.iter().filter(|(k, _)| !given.contains(k)).flat_map(|(_, a)| a.iter().cloned()).collect()
    }

    /// `message` with the file and line in front if it is about an option
    /// the file set (`--key …` at its start, or clap's `'--key <V>'`).
    pub fn locate(&self, message: &str) -> Option<String> {
        let m = message.trim_start_matches("error: ").trim_start_matches("invalid value ");
        let key = self.lines.iter().find(|(k, _)| {
            let flag = format!("--{k}");
            m.starts_with(&format!("{flag} "))
                || m.starts_with(&format!("{flag}:"))
                || message.contains(&format!("'{flag} "))
                || message.contains(&format!("'{flag}'"))
        })?;
        Some(format!("{}: line {}: {} = …: {}", self.file.display(), key.1, key.0, message.trim()))
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Where `run` is in `argv` (after global options), if it is the command.
fn run_position(argv: &[OsString]) -> Option<usize> {
    let mut i = 1;
    while i < argv.len() {
        let a = argv[i].to_str()?;
        if a == "--instance" {
            i += 2;
            continue;
        }
        if a.starts_with("--instance=") {
            i += 1;
            continue;
        }
        return (a == "run").then_some(i);
    }
    None
}

/// `argv` with `run --config FILE`'s options put in (see the module doc),
/// and the file read; unchanged without `run --config`.
pub fn merge_argv(argv: Vec<OsString>) -> Result<(Vec<OsString>, Option<Config>)> {
    let Some(run) = run_position(&argv) else { return Ok((argv, None)) };
    let rest: Vec<String> = argv[run + 1..].iter().map(|a| a.to_string_lossy().into_owned()).collect();
    let mut file = None;
    let mut given = Vec::new();
    let mut i = 0;
    while i < rest.len() {
        if rest[i] == "--" {
            break;
        }
        if let Some(name) = rest[i].strip_prefix("--") {
            let (name, inline) = match name.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (name, None),
            };
            if name == "config" {
                file = inline.or_else(|| rest.get(i + 1).cloned());
            }
            given.push(name.to_string());
        }
        i += 1;
    }
    let Some(file) = file else { return Ok((argv, None)) };
    let cfg = Config::load(Path::new(&file))?;
    let mut out: Vec<OsString> = argv[..=run].to_vec();
    out.extend(cfg.args_except(&given).into_iter().map(OsString::from));
    out.extend(argv[run + 1..].iter().cloned());
    Ok((out, Some(cfg)))
}

/// Every `run` option's raw values in `argv` (defaults included), by long
/// name, as clap reads them (to tell which options two command lines set
/// differently).
pub fn run_option_values(argv: &[OsString]) -> Result<BTreeMap<String, Vec<OsString>>> {
    let cmd = Cli::command();
    let matches = cmd.clone().try_get_matches_from(argv).map_err(|e| Error::Usage(e.to_string()))?;
    let (Some(("run", run)), Some(spec)) = (matches.subcommand(), cmd.find_subcommand("run")) else {
        return Err(Error::Usage("not a run command".into()));
    };
    Ok(spec
        .get_arguments()
        .filter_map(|a| {
            let values = run.try_get_raw(a.get_id().as_str()).ok().flatten();
            Some((a.get_long()?.to_string(), values.map(|v| v.map(OsString::from).collect()).unwrap_or_default()))
        })
        .collect())
}

/// `config example`: every `run` option, commented out at its default,
/// with its help. deploy/p2p-nos.toml is this output.
pub fn example() -> String {
    let mut out = String::from(
        "# p2p-nos node configuration: `p2p-controller run --config FILE`.\n\
         # Every key is a `run` option (see `p2p-controller run --help`); options given\n\
         # on the command line override the file. Check a file with\n\
         # `p2p-controller config check FILE`. Keys below are commented out at their\n\
         # defaults; this file is `p2p-controller config example`.\n",
    );
    for o in run_options() {
        out.push('\n');
        for line in o.help.lines() {
            out.push_str(format!("# {line}").trim_end());
            out.push('\n');
        }
        if !o.choices.is_empty() && o.takes_value {
            out.push_str(&format!("# One of: {}.\n", o.choices.join(", ")));
        }
        let value = match (&o.default, o.takes_value, o.repeatable) {
            (_, false, _) => "false".to_string(),
            (_, true, true) => "[]".to_string(),
            (Some(d), true, false) => toml_value(d),
            (None, true, false) => "\"\"  # no default".to_string(),
        };
        out.push_str(&format!("#{} = {value}\n", o.long));
    }
    out
}

/// A default as TOML: a number stays a number, anything else a string.
fn toml_value(d: &str) -> String {
    if d.parse::<i64>().is_ok() || (d.parse::<f64>().is_ok() && d.contains('.')) {
        d.to_string()
    } else {
        toml::Value::String(d.to_string()).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn keys_become_arguments_and_the_command_line_wins() {
        let text = "store-quota = \"2GiB\"\nno-mdns = true\nbootstrap = [\"/ip4/10.0.0.1/tcp/9471\", \"/ip4/10.0.0.2/tcp/9471\"]\nkbucket-size = 8\nebpf-log = false\n";
        let c = Config::parse(Path::new("n.toml"), text).unwrap();
        assert_eq!(c.len(), 5);
        assert_eq!(
            c.args_except(&[]),
            [
                "--store-quota",
                "2GiB",
                "--no-mdns",
                "--bootstrap",
                "/ip4/10.0.0.1/tcp/9471",
                "--bootstrap",
                "/ip4/10.0.0.2/tcp/9471",
                "--kbucket-size",
                "8"
            ]
        );
        assert_eq!(c.args_except(&["bootstrap".into(), "store-quota".into()]), ["--no-mdns", "--kbucket-size", "8"]);
        let m = c.locate("--store-quota \"2GiB\": too large").unwrap();
        assert_eq!(m, "n.toml: line 1: store-quota = …: --store-quota \"2GiB\": too large");
        assert!(c.locate("error: invalid value 'x' for '--kbucket-size <K>': bad").unwrap().contains("line 4"));
        assert_eq!(c.locate("--rate-default fast"), None, "not from the file");
    }

    #[test]
    fn bad_files_name_the_line() {
        let err = |text: &str| Config::parse(Path::new("n.toml"), text).unwrap_err().to_string();
        assert!(
            err("kbucket-size = 8\nstore_quota = \"1GiB\"\n")
                .contains("line 2: unknown key \"store_quota\" (did you mean store-quota?)")
        );
        assert!(err("\n\nkbucket-size = [1, 2]\n").contains("line 3: kbucket-size takes one value"));
        assert!(err("no-mdns = \"yes\"\n").contains("line 1: no-mdns is a switch"));
        assert!(err("a = = 1\n").contains("line 1:"));
        assert!(err("store-quota = { a = 1 }\n").contains("not a value of --store-quota"));
        assert!(err("config = \"other.toml\"\n").contains("unknown key \"config\""));
    }

    #[test]
    fn merge_puts_the_file_after_run_and_before_the_command_line() {
        let dir = std::env::temp_dir().join(format!("p2p-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("n.toml");
        std::fs::write(&f, "kbucket-size = 8\noverlay-port = 9000\n").unwrap();
        let fs = f.to_str().unwrap();
        let (argv, cfg) =
            merge_argv(os(&["p2p-controller", "--instance", "a", "run", "--config", fs, "--overlay-port", "9100"]))
                .unwrap();
        assert!(cfg.is_some());
        assert_eq!(
            argv,
            os(&[
                "p2p-controller",
                "--instance",
                "a",
                "run",
                "--kbucket-size",
                "8",
                "--config",
                fs,
                "--overlay-port",
                "9100"
            ])
        );
        let (same, none) = merge_argv(os(&["p2p-controller", "status", "--config", fs])).unwrap();
        assert!(none.is_none() && same.len() == 4);
        assert!(merge_argv(os(&["p2p-controller", "run", "--config=/nonexistent.toml"])).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_example_sets_every_option_and_parses_back() {
        let text = example();
        let keys: Vec<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix('#')?.split_once(" = ").map(|(k, _)| k.to_string()))
            .filter(|k| !k.contains(' '))
            .collect();
        for o in run_options() {
            assert!(keys.contains(&o.long), "{} missing from the example", o.long);
        }
        // Uncommented, it is a valid file of defaults.
        let live: String = text
            .lines()
            .filter_map(|l| l.strip_prefix('#').filter(|r| !r.starts_with(' ') && r.contains(" = ")))
            .filter(|l| !l.contains("no default"))
            .map(|l| format!("{l}\n"))
            .collect();
        Config::parse(Path::new("example.toml"), &live).unwrap();
    }
}
