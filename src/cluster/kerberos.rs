//! SPNEGO tokens for boxes behind a proxy that authenticates with Kerberos (docs/deployment.md).
//!
//! Such a proxy answers `401` with `WWW-Authenticate: Negotiate`; the client then sends
//! `Authorization: Negotiate <token>` (RFC 4559), a token the system's GSSAPI makes from the
//! user's credential cache (`KRB5CCNAME`, or the default cache) for the proxy's service
//! `HTTP@host`. A fresh token is made for every request: GSSAPI reads the cache each time, so a
//! ticket renewed by `kinit` (or a renewal daemon) is used at once, without a remount, and a
//! retried request never replays a token the proxy has seen. The TLS in front of the proxy
//! authenticates the proxy to us, so the proxy's answer token (mutual authentication) is not
//! awaited.
//!
//! This module knows GSSAPI, the failures' shapes and the two headers; the client decides when a
//! token is sent. Built without the `kerberos` feature (or off Linux), it makes no token and
//! says so.

use std::fmt;

/// Why no token could be made, or the proxy would not take it. Its `Display` follows "box URL"
/// and tells the user what to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KerberosFailure {
    /// The credential cache holds no ticket (no cache, or an empty one).
    NoTicket {
        /// The service the token was for, e.g. `HTTP@cache.example`.
        service: String,
        /// The credential cache read, in words.
        cache: String,
    },
    /// The ticket in the cache has expired.
    Expired {
        /// The service the token was for.
        service: String,
        /// The credential cache read, in words.
        cache: String,
    },
    /// GSSAPI could not make a token for another reason (no such service principal in the realm,
    /// no KDC reachable, ...).
    Failed {
        /// The service the token was for.
        service: String,
        /// What GSSAPI said.
        cause: String,
    },
    /// The proxy answered our token with 401 again.
    Rejected {
        /// The service the token was for.
        service: String,
    },
    /// The proxy authenticated us and refused to store (403): we are not one of its writers.
    WriteRefused,
    /// This build has no Kerberos support.
    NotBuilt,
}

impl fmt::Display for KerberosFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KerberosFailure::NoTicket { service, cache } => write!(
                f,
                "wants Kerberos: no Kerberos ticket for {service}: run kinit ({cache} holds none)"
            ),
            KerberosFailure::Expired { service, cache } => write!(
                f,
                "wants Kerberos: the Kerberos ticket for {service} has expired: run kinit \
                 ({cache})"
            ),
            KerberosFailure::Failed { service, cause } => {
                write!(
                    f,
                    "wants Kerberos: no ticket can be had for {service}: {cause}"
                )
            }
            KerberosFailure::Rejected { service } => write!(
                f,
                "refused our Kerberos ticket for {service} (is the proxy's keytab for that \
                 service, in the realm of your ticket?)"
            ),
            KerberosFailure::WriteRefused => write!(
                f,
                "refused to store: your Kerberos principal is not one the proxy lets write (klist \
                 shows it; ask for it to be added to the proxy's writers)"
            ),
            KerberosFailure::NotBuilt => write!(
                f,
                "wants Kerberos, and this dune-cachefs was built without it (cargo feature \
                 `kerberos`, Linux)"
            ),
        }
    }
}

/// The GSSAPI service name of a box's proxy: `HTTP@` and the host of its URL (no scheme, port,
/// user or brackets).
pub(super) fn service_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or(rest);
    let authority = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => authority.split(':').next().unwrap_or(authority),
    };
    format!("HTTP@{host}")
}

/// Whether an answer is a proxy's request for Kerberos: `401` with `WWW-Authenticate: Negotiate`
/// (alone, or among other schemes).
pub(super) fn asks_negotiate<B>(response: &ureq::http::Response<B>) -> bool {
    response.status() == ureq::http::StatusCode::UNAUTHORIZED
        && response
            .headers()
            .get_all("www-authenticate")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split([',', ' '])
                    .next()
                    .is_some_and(|scheme| scheme.eq_ignore_ascii_case("negotiate"))
            })
}

/// The value of an `Authorization` header for `service`, made from the credential cache now.
pub(super) fn authorization(service: &str) -> Result<String, KerberosFailure> {
    use base64::Engine;
    let token = token(service)?;
    Ok(format!(
        "Negotiate {}",
        base64::engine::general_purpose::STANDARD.encode(token)
    ))
}

