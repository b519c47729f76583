//! The box's request routing on arbitrary paths and queries: it must never panic, and what it
//! accepts must be exactly one of the protocol's forms, spelled canonically. Above all, an
//! entry's file path — the only thing joined to the box's root — has no `..`, stays three
//! components under the root, and reads back as the same entry.
//!
//! Input layout: the whole input, as text (invalid UTF-8 replaced), is a request target; it is
//! routed split at its first `?` (path and query, as an HTTP server splits it) and also whole as
//! a path without a query.
#![no_main]

use std::path::Component;

use dune_cachefs::boxd::route::{parse, Route};
use dune_cachefs::dune::layout::{Entry, EntryKind};
use libfuzzer_sys::fuzz_target;

/// The entry's file path, checked: no `..`, three components under the root, read back as the
/// same entry.
fn checked_path(entry: Entry) -> String {
    let relative = entry.relative_path();
    let text = relative.to_str().expect("entry paths are ASCII");
    assert!(!text.contains(".."), "{relative:?}");
    assert!(
        relative.components().count() == 4
            && relative
                .components()
                .all(|c| matches!(c, Component::Normal(_))),
        "{relative:?} is not <top>/<version>/<hh>/<key>"
    );
    assert_eq!(Entry::from_relative_path(&relative), Some(entry));
    text.to_string()
}

fn check(path: &str, query: Option<&str>) {
    let Ok(route) = parse(path, query) else {
        return;
    };
    assert!(query.is_none(), "accepted a query: {path:?} ? {query:?}");
    let canonical = match route {
        Route::Entry(entry) => format!("/{}", checked_path(entry)),
        Route::Hint(entry) => {
            assert_ne!(
                entry.kind,
                EntryKind::File,
                "a hint of an artifact: {path:?}"
            );
            format!("/_hints/{}", checked_path(entry))
        }
        Route::Listing(kind, shard) => format!("/{kind}/{shard}/"),
        Route::Shards(kind) => format!("/{kind}/"),
        Route::Status => "/_status".to_string(),
        Route::Metrics => "/metrics".to_string(),
        Route::Collisions => "/_collisions".to_string(),
        Route::Trim => "/_trim".to_string(),
        Route::Drop => "/_drop".to_string(),
    };
    assert_eq!(
        path, canonical,
        "{route:?} was accepted from another spelling"
    );
}

fuzz_target!(|data: &[u8]| {
    let target = String::from_utf8_lossy(data);
    match target.split_once('?') {
        Some((path, query)) => check(path, Some(query)),
        None => check(&target, None),
    }
    check(&target, None);
});
