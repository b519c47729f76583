//! The benchmarks' statistics and goal verdicts (`scripts/bench-lib.sh`, which every
//! `scripts/bench-*` sources), run through bash as the scripts run them: a reading that is not
//! there is never a goal met, and neither is a build through the cache that rebuilt rules.

use std::process::Command;

/// Runs each call in bash after sourcing the library, under the scripts' own
/// `set -euo pipefail`, and checks what it printed.
fn assert_prints(cases: &[(&str, &str)]) {
    for (call, want) in cases {
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!("set -euo pipefail; . scripts/bench-lib.sh; {call}"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("bash runs");
        assert!(out.status.success(), "{call}: {out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim_end(),
            *want,
            "{call}"
        );
    }
}

#[test]
fn an_empty_series_has_no_median_minimum_or_maximum() {
    assert_prints(&[
        ("median ''", ""),
        ("median ' '", ""),
        ("minimum ''", ""),
        ("maximum $'\\n'", ""),
        ("median '3 1 2'", "2"),
        ("median '4 1 3 2 '", "2.5"),
        ("minimum '3 1 2'", "1"),
        ("maximum '3 10 2'", "10"),
    ]);
}

#[test]
fn a_missing_reading_is_missing_never_met() {
    assert_prints(&[
        // bench-mount's memory goal without a reading, and a time goal over an empty series.
        ("verdict '' '<=' 100", "missing"),
        ("verdict 'n/a' '<=' 100", "missing"),
        (
            "verdict \"$(ratio \"$(median '')\" 2)\" '>=' 0.9",
            "missing",
        ),
        ("ratio 1 0", ""),
        ("ratio 3 2", "1.50"),
        ("verdict 41.2 '<=' 100", "met"),
        ("verdict 100.5 '<=' 100", "MISSED"),
        ("verdict 0.95 '>=' 0.9", "met"),
        ("verdict 0.5 '>=' 0.9", "MISSED"),
    ]);
}

#[test]
fn a_build_that_hit_fewer_rules_than_the_cache_holds_is_not_met() {
    assert_prints(&[
        // Fast enough, but 120 of 121 rules restored: one was rebuilt.
        ("build_verdict 0.9 0.67 120 121", "MISSED"),
        ("build_verdict 0.9 0.67 121 121", "met"),
        ("build_verdict 0.5 0.67 121 121", "MISSED"),
        // No time, or no hit count: nothing to judge.
        ("build_verdict \"$(median '')\" 0.67 121 121", "missing"),
        ("build_verdict 0.9 0.67 '' 121", "missing"),
    ]);
}
