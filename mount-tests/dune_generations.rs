//! The Dune generations the end-to-end tests build with, and everything that differs between
//! them: which binary, where each looks for its cache (so where the mount goes), what it must be
//! told to cache through a mount, and how it reports what it did.
//!
//! Why three: Dune 2.9 (MD5 keys, `meta/v4`) is what Debian ships; Dune 3.19 is the last of the
//! MD5 era with `meta/v5`; Dune 3.22 keys artifacts with BLAKE3 in the same `files/v4`, keeps its
//! cache one level down, and writes a csexp trace instead of a log. A change to the mount that
//! breaks one of them must fail a test. The facts used here are in `docs/dune3.md`.
//!
//! A generation whose binary is missing skips its tests loudly, and fails them under CI (`CI`
//! set), like a missing `/dev/fuse` (see [`crate::harness::skip_unless_required`]).

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use dune_cachefs::dune::csexp::{self, Limits, Sexp};
use dune_cachefs::dune::key::Era;
use dune_cachefs::dune::layout::MetaVersion;

use crate::common;
use crate::harness::skip_unless_required;

/// Where a generation looks for its cache's `db/` directory.
#[derive(Clone, Copy, Debug)]
enum CacheDir {
    /// `$XDG_CACHE_HOME/dune/db`; `DUNE_CACHE_ROOT` is ignored (Dune 2.9).
    XdgDuneDb,
    /// `$DUNE_CACHE_ROOT` itself (Dune 3.0 to 3.21).
    CacheRoot,
    /// `$DUNE_CACHE_ROOT/db` (Dune 3.22 on).
    CacheRootDb,
}

/// How a generation tells what a build did.
#[derive(Clone, Copy, Debug)]
enum Reporting {
    /// `_build/log`: `# cache hit for <rule key>`, `$ <command>` (Dune 2.9).
    HitLog,
    /// `_build/log` with `--debug-cache=shared`: `# cache restore success [<rule key>]`,
    /// `$ <command>` (Dune 3.19; without the flag no hit is logged).
    RestoreLog,
    /// `_build/trace.csexp` with `DUNE_TRACE=cache,process`: `(cache hit T (rule_digest K) ...)`
    /// and `(process start T (process_args (...)) ... (prog P) ...)` events (Dune 3.22; there is
    /// no log).
    Trace,
}

/// One generation of Dune.
#[derive(Debug)]
pub struct Generation {
    /// What failure messages call it; `dune --version` prints it, a dot and the patch level.
    pub version: &'static str,
    /// Where `scripts/install-deps` puts it (a bare name is looked up on `PATH`).
    default_binary: &'static str,
    /// The environment variable naming another binary of this generation.
    binary_var: &'static str,
    /// How it keys artifacts.
    pub era: Era,
    /// Where it stores rule metadata.
    pub meta: MetaVersion,
    cache: CacheDir,
    reporting: Reporting,
}

/// Debian 12's Dune (`apt-get install ocaml-dune`).
pub const DUNE_2_9: Generation = Generation {
    version: "2.9",
    default_binary: "dune",
    binary_var: "DUNE_CACHEFS_DUNE_2_9",
    era: Era::Md5,
    meta: MetaVersion::V4,
    cache: CacheDir::XdgDuneDb,
    reporting: Reporting::HitLog,
};

/// The last MD5-era Dune (installed by `scripts/install-deps`).
pub const DUNE_3_19: Generation = Generation {
    version: "3.19",
    default_binary: "/opt/dune-3.19.1/bin/dune",
    binary_var: "DUNE_CACHEFS_DUNE_3_19",
    era: Era::Md5,
    meta: MetaVersion::V5,
    cache: CacheDir::CacheRoot,
    reporting: Reporting::RestoreLog,
};

/// A BLAKE3-era Dune with its cache in `$DUNE_CACHE_ROOT/db` (installed by
/// `scripts/install-deps`).
pub const DUNE_3_22: Generation = Generation {
    version: "3.22",
    default_binary: "/opt/dune-3.22.2/bin/dune",
    binary_var: "DUNE_CACHEFS_DUNE_3_22",
    era: Era::Blake3,
    meta: MetaVersion::V5,
    cache: CacheDir::CacheRootDb,
    reporting: Reporting::Trace,
};

/// A generation with the binary that runs it.
#[derive(Debug, Clone)]
pub struct Dune {
    pub generation: &'static Generation,
    binary: PathBuf,
}

