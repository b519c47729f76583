//! A progress bar on a terminal (stderr) for the commands that move many entries, and nothing
//! otherwise, so logs and pipes stay clean.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::Instant;

use dune_cachefs::upload::push::Progress;

/// How many characters wide the bar is.
const WIDTH: u64 = 30;

/// Redraws at most ten times a second, and once more at the end.
pub struct ProgressLine {
    enabled: bool,
    last_draw: Mutex<Option<Instant>>,
}

impl ProgressLine {
    /// A bar on stderr if it is a terminal.
    pub fn new() -> ProgressLine {
        ProgressLine {
            enabled: std::io::stderr().is_terminal(),
            last_draw: Mutex::new(None),
        }
    }

    /// Shows `p`.
    pub fn show(&self, p: Progress) {
        if !self.enabled {
            return;
        }
        let mut last = self.last_draw.lock().unwrap_or_else(|e| e.into_inner());
        let due = last.is_none_or(|t| t.elapsed().as_millis() >= 100) || p.done == p.total;
        if due {
            *last = Some(Instant::now());
            eprint!("\r{} ", line(p));
            let _ = std::io::stderr().flush();
        }
    }

    /// Ends the line the bar is on.
    pub fn finish(&self) {
        if self.enabled {
            eprintln!();
        }
    }
}

/// `[#####.....] 12/40 entries, 0 failed`.
fn line(p: Progress) -> String {
    let filled = (p.done * WIDTH).checked_div(p.total).unwrap_or(WIDTH) as usize;
    format!(
        "[{}{}] {}/{} entries, {} failed",
        "#".repeat(filled),
        ".".repeat(WIDTH as usize - filled),
        p.done,
        p.total,
        p.failed
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_fills_with_the_entries_done() {
        let p = |done, total| Progress {
            done,
            total,
            failed: 1,
        };
        assert_eq!(
            line(p(0, 10)),
            format!("[{}] 0/10 entries, 1 failed", ".".repeat(30))
        );
        assert_eq!(
            line(p(5, 10)),
            format!(
                "[{}{}] 5/10 entries, 1 failed",
                "#".repeat(15),
                ".".repeat(15)
            )
        );
        assert_eq!(
            line(p(0, 0)),
            format!("[{}] 0/0 entries, 1 failed", "#".repeat(30))
        );
    }
}
