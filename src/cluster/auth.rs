//! Why a TLS proxy in front of a box refused us, or we refused it, in words the user can act on.
//!
//! Boxes behind a TLS reverse proxy (docs/deployment.md) can refuse our certificate, and we can
//! refuse theirs. Both surface deep in a TLS library (rustls's verdict or the proxy's TLS alert)
//! or as a proxy's HTML error page (nginx checks client certificates after the handshake and
//! answers 400). This module turns each into an [`AuthFailure`] that names the certificate at
//! fault and what to set. It is apart from the client because it is about configuration, not
//! requests: it knows the certificate files and the failures' shapes, nothing of HTTP.

use std::path::PathBuf;

pub use super::kerberos::KerberosFailure;

/// The certificate files a client's TLS configuration was built from: what a refusal names.
#[derive(Clone, Debug)]
pub(super) struct CertFiles {
    /// The CA file trusted for the proxies' certificates (`None`: the public web CAs).
    pub(super) ca_file: Option<PathBuf>,
    /// The client certificate presented, if any.
    pub(super) client_cert: Option<PathBuf>,
}

/// Why TLS authentication with a box's proxy failed, with the files concerned. Its `Display`
/// follows "box URL" and tells the user what to check or set.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthFailure {
    /// The proxy requires a client certificate and got none: every request (`writes_only:
    /// false`), or writes only (a proxy that lets anyone read answered a `PUT` with 403).
    ClientCertMissing {
        /// Only writes need one.
        writes_only: bool,
        /// The certificate configured, if any (then it was not sent).
        configured: Option<PathBuf>,
    },
    /// The proxy did not accept the client certificate we sent: it does not verify against the
    /// CA the proxy trusts (or has expired, or was revoked).
    ClientCertRejected {
        /// The certificate configured, if any.
        cert: Option<PathBuf>,
    },
    /// The proxy's certificate is not signed by a CA we trust.
    ServerCertUntrusted {
        /// The CA file we trust (`None`: the public web CAs).
        ca_file: Option<PathBuf>,
    },
    /// The proxy's certificate is signed by a CA we trust but unusable: not for this host name,
    /// expired, not for a server, ...
    ServerCertInvalid {
        /// What the TLS library found, e.g. `certificate not valid for name "cache"; ...`.
        cause: String,
    },
    /// A proxy that authenticates with Kerberos wants a ticket we lack, refused ours, or refused
    /// to let our principal write.
    Kerberos(KerberosFailure),
}

impl AuthFailure {
    /// Whether only writes are refused: reads go on, so the box is not marked down.
    pub fn writes_only(&self) -> bool {
        matches!(
            self,
            AuthFailure::ClientCertMissing {
                writes_only: true,
                ..
            } | AuthFailure::Kerberos(KerberosFailure::WriteRefused)
        )
    }
}

/// Where to configure a client certificate, for messages.
const SET_CLIENT_CERT: &str =
    "set client_cert/client_key in the cluster config, or --client-cert/--client-key";

impl std::fmt::Display for AuthFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthFailure::ClientCertMissing {
                writes_only: false,
                configured: None,
            } => write!(
                f,
                "refused the connection: it requires a client certificate, and none is \
                 configured ({SET_CLIENT_CERT})"
            ),
            AuthFailure::ClientCertMissing {
                writes_only: true,
                configured: None,
            } => write!(
                f,
                "refused to store: writing to it requires a client certificate, and none is \
                 configured ({SET_CLIENT_CERT})"
            ),
            AuthFailure::ClientCertMissing {
                configured: Some(cert),
                ..
            } => write!(
                f,
                "refused the connection: it requires a client certificate, and says none was \
                 sent (client_cert {} is configured)",
                cert.display()
            ),
            AuthFailure::ClientCertRejected { cert } => {
                write!(f, "refused the connection: the client certificate ")?;
                if let Some(cert) = cert {
                    write!(f, "{} ", cert.display())?;
                }
                write!(f, "was rejected (is it signed by the CA the proxy trusts?)")
            }
            AuthFailure::ServerCertUntrusted { ca_file: Some(ca) } => write!(
                f,
                "is not trusted: its certificate is not signed by a trusted CA (ca_file {})",
                ca.display()
            ),
            AuthFailure::ServerCertUntrusted { ca_file: None } => write!(
                f,
                "is not trusted: its certificate is not signed by a trusted CA (no ca_file is \
                 configured, so only public web CAs are trusted: set ca_file in the cluster \
                 config, or --ca-file)"
            ),
            AuthFailure::ServerCertInvalid { cause } => {
                write!(f, "is not trusted: its certificate is invalid: {cause}")
            }
            AuthFailure::Kerberos(failure) => failure.fmt(f),
        }
    }
}

/// What nginx's error page says when `ssl_verify_client` wants a certificate and none was sent
/// (its status 496, answered as 400).
const NGINX_NO_CERT: &str = "No required SSL certificate was sent";
/// What it says when the certificate sent does not verify (its status 495, answered as 400).
const NGINX_BAD_CERT: &str = "The SSL certificate error";