/// The directories one machine gives Dune: its cache settings point into them.
pub struct DuneDirs {
    /// `XDG_CACHE_HOME`: Dune 2.9's cache is under it, and Dune 3 keeps other caches there.
    pub xdg_cache: PathBuf,
    /// `XDG_CONFIG_HOME`: empty, so no user configuration applies.
    pub xdg_config: PathBuf,
    /// `DUNE_CACHE_ROOT` (Dune 3 only).
    pub cache_root: PathBuf,
}

impl DuneDirs {
    /// The three directories under `dir` (not created).
    pub fn under(dir: &Path) -> DuneDirs {
        DuneDirs {
            xdg_cache: dir.join("xdg-cache"),
            xdg_config: dir.join("xdg-config"),
            cache_root: dir.join("cache-root"),
        }
    }
}

impl Generation {
    /// This generation's binary, checked by its `--version`; `None` (after a loud skip message,
    /// or a panic under CI) when it is not installed.
    pub fn find(&'static self) -> Option<Dune> {
        let binary: PathBuf = std::env::var_os(self.binary_var)
            .unwrap_or_else(|| OsString::from(self.default_binary))
            .into();
        let version = installed(&binary)
            .map(|path| {
                common::run(
                    Command::new(path).arg("--version"),
                    common::COMMAND_DEADLINE,
                )
            })
            .filter(|out| out.status.success())
            .map(|out| out.stdout.trim().to_string());
        match version {
            Some(v) if v.starts_with(&format!("{}.", self.version)) => Some(Dune {
                generation: self,
                binary,
            }),
            found => {
                let found = found.map_or("not runnable".to_string(), |v| format!("version {v}"));
                skip_unless_required(
                    &format!(
                        "the Dune {} tests need {} ({found}; scripts/install-deps installs it, \
                         or name another Dune {}.x binary in ${})",
                        self.version,
                        binary.display(),
                        self.version,
                        self.binary_var
                    ),
                    "DUNE_CACHEFS_REQUIRE_DUNE",
                );
                None
            }
        }
    }
}

impl Dune {
    /// Where the mount goes so that this Dune uses it as its cache.
    pub fn cache_db(&self, dirs: &DuneDirs) -> PathBuf {
        match self.generation.cache {
            CacheDir::XdgDuneDb => dirs.xdg_cache.join("dune/db"),
            CacheDir::CacheRoot => dirs.cache_root.clone(),
            CacheDir::CacheRootDb => dirs.cache_root.join("db"),
        }
    }

    /// `dune build` of the project in `project`, with the cache in `dirs` on and copying (hard
    /// links cannot cross into the mount), reporting its hits; none of the caller's own Dune
    /// settings apply.
    pub fn build_command(&self, project: &Path, dirs: &DuneDirs) -> Command {
        let mut command = Command::new(&self.binary);
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if name.starts_with("DUNE_") || name == "INSIDE_DUNE" {
                command.env_remove(name.as_ref());
            }
        }
        command
            .args(["build", "--root", "."])
            .current_dir(project)
            .env("XDG_CACHE_HOME", &dirs.xdg_cache)
            .env("XDG_CONFIG_HOME", &dirs.xdg_config)
            .env("DUNE_CACHE", "enabled");
        match self.generation.cache {
            CacheDir::XdgDuneDb => command
                .env("DUNE_CACHE_TRANSPORT", "direct")
                .env("DUNE_CACHE_DUPLICATION", "copy"),
            CacheDir::CacheRoot | CacheDir::CacheRootDb => command
                .env("DUNE_CACHE_ROOT", &dirs.cache_root)
                .env("DUNE_CACHE_STORAGE_MODE", "copy"),
        };
        match self.generation.reporting {
            Reporting::HitLog => {}
            Reporting::RestoreLog => {
                command.arg("--debug-cache=shared");
            }
            Reporting::Trace => {
                command.env("DUNE_TRACE", "cache,process");
            }
        }
        command
    }

    /// What the last build in `project` did, from the file this generation reports in.
    pub fn report(&self, project: &Path) -> Report {
        match self.generation.reporting {
            Reporting::HitLog => Report::from_log(project, "# cache hit for "),
            Reporting::RestoreLog => Report::from_log(project, "# cache restore success ["),
            Reporting::Trace => Report::from_trace(project),
        }
    }
}

/// What one build did, as its Dune reported it.
pub struct Report {
    /// The rule keys Dune restored from the cache.
    pub hits: BTreeSet<String>,
    /// Every command Dune ran, its own probes included, one line each.
    pub commands: Vec<String>,
    /// The report, readably, for failure messages.
    pub text: String,
}

