//! Platform policy: the few places where macOS (macFUSE) needs the filesystem to behave
//! differently, as a plain value chosen at start-up so both behaviours run (and are tested) here.
//!
//! On macOS a vnode caches one name and one parent. A node id returned under two names (a hard
//! link) makes `realpath`/`F_GETPATH` report the other name, and Dune on macOS calls `realpath`
//! before `copyfile`. So under [`PlatformPolicy::MacOs`] every path is its own node with
//! `st_nlink = 1`, a `link()` inside the mount makes an independent copy (safe: entries are
//! immutable), and Finder's AppleDouble (`._*`) and `.DS_Store` files are refused rather than
//! stored among Dune's files. Every path is its own node on Linux too (the inode table is keyed
//! by path); Linux reports the real link count of scratch files.

use std::ffi::OsStr;
use std::fmt;
use std::str::FromStr;

/// Which platform's behaviour the mount follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlatformPolicy {
    /// Plain POSIX behaviour.
    Linux,
    /// macFUSE workarounds (see the module docs).
    MacOs,
}

impl PlatformPolicy {
    /// The policy for the platform this binary was built for.
    pub fn native() -> PlatformPolicy {
        if cfg!(target_os = "macos") {
            PlatformPolicy::MacOs
        } else {
            PlatformPolicy::Linux
        }
    }

    /// The link count to report for a file whose real link count is `real`.
    pub fn nlink(self, real: u64) -> u32 {
        match self {
            PlatformPolicy::Linux => u32::try_from(real.max(1)).unwrap_or(u32::MAX),
            PlatformPolicy::MacOs => 1,
        }
    }

    /// Whether creating a file with this name is refused (EACCES).
    pub fn refuses_name(self, name: &OsStr) -> bool {
        match self {
            PlatformPolicy::Linux => false,
            PlatformPolicy::MacOs => {
                let bytes = name.as_encoded_bytes();
                bytes.starts_with(b"._") || bytes == b".DS_Store"
            }
        }
    }

    /// Whether `link()` inside the mount copies instead of linking.
    pub fn link_copies(self) -> bool {
        self == PlatformPolicy::MacOs
    }
}

impl FromStr for PlatformPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<PlatformPolicy, String> {
        match s {
            "linux" => Ok(PlatformPolicy::Linux),
            "macos" => Ok(PlatformPolicy::MacOs),
            other => Err(format!(
                "unknown platform policy {other:?}: use linux or macos"
            )),
        }
    }
}

impl fmt::Display for PlatformPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PlatformPolicy::Linux => "linux",
            PlatformPolicy::MacOs => "macos",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macos_hides_hard_links_and_refuses_finder_files() {
        let mac = PlatformPolicy::MacOs;
        assert_eq!(mac.nlink(9), 1);
        assert!(mac.refuses_name(OsStr::new("._foo")));
        assert!(mac.refuses_name(OsStr::new(".DS_Store")));
        assert!(!mac.refuses_name(OsStr::new("promoting.x")));
        assert!(mac.link_copies());
    }

    #[test]
    fn linux_reports_real_link_counts_and_refuses_nothing() {
        let linux = PlatformPolicy::Linux;
        assert_eq!(linux.nlink(9), 9);
        assert_eq!(linux.nlink(0), 1);
        assert!(!linux.refuses_name(OsStr::new("._foo")));
        assert!(!linux.link_copies());
    }

    #[test]
    fn parses_and_prints() {
        for p in [PlatformPolicy::Linux, PlatformPolicy::MacOs] {
            assert_eq!(p.to_string().parse::<PlatformPolicy>(), Ok(p));
        }
        assert!("windows".parse::<PlatformPolicy>().is_err());
    }
}
