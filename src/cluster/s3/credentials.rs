//! Where an S3 bucket's credentials come from: the places the AWS tools keep them, never the
//! cluster config (a config is shared and checked in; a secret is neither).
//!
//! In order: `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (with `AWS_SESSION_TOKEN` for
//! temporary credentials) in the environment; else the profile `AWS_PROFILE` (default
//! `default`) of the shared credentials file, `AWS_SHARED_CREDENTIALS_FILE` or
//! `~/.aws/credentials`. The file is the AWS tools' INI format: `[profile]` sections of
//! `name = value` lines, `#` and `;` comments.

use std::path::{Path, PathBuf};

use rusty_s3::Credentials;

/// The credentials found, and where (for messages: never the secret itself).
pub struct Found {
    /// The key, secret and token.
    pub credentials: Credentials,
    /// Where they came from, e.g. `the environment` or `profile "ci" of /root/.aws/credentials`.
    pub source: String,
}

/// Finds the credentials as the AWS tools would, given the environment `var`; `Err` says
/// where we looked and what to set.
pub fn find(var: impl Fn(&str) -> Option<String>) -> Result<Found, String> {
    let nonempty = |name: &str| var(name).filter(|v| !v.is_empty());
    match (
        nonempty("AWS_ACCESS_KEY_ID"),
        nonempty("AWS_SECRET_ACCESS_KEY"),
    ) {
        (Some(key), Some(secret)) => {
            return Ok(Found {
                credentials: with_token(key, secret, nonempty("AWS_SESSION_TOKEN")),
                source: "the environment (AWS_ACCESS_KEY_ID)".into(),
            })
        }
        (Some(_), None) => {
            return Err("AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not".into())
        }
        (None, Some(_)) => {
            return Err("AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not".into())
        }
        (None, None) => {}
    }
    let profile = nonempty("AWS_PROFILE").unwrap_or_else(|| "default".into());
    let file = match nonempty("AWS_SHARED_CREDENTIALS_FILE") {
        Some(file) => PathBuf::from(file),
        None => match nonempty("HOME") {
            Some(home) => Path::new(&home).join(".aws/credentials"),
            None => return Err(no_credentials("HOME is not set", &profile)),
        },
    };
    let text = match std::fs::read_to_string(&file) {
        Ok(text) => text,
        Err(e) => {
            return Err(no_credentials(
                &format!("cannot read {}: {e}", file.display()),
                &profile,
            ))
        }
    };
    let section = profile_section(&text, &profile);
    let field = |name: &str| {
        section
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
            .filter(|v| !v.is_empty())
    };
    match (field("aws_access_key_id"), field("aws_secret_access_key")) {
        (Some(key), Some(secret)) => Ok(Found {
            credentials: with_token(key, secret, field("aws_session_token")),
            source: format!("profile {profile:?} of {}", file.display()),
        }),
        _ => Err(no_credentials(
            &format!(
                "{} has no aws_access_key_id and aws_secret_access_key in profile {profile:?}",
                file.display()
            ),
            &profile,
        )),
    }
}

fn with_token(key: String, secret: String, token: Option<String>) -> Credentials {
    match token {
        Some(token) => Credentials::new_with_token(key, secret, token),
        None => Credentials::new(key, secret),
    }
}

fn no_credentials(why: &str, profile: &str) -> String {
    format!(
        "no credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set, and {why} \
         (profile {profile:?}, chosen by AWS_PROFILE); set either"
    )
}

/// The `name = value` pairs of `[profile]` in an AWS credentials file.
fn profile_section<'t>(text: &'t str, profile: &str) -> Vec<(&'t str, &'t str)> {
    let mut inside = false;
    let mut pairs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with(['#', ';']) {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = name.trim() == profile;
            continue;
        }
        if inside {
            if let Some((k, v)) = line.split_once('=') {
                pairs.push((k.trim(), v.trim()));
            }
        }
    }
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn the_environment_comes_first() {
        let found = find(env(&[
            ("AWS_ACCESS_KEY_ID", "AK"),
            ("AWS_SECRET_ACCESS_KEY", "SK"),
            ("AWS_SESSION_TOKEN", "T"),
            ("HOME", "/nonexistent"),
        ]))
        .unwrap();
        assert_eq!(found.credentials.key(), "AK");
        assert_eq!(found.credentials.secret(), "SK");
        assert_eq!(found.credentials.token(), Some("T"));
        let e = find(env(&[("AWS_ACCESS_KEY_ID", "AK")])).err().unwrap();
        assert!(e.contains("AWS_SECRET_ACCESS_KEY is not"), "{e}");
    }

    #[test]
    fn profiles_of_the_shared_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(".aws")).unwrap();
        std::fs::write(
            dir.path().join(".aws/credentials"),
            "# comment\n[default]\naws_access_key_id = D\naws_secret_access_key=DS\n\n\
             [ci]\n; another\naws_access_key_id = C\naws_secret_access_key = CS\n\
             aws_session_token = CT\n[empty]\n",
        )
        .unwrap();
        let home = dir.path().to_str().unwrap();
        let found = find(env(&[("HOME", home)])).unwrap();
        assert_eq!(
            (found.credentials.key(), found.credentials.token()),
            ("D", None)
        );
        let found = find(env(&[("HOME", home), ("AWS_PROFILE", "ci")])).unwrap();
        assert_eq!(found.credentials.key(), "C");
        assert_eq!(found.credentials.token(), Some("CT"));
        assert!(found.source.contains("\"ci\""), "{}", found.source);
        let e = find(env(&[("HOME", home), ("AWS_PROFILE", "empty")]))
            .err()
            .unwrap();
        assert!(e.contains("no aws_access_key_id"), "{e}");
        let e = find(env(&[("HOME", "/nonexistent")])).err().unwrap();
        assert!(
            e.contains("cannot read /nonexistent/.aws/credentials"),
            "{e}"
        );
    }
}