#[cfg(all(feature = "kerberos", target_os = "linux"))]
fn token(service: &str) -> Result<Vec<u8>, KerberosFailure> {
    use libgssapi::context::{ClientCtx, CtxFlags};
    use libgssapi::name::Name;
    use libgssapi::oid::{GSS_MECH_SPNEGO, GSS_NT_HOSTBASED_SERVICE};

    let failed = |e| failure_of(service, e);
    let name = Name::new(service.as_bytes(), Some(GSS_NT_HOSTBASED_SERVICE)).map_err(failed)?;
    let mut context = ClientCtx::new(None, name, CtxFlags::empty(), Some(GSS_MECH_SPNEGO));
    match context.step(None, None).map_err(failed)? {
        Some(token) => Ok(token.to_vec()),
        None => Err(KerberosFailure::Failed {
            service: service.to_string(),
            cause: "GSSAPI made no token".into(),
        }),
    }
}

/// What a GSSAPI error means for the user.
#[cfg(all(feature = "kerberos", target_os = "linux"))]
fn failure_of(service: &str, e: libgssapi::error::Error) -> KerberosFailure {
    use libgssapi::error::MajorFlags;
    let service = service.to_string();
    // GSSAPI's words, with its runs of spaces squeezed.
    let cause = e
        .to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    // The routine error is a number in bits 16-23, not a set of flags: compared whole.
    let routine = |code: MajorFlags| e.major.bits() & (0xff << 16) == code.bits();
    // MIT reports an expired ticket as a general failure whose minor status says so.
    if routine(MajorFlags::GSS_S_CREDENTIALS_EXPIRED) || cause.contains("Ticket expired") {
        KerberosFailure::Expired {
            service,
            cache: cache_name(),
        }
    } else if routine(MajorFlags::GSS_S_NO_CRED) {
        KerberosFailure::NoTicket {
            service,
            cache: cache_name(),
        }
    } else {
        KerberosFailure::Failed { service, cause }
    }
}

/// The credential cache GSSAPI reads, in words.
#[cfg(all(feature = "kerberos", target_os = "linux"))]
fn cache_name() -> String {
    match std::env::var("KRB5CCNAME") {
        Ok(name) if !name.is_empty() => format!("the credential cache {name}"),
        _ => "the default credential cache".to_string(),
    }
}

#[cfg(not(all(feature = "kerberos", target_os = "linux")))]
fn token(_service: &str) -> Result<Vec<u8>, KerberosFailure> {
    Err(KerberosFailure::NotBuilt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_401_asks_for_negotiate_only_when_it_says_so() {
        let answer = |status: u16, schemes: &[&str]| {
            let mut builder = ureq::http::Response::builder().status(status);
            for scheme in schemes {
                builder = builder.header("www-authenticate", *scheme);
            }
            builder.body(()).unwrap()
        };
        assert!(asks_negotiate(&answer(401, &["Negotiate"])));
        assert!(asks_negotiate(&answer(
            401,
            &["Basic realm=\"x\"", "negotiate"]
        )));
        assert!(!asks_negotiate(&answer(
            401,
            &["Basic realm=\"Negotiate\""]
        )));
        assert!(!asks_negotiate(&answer(401, &[])));
        assert!(!asks_negotiate(&answer(200, &["Negotiate"])));
    }

    #[test]
    fn the_service_is_http_at_the_urls_host() {
        assert_eq!(
            service_of("https://cache.example:8443"),
            "HTTP@cache.example"
        );
        assert_eq!(service_of("https://cache.example"), "HTTP@cache.example");
        assert_eq!(service_of("http://localhost:80/x"), "HTTP@localhost");
        assert_eq!(service_of("https://u@host:1"), "HTTP@host");
        assert_eq!(service_of("https://[::1]:8443"), "HTTP@::1");
    }

    /// GSSAPI's verdicts become the failures that say what to do (the real ones, from a real
    /// KDC, are in tests/kerberos_proxy.rs).
    #[cfg(all(feature = "kerberos", target_os = "linux"))]
    #[test]
    fn gssapi_errors_say_run_kinit() {
        use libgssapi::error::{Error, MajorFlags};
        let of = |major| failure_of("HTTP@cache", Error { major, minor: 0 });
        let no_cred = of(MajorFlags::GSS_S_NO_CRED);
        assert!(
            matches!(no_cred, KerberosFailure::NoTicket { .. }),
            "{no_cred:?}"
        );
        assert!(
            no_cred
                .to_string()
                .starts_with("wants Kerberos: no Kerberos ticket for HTTP@cache: run kinit ("),
            "{no_cred}"
        );
        let expired = of(MajorFlags::GSS_S_CREDENTIALS_EXPIRED);
        assert!(
            matches!(expired, KerberosFailure::Expired { .. }),
            "{expired:?}"
        );
        assert!(
            expired.to_string().contains("has expired: run kinit"),
            "{expired}"
        );
        // Routine errors whose numbers share bits with those above are other failures.
        for other in [MajorFlags::GSS_S_BAD_NAME, MajorFlags::GSS_S_UNAUTHORIZED] {
            assert!(
                matches!(of(other), KerberosFailure::Failed { .. }),
                "{other:?}"
            );
        }
    }
}