/// What rustls's verdict on a connection means for the user, if it is about certificates: ours
/// refused by the proxy (its TLS alert), or its refused by us.
pub(super) fn auth_failure_of(error: &rustls::Error, files: &CertFiles) -> Option<AuthFailure> {
    use rustls::{AlertDescription as Alert, CertificateError};
    match error {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            Some(AuthFailure::ServerCertUntrusted {
                ca_file: files.ca_file.clone(),
            })
        }
        rustls::Error::InvalidCertificate(e) => Some(AuthFailure::ServerCertInvalid {
            cause: e.to_string(),
        }),
        // A server that checks client certificates during the handshake (nginx does it later,
        // and answers 400: see `auth_failure_in_error_page`).
        rustls::Error::AlertReceived(Alert::CertificateRequired) => {
            Some(AuthFailure::ClientCertMissing {
                writes_only: false,
                configured: files.client_cert.clone(),
            })
        }
        rustls::Error::AlertReceived(
            Alert::BadCertificate
            | Alert::UnknownCA
            | Alert::CertificateUnknown
            | Alert::CertificateExpired
            | Alert::CertificateRevoked
            | Alert::UnsupportedCertificate,
        ) => Some(AuthFailure::ClientCertRejected {
            cert: files.client_cert.clone(),
        }),
        _ => None,
    }
}

/// What a proxy's error page says about our certificate, if anything: nginx refuses a missing
/// or unverifiable client certificate with a 400 page, not with a TLS alert.
pub(super) fn auth_failure_in_error_page(body: &str, files: &CertFiles) -> Option<AuthFailure> {
    if body.contains(NGINX_NO_CERT) {
        return Some(AuthFailure::ClientCertMissing {
            writes_only: false,
            configured: files.client_cert.clone(),
        });
    }
    body.contains(NGINX_BAD_CERT)
        .then(|| AuthFailure::ClientCertRejected {
            cert: files.client_cert.clone(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::client::ClientError;

    fn files(ca_file: Option<&str>, client_cert: Option<&str>) -> CertFiles {
        CertFiles {
            ca_file: ca_file.map(PathBuf::from),
            client_cert: client_cert.map(PathBuf::from),
        }
    }

    #[test]
    fn rustls_verdicts_on_certificates_become_auth_failures() {
        use rustls::{AlertDescription as Alert, CertificateError};
        let with_files = files(Some("/etc/ca.pem"), Some("/etc/client.pem"));
        let unknown = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        assert_eq!(
            auth_failure_of(&unknown, &with_files),
            Some(AuthFailure::ServerCertUntrusted {
                ca_file: Some("/etc/ca.pem".into())
            })
        );
        let wrong_name = rustls::Error::InvalidCertificate(CertificateError::NotValidForName);
        assert!(matches!(
            auth_failure_of(&wrong_name, &with_files),
            Some(AuthFailure::ServerCertInvalid { .. })
        ));
        assert_eq!(
            auth_failure_of(
                &rustls::Error::AlertReceived(Alert::CertificateRequired),
                &files(None, None)
            ),
            Some(AuthFailure::ClientCertMissing {
                writes_only: false,
                configured: None
            })
        );
        for alert in [
            Alert::BadCertificate,
            Alert::UnknownCA,
            Alert::CertificateExpired,
        ] {
            assert_eq!(
                auth_failure_of(&rustls::Error::AlertReceived(alert), &with_files),
                Some(AuthFailure::ClientCertRejected {
                    cert: Some("/etc/client.pem".into())
                }),
                "{alert:?}"
            );
        }
        // Not about certificates: left to the transport error.
        for other in [
            rustls::Error::AlertReceived(Alert::HandshakeFailure),
            rustls::Error::DecryptError,
        ] {
            assert_eq!(auth_failure_of(&other, &with_files), None, "{other:?}");
        }
    }

    #[test]
    fn auth_failures_say_what_to_set() {
        let error = |failure| {
            ClientError::Authentication {
                url: "https://cache:8443".into(),
                failure,
            }
            .to_string()
        };
        assert_eq!(
            error(AuthFailure::ClientCertMissing {
                writes_only: false,
                configured: None
            }),
            "box https://cache:8443 refused the connection: it requires a client certificate, \
             and none is configured (set client_cert/client_key in the cluster config, or \
             --client-cert/--client-key)"
        );
        assert_eq!(
            error(AuthFailure::ClientCertMissing {
                writes_only: true,
                configured: None
            }),
            "box https://cache:8443 refused to store: writing to it requires a client \
             certificate, and none is configured (set client_cert/client_key in the cluster \
             config, or --client-cert/--client-key)"
        );
        assert_eq!(
            error(AuthFailure::ClientCertRejected {
                cert: Some("/etc/client.pem".into())
            }),
            "box https://cache:8443 refused the connection: the client certificate \
             /etc/client.pem was rejected (is it signed by the CA the proxy trusts?)"
        );
        assert_eq!(
            error(AuthFailure::ServerCertUntrusted {
                ca_file: Some("/etc/ca.pem".into())
            }),
            "box https://cache:8443 is not trusted: its certificate is not signed by a trusted \
             CA (ca_file /etc/ca.pem)"
        );
        assert!(error(AuthFailure::ServerCertUntrusted { ca_file: None })
            .contains("no ca_file is configured"));
    }

    #[test]
    fn nginx_error_pages_about_certificates_become_auth_failures() {
        let page = |title: &str| format!("<html><head><title>{title}</title></head></html>");
        let with_cert = files(None, Some("/etc/client.pem"));
        assert_eq!(
            auth_failure_in_error_page(
                &page("400 No required SSL certificate was sent"),
                &files(None, None)
            ),
            Some(AuthFailure::ClientCertMissing {
                writes_only: false,
                configured: None
            })
        );
        assert_eq!(
            auth_failure_in_error_page(&page("400 The SSL certificate error"), &with_cert),
            Some(AuthFailure::ClientCertRejected {
                cert: Some("/etc/client.pem".into())
            })
        );
        assert_eq!(
            auth_failure_in_error_page(&page("400 Bad Request"), &with_cert),
            None
        );
    }
}