impl Report {
    /// From `_build/log`: a hit is a line `<hit_prefix><rule key>` (then anything but a hex
    /// digit), a command a line `$ <command>`. A missing log reports nothing (the build's failure
    /// says why).
    fn from_log(project: &Path, hit_prefix: &str) -> Report {
        let text = fs::read_to_string(project.join("_build/log")).unwrap_or_default();
        let hits = text
            .lines()
            .filter_map(|l| l.strip_prefix(hit_prefix))
            .filter_map(|rest| rest.split(|c: char| !c.is_ascii_hexdigit()).next())
            .map(str::to_string)
            .collect();
        let commands = text
            .lines()
            .filter_map(|l| l.strip_prefix("$ "))
            .map(str::to_string)
            .collect();
        Report {
            hits,
            commands,
            text: format!("--- _build/log:\n{text}"),
        }
    }

    /// From `_build/trace.csexp`, a sequence of events `(<category> <name> <time> (<arg>
    /// <value>)...)`: a hit is `(cache hit ...)` with its `rule_digest`, a command a
    /// `(process start ...)` with its `prog` and `process_args`.
    fn from_trace(project: &Path) -> Report {
        let path = project.join("_build/trace.csexp");
        let Ok(bytes) = fs::read(&path) else {
            return Report {
                hits: BTreeSet::new(),
                commands: Vec::new(),
                text: format!("--- no {}", path.display()),
            };
        };
        // The file is a sequence of values; as the items of one list it is one value.
        let wrapped = [&b"("[..], &bytes, b")"].concat();
        let trace = csexp::parse(&wrapped, Limits::default());
        let events = match &trace {
            Ok(Sexp::List(events)) => events,
            other => panic!(
                "{} is not a sequence of csexp values: {other:?}",
                path.display()
            ),
        };
        let (mut hits, mut commands, mut text) = (BTreeSet::new(), Vec::new(), String::new());
        for event in events {
            let Sexp::List(items) = event else {
                continue;
            };
            let name = |i: usize| match items.get(i) {
                Some(Sexp::Atom(a)) => a.as_slice(),
                _ => b"",
            };
            match (name(0), name(1)) {
                (b"cache", b"hit") => {
                    let key = trace_arg(items, "rule_digest").and_then(atom_text);
                    hits.insert(key.unwrap_or_else(|| panic!("no rule_digest in {event}")));
                }
                (b"process", b"start") => {
                    let prog = trace_arg(items, "prog").and_then(atom_text);
                    let mut line = prog.unwrap_or_else(|| panic!("no prog in {event}"));
                    if let Some(Sexp::List(args)) = trace_arg(items, "process_args") {
                        for arg in args {
                            line.push(' ');
                            line.push_str(&atom_text(arg).unwrap_or_default());
                        }
                    }
                    commands.push(line);
                }
                (b"cache", _) => {}
                _ => continue,
            }
            text.push_str(&format!("{event}\n"));
        }
        Report {
            hits,
            commands,
            text: format!(
                "--- cache and process start events of {}:\n{text}",
                path.display()
            ),
        }
    }

    /// The commands Dune ran for rules: all but its own probes (`nproc`, `ocamlc.opt -config`).
    pub fn rule_commands(&self) -> Vec<&str> {
        self.commands
            .iter()
            .map(String::as_str)
            .filter(|c| !c.contains("/nproc") && !c.contains("ocamlc.opt -config"))
            .collect()
    }

    /// The compiler commands among them.
    pub fn compiles(&self) -> Vec<&str> {
        self.rule_commands()
            .into_iter()
            .filter(|c| c.contains("ocamlopt") || c.contains("ocamlc"))
            .collect()
    }
}

/// The file `binary` runs: itself if it names a path, else the first on `PATH` by that name.
fn installed(binary: &Path) -> Option<PathBuf> {
    if binary.components().count() > 1 {
        return binary.is_file().then(|| binary.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(binary))
        .find(|candidate| candidate.is_file())
}

/// The value of the argument `(name value)` of a trace event.
fn trace_arg<'a>(items: &'a [Sexp], name: &str) -> Option<&'a Sexp> {
    items.iter().skip(3).find_map(|item| match item {
        Sexp::List(pair) if pair.len() == 2 && pair[0] == Sexp::Atom(name.into()) => Some(&pair[1]),
        _ => None,
    })
}

/// An atom as text.
fn atom_text(sexp: &Sexp) -> Option<String> {
    match sexp {
        Sexp::Atom(a) => Some(String::from_utf8_lossy(a).into_owned()),
        Sexp::List(_) => None,
    }
}
