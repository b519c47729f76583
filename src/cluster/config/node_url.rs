//! The node URL: a cache box's base URL, checked and normalised when the config is read.
//!
//! Apart because it is the one value of the config with a syntax of its own, and the one other
//! parts meet outside the config: a box started with `--node URL` parses its own URL with it.
//! It depends on nothing else of the config.

use std::fmt;
use std::str::FromStr;

/// How many characters of a rejected input an error quotes (here and in every config error).
pub(super) const QUOTE_LIMIT: usize = 80;

/// The validated base URL of a cache box: `http://` or `https://`, a host, an optional port and
/// path, no trailing `/`.
///
/// Normalised on parsing (scheme and host lowercased, trailing `/`s removed) so that two
/// spellings of one box compare equal: the duplicate-node check and a box finding itself in the
/// config (`--node URL`) both rely on it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct NodeUrl(String);

/// Why a piece of text is not a node URL; carries the text so the message can name it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad node URL {input:?}: {reason}")]
pub struct UrlError {
    /// The rejected text (truncated to 80 characters).
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl NodeUrl {
    /// The normalised URL, e.g. `http://zero:8080`; request paths are appended to it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for NodeUrl {
    type Err = UrlError;

    fn from_str(s: &str) -> Result<NodeUrl, UrlError> {
        let fail = |reason| UrlError {
            input: s.chars().take(QUOTE_LIMIT).collect(),
            reason,
        };
        let (scheme, rest) = s
            .split_once("://")
            .filter(|(scheme, _)| {
                scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")
            })
            .ok_or_else(|| fail("a node URL starts with http:// or https://"))?;
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(fail("a node URL may not contain whitespace"));
        }
        if s.contains(['?', '#']) {
            return Err(fail("a node URL may not have a query or a fragment"));
        }
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if authority.contains('@') {
            return Err(fail(
                "credentials do not belong in a node URL (the reverse proxy authenticates)",
            ));
        }
        let (host, port) =
            match authority.strip_prefix('[') {
                // An IPv6 literal: `[::1]` or `[::1]:8080`.
                Some(v6) => {
                    let (host, after) = v6
                        .split_once(']')
                        .ok_or_else(|| fail("an IPv6 host needs its closing `]`"))?;
                    match after {
                        "" => (host, None),
                        _ => (
                            host,
                            Some(after.strip_prefix(':').ok_or_else(|| {
                                fail("only `:port` may follow an IPv6 host's `]`")
                            })?),
                        ),
                    }
                }
                None => match authority.split_once(':') {
                    Some((host, port)) => (host, Some(port)),
                    None => (authority, None),
                },
            };
        if host.is_empty() {
            return Err(fail("a node URL needs a host"));
        }
        if let Some(port) = port {
            let valid = !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && port.parse::<u16>().is_ok_and(|p| p != 0);
            if !valid {
                return Err(fail("the port must be a number from 1 to 65535"));
            }
        }
        Ok(NodeUrl(format!(
            "{}://{}{}",
            scheme.to_ascii_lowercase(),
            authority.to_ascii_lowercase(),
            path.trim_end_matches('/')
        )))
    }
}

impl fmt::Display for NodeUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::config::tests::url;

    #[test]
    fn node_urls() {
        for (input, want) in [
            ("http://zero:8080", "http://zero:8080"),
            ("http://zero:8080/", "http://zero:8080"),
            ("HTTPS://Box.Example//", "https://box.example"),
            ("https://proxy/Dune/Cache/", "https://proxy/Dune/Cache"),
            ("http://[::1]:8080/", "http://[::1]:8080"),
            ("http://10.0.0.1", "http://10.0.0.1"),
        ] {
            assert_eq!(url(input).as_str(), want, "{input}");
        }
        for (input, reason) in [
            ("zero:8080", "starts with http"),
            ("ftp://zero", "starts with http"),
            ("http://", "needs a host"),
            ("http:///x", "needs a host"),
            ("http://:8080", "needs a host"),
            ("http://a:0", "port"),
            ("http://a:99999", "port"),
            ("http://a:", "port"),
            ("http://a:8o", "port"),
            ("http://a b", "whitespace"),
            ("http://a/?x=1", "query"),
            ("http://a/#top", "query"),
            ("http://user:pw@a", "credentials"),
            ("http://[::1", "closing"),
            ("http://[::1]x", "only `:port`"),
        ] {
            let e = input.parse::<NodeUrl>().unwrap_err();
            assert!(e.reason.contains(reason), "{input}: {e}");
            assert_eq!(e.input, input);
        }
    }
}
