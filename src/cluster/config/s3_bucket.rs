//! An S3 bucket as a node: where the bucket is, and the URL that names it.
//!
//! A node may be a bucket of any S3-compatible object store instead of a cache box:
//! `(node (s3 (endpoint URL) (bucket NAME) (region R) (prefix P) (url_style S)) (range A B))`.
//! Apart because, like a box's URL, it is a value with rules of its own (a bucket name's
//! characters, a prefix's segments, how the two addressing styles build an object's URL) that
//! the rest of the config only carries. It depends only on `node_url`. Credentials are never
//! part of it: they come from the environment (`cluster::s3`).

use super::node_url::NodeUrl;

/// How a bucket's objects are addressed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum UrlStyle {
    /// `ENDPOINT/BUCKET/OBJECT`: what self-hosted stores (SeaweedFS, MinIO, Garage, Ceph)
    /// answer without any DNS set up.
    Path,
    /// `BUCKET.ENDPOINT-HOST/OBJECT`: AWS's own, and any store with a wildcard DNS name.
    VirtualHost,
}

/// A validated S3 bucket location: endpoint, bucket, region, key prefix, addressing style.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct S3Bucket {
    pub(super) endpoint: NodeUrl,
    pub(super) bucket: String,
    pub(super) region: String,
    pub(super) prefix: String,
    pub(super) style: UrlStyle,
}

/// The region assumed when a node names none (AWS's default, and what most self-hosted
/// stores accept whatever they are configured with).
pub const DEFAULT_REGION: &str = "us-east-1";

impl S3Bucket {
    /// Checks and puts together a bucket location; `Err` says what is wrong, in words. Without
    /// an endpoint it is AWS's for the region, addressed by virtual host; with one, by path
    /// (unless `style` says otherwise).
    pub(super) fn new(
        endpoint: Option<NodeUrl>,
        bucket: String,
        region: Option<String>,
        prefix: Option<String>,
        style: Option<UrlStyle>,
    ) -> Result<S3Bucket, String> {
        check_bucket_name(&bucket)?;
        let region = region.unwrap_or_else(|| DEFAULT_REGION.to_string());
        if region.is_empty()
            || !region
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(format!(
                "region {region:?} may hold only letters, digits and `-`"
            ));
        }
        let prefix = prefix.unwrap_or_default();
        let prefix = prefix.trim_matches('/').to_string();
        check_prefix(&prefix)?;
        let default_style = match endpoint {
            Some(_) => UrlStyle::Path,
            None => UrlStyle::VirtualHost,
        };
        let endpoint = match endpoint {
            Some(endpoint) => endpoint,
            None => format!("https://s3.{region}.amazonaws.com")
                .parse()
                .map_err(|e| format!("no endpoint can be made of region {region:?}: {e}"))?,
        };
        let style = style.unwrap_or(default_style);
        if style == UrlStyle::VirtualHost && !has_host_name(&endpoint) {
            return Err(format!(
                "endpoint {endpoint} is an IP address, under which virtual-host addressing has no \
                 host name to put the bucket in: use (url_style path)"
            ));
        }
        if style == UrlStyle::VirtualHost && bucket.contains('.') {
            return Err(format!(
                "bucket {bucket:?} has a `.`, which virtual-host addressing cannot put in a \
                 host name under TLS: use (url_style path)"
            ));
        }
        Ok(S3Bucket {
            endpoint,
            bucket,
            region,
            prefix,
            style,
        })
    }

    /// The store's endpoint, e.g. `http://127.0.0.1:8333` (the bucket is not in it).
    pub fn endpoint(&self) -> &NodeUrl {
        &self.endpoint
    }

    /// The bucket's name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The region requests are signed for.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// The key prefix the cache lives under (no leading or trailing `/`; empty for the bucket's
    /// root).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// How objects are addressed.
    pub fn style(&self) -> UrlStyle {
        self.style
    }

    /// The object name of a path relative to the cache's root, e.g. `P/files/v4/ab/ab12...`.
    pub fn object_name(&self, relative: &str) -> String {
        match self.prefix.is_empty() {
            true => relative.to_string(),
            false => format!("{}/{relative}", self.prefix),
        }
    }

    /// The URL under which the cache's objects live (the bucket and prefix): the node's name in
    /// messages, `route` and the status file, and what makes two nodes the same node.
    pub fn node_url(&self) -> NodeUrl {
        let endpoint = self.endpoint.as_str();
        let base = match self.style {
            UrlStyle::Path => format!("{endpoint}/{}", self.bucket),
            UrlStyle::VirtualHost => {
                let (scheme, rest) = endpoint.split_once("://").expect("a checked URL");
                format!("{scheme}://{}.{rest}", self.bucket)
            }
        };
        let url = match self.prefix.is_empty() {
            true => base,
            false => format!("{base}/{}", self.prefix),
        };
        url.parse()
            .expect("a checked endpoint with a checked bucket and prefix is a URL")
    }
}

/// Whether the endpoint's host is a name (not an IPv4 or IPv6 address), so a bucket's name can
/// go in front of it.
fn has_host_name(endpoint: &NodeUrl) -> bool {
    let (_, rest) = endpoint.as_str().split_once("://").expect("a checked URL");
    let authority = rest.split('/').next().unwrap_or("");
    if authority.starts_with('[') {
        return false;
    }
    let host = authority.split(':').next().unwrap_or("");
    host.parse::<std::net::Ipv4Addr>().is_err()
}

