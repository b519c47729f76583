//! How a build spent its wall time, for the benchmarks (`scripts/bench-dune`): runs a command and
//! appends to a file how long its main thread ran on a CPU and how long it waited for one
//! (runnable, on a run queue). The rest of the wall time it was asleep: waiting on a request to
//! the mount, the disk, a child.
//!
//! ```sh
//! cargo run --release --example wait-times -- --out FILE -- dune build
//! ```
//!
//! Why: a cold build through the mount is slower than a warm one by more than the network, and the
//! two kinds of wait call for different work. Time asleep is round trips Dune waits for, which
//! fetching and warming ahead remove; time waiting for a CPU is the fetching's own CPU (and, in
//! the benchmarks, the boxes' and relays') taken from the machine Dune runs on, which only less
//! CPU per entry removes. The kernel counts both per thread (`/proc/PID/schedstat`: nanoseconds
//! on a CPU, nanoseconds runnable on a run queue), but only while the thread exists, so the
//! command is left a zombie when it exits (`waitid` with `WNOWAIT`), read, then reaped.
//!
//! The line appended: `ON_CPU_S QUEUED_S` (seconds, three decimals), the main thread's only
//! (Dune restores on its main thread; its children's time, if any, is not in it). The exit
//! status is the command's.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

use clap::Parser;
use rustix::process::{waitid, Pid, WaitId, WaitIdOptions};

#[derive(Parser)]
#[command(about = "Runs a command; appends its main thread's time on a CPU and queued for one")]
struct Args {
    /// The file a line `ON_CPU_S QUEUED_S` is appended to.
    #[arg(long)]
    out: PathBuf,
    /// The command and its arguments.
    #[arg(required = true, last = true)]
    command: Vec<String>,
}

/// Seconds on a CPU and waiting for one, from a `/proc/PID/schedstat` line
/// (`RUN_NS WAIT_NS SLICES`).
fn parse_schedstat(line: &str) -> Option<(f64, f64)> {
    let mut fields = line.split_whitespace().map(str::parse::<u64>);
    let on_cpu = fields.next()?.ok()?;
    let queued = fields.next()?.ok()?;
    Some((on_cpu as f64 / 1e9, queued as f64 / 1e9))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut child = match Command::new(&args.command[0])
        .args(&args.command[1..])
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            eprintln!("wait-times: cannot run {}: {e}", args.command[0]);
            return ExitCode::from(127);
        }
    };
    let pid = Pid::from_raw(child.id() as i32).expect("a child's pid is positive");
    // Waits for the exit but leaves the child unreaped, so its schedstat is still there.
    let exited = waitid(
        WaitId::Pid(pid),
        WaitIdOptions::EXITED | WaitIdOptions::NOWAIT,
    );
    let times = exited.ok().and_then(|_| {
        let line = fs::read_to_string(format!("/proc/{}/schedstat", child.id())).ok()?;
        parse_schedstat(&line)
    });
    let status = child.wait().expect("reaping the child");
    match times {
        Some((on_cpu, queued)) => {
            let written = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&args.out)
                .and_then(|mut out| writeln!(out, "{on_cpu:.3} {queued:.3}"));
            if let Err(e) = written {
                eprintln!("wait-times: cannot append to {}: {e}", args.out.display());
                return ExitCode::from(125);
            }
        }
        None => eprintln!("wait-times: no schedstat for the command (not Linux, or no schedstats)"),
    }
    match status.code() {
        Some(code) => ExitCode::from(code as u8),
        None => ExitCode::from(128),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_schedstat;

    #[test]
    fn a_schedstat_line_is_seconds_on_a_cpu_and_queued() {
        assert_eq!(
            parse_schedstat("1500000000 250000000 42\n"),
            Some((1.5, 0.25))
        );
        assert_eq!(parse_schedstat("12 x 3"), None);
        assert_eq!(parse_schedstat(""), None);
    }
}