/// S3's rules for bucket names (the strict ones every store accepts): 3 to 63 characters,
/// lowercase letters, digits, `.` and `-`, beginning and ending with a letter or digit.
fn check_bucket_name(name: &str) -> Result<(), String> {
    let valid = (3..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    match valid {
        true => Ok(()),
        false => Err(format!(
            "bucket name {name:?} must be 3 to 63 lowercase letters, digits, `.` or `-`, \
             beginning and ending with a letter or digit"
        )),
    }
}

/// A prefix is `/`-separated segments of letters, digits, `.`, `_` and `-`, none empty, `.` or
/// `..`: what every store and `aws s3 sync` take without escaping.
fn check_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() {
        return Ok(());
    }
    let segment_ok = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    };
    match prefix.split('/').all(segment_ok) {
        true => Ok(()),
        false => Err(format!(
            "prefix {prefix:?} must be `/`-separated names of letters, digits, `.`, `_` or `-`"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::config::tests::url;

    fn bucket(
        endpoint: Option<&str>,
        name: &str,
        prefix: Option<&str>,
        style: Option<UrlStyle>,
    ) -> Result<S3Bucket, String> {
        S3Bucket::new(
            endpoint.map(url),
            name.into(),
            None,
            prefix.map(String::from),
            style,
        )
    }

    #[test]
    fn node_urls_of_both_styles() {
        let b = bucket(
            Some("http://127.0.0.1:8333/"),
            "cache",
            Some("/team/a/"),
            None,
        )
        .unwrap();
        assert_eq!(b.style(), UrlStyle::Path);
        assert_eq!(b.prefix(), "team/a");
        assert_eq!(b.node_url().as_str(), "http://127.0.0.1:8333/cache/team/a");
        assert_eq!(b.object_name("files/v4/ab/ab00"), "team/a/files/v4/ab/ab00");
        let aws = bucket(None, "dune-cache", None, None).unwrap();
        assert_eq!(aws.style(), UrlStyle::VirtualHost);
        assert_eq!(aws.region(), DEFAULT_REGION);
        assert_eq!(
            aws.node_url().as_str(),
            "https://dune-cache.s3.us-east-1.amazonaws.com"
        );
        assert_eq!(aws.object_name("meta/v5/ab/ab00"), "meta/v5/ab/ab00");
        let forced = bucket(
            Some("https://store.example:9000"),
            "c1",
            None,
            Some(UrlStyle::VirtualHost),
        );
        assert!(forced.is_err(), "a 2-letter bucket name");
        let forced = bucket(
            Some("https://store.example:9000"),
            "c10",
            Some("x"),
            Some(UrlStyle::VirtualHost),
        )
        .unwrap();
        assert_eq!(
            forced.node_url().as_str(),
            "https://c10.store.example:9000/x"
        );
    }

    #[test]
    fn bad_names_and_prefixes_are_refused_in_words() {
        for name in ["ab", "Upper", "a_b", "-ab", "ab-", &"a".repeat(64)] {
            let e = bucket(None, name, None, None).unwrap_err();
            assert!(e.contains("bucket name"), "{name}: {e}");
        }
        for prefix in ["a//b", "a/../b", "a b", "a/./b", "ü"] {
            let e = bucket(Some("http://s"), "abc", Some(prefix), None).unwrap_err();
            assert!(e.contains("prefix"), "{prefix}: {e}");
        }
        for ip in [
            "http://127.0.0.1:8333",
            "http://[::1]:8333",
            "https://[::1]",
        ] {
            let e = bucket(Some(ip), "abc", None, Some(UrlStyle::VirtualHost)).unwrap_err();
            assert!(e.contains("IP address"), "{ip}: {e}");
            let path = bucket(Some(ip), "abc", Some("p"), None).unwrap();
            assert!(path.node_url().as_str().ends_with("/abc/p"), "{ip}");
        }
        let e = bucket(None, "a.b.c", None, None).unwrap_err();
        assert!(e.contains("url_style path"), "{e}");
        assert!(bucket(None, "a.b.c", None, Some(UrlStyle::Path)).is_ok());
        let e = S3Bucket::new(None, "abc".into(), Some("eu west".into()), None, None).unwrap_err();
        assert!(e.contains("region"), "{e}");
    }

    #[test]
    fn every_accepted_bucket_has_a_node_url() {
        let endpoints = [
            "http://a",
            "HTTPS://Store.Example:9000/",
            "http://store/s3/path",
            "http://10.0.0.1",
            "http://[::1]:8333",
            "http://[fe80::1]/x",
        ];
        for endpoint in endpoints.iter().map(|e| Some(*e)).chain([None]) {
            for name in ["abc", "a.b.c", "x-1"] {
                for prefix in [None, Some("p"), Some("/a/b.c/_d-e/")] {
                    for style in [None, Some(UrlStyle::Path), Some(UrlStyle::VirtualHost)] {
                        if let Ok(b) = bucket(endpoint, name, prefix, style) {
                            let url = b.node_url();
                            assert!(url.as_str().contains(name), "{url}");
                        }
                    }
                }
            }
        }
    }
}
