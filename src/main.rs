//! The `dune-cachefs` command: parse the command line, run one subcommand, map its result to an
//! exit code in one place.

mod commands;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// A shared Dune build cache, presented as an ordinary local cache directory.
#[derive(Parser)]
#[command(name = "dune-cachefs", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the Dune file key of each FILE (`<key>  <file>`); the executable bit comes from its mode.
    Key(commands::key::KeyArgs),
    /// Check FILE against KEY: exit 0 when it matches, 1 when it does not.
    Verify(commands::key::VerifyArgs),
    /// Verify every entry of a Dune cache directory (db/); list each bad one and exit non-zero.
    Fsck(commands::fsck::FsckArgs),
    /// Shrink a Dune cache directory to at most --size bytes, the way `dune cache trim` does.
    Trim(commands::trim::TrimArgs),
    /// Print the URL of the box that owns KEY under a cluster config.
    Route(commands::route::RouteArgs),
    /// Print a metadata entry readably (or as JSON).
    Meta(commands::meta::MetaArgs),
    /// Run a cache box: an HTTP server that stores verified entries in a Dune db/ layout.
    Box(commands::serve_box::BoxArgs),
    /// Upload a local Dune cache to the boxes that own its entries.
    Push(commands::push::PushArgs),
    /// Move the entries whose owner changed under a config naming its previous table.
    Rebalance(commands::rebalance::RebalanceArgs),
    /// Fetch one entry from the box that owns it, verified.
    Get(commands::get::GetArgs),
    /// Mount the cache: the local store, plus every box's entries fetched on first open.
    Mount(commands::mount::MountArgs),
    /// Show what a mount is doing: its boxes, hit rate, fetches, uploads and last errors.
    Status(commands::status::StatusArgs),
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    if commands::mount_helper::invoked_as_helper() {
        let args: Vec<_> = std::env::args_os().skip(1).collect();
        return exit_code(commands::mount_helper::run(&args));
    }
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Key(args) => commands::key::run_key(args),
        Command::Verify(args) => commands::key::run_verify(args),
        Command::Fsck(args) => commands::fsck::run(args),
        Command::Trim(args) => commands::trim::run(args),
        Command::Route(args) => commands::route::run(args),
        Command::Meta(args) => commands::meta::run(args),
        Command::Box(args) => commands::serve_box::run(args),
        Command::Push(args) => commands::push::run(args),
        Command::Rebalance(args) => commands::rebalance::run(args),
        Command::Get(args) => commands::get::run(args),
        Command::Mount(args) => commands::mount::run(args),
        Command::Status(args) => commands::status::run(args),
    };
    exit_code(result)
}

/// A command's exit code: its own answer, or 2 after printing its error.
fn exit_code(result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("dune-cachefs: {}", describe(&err));
            ExitCode::from(2)
        }
    }
}

/// The error and its causes on one line. The library's errors already quote their cause
/// ("cannot open X: No such file or directory"), so a cause whose text the line already ends
/// with is not repeated.
fn describe(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if line.ends_with(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// A reader that closed our stdout early (`| head`) is not a failure of ours.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use super::describe;

    #[test]
    fn causes_already_quoted_are_not_repeated() {
        let io = std::io::Error::from_raw_os_error(2);
        let quoted = anyhow::Error::new(std::io::Error::new(io.kind(), io.to_string()))
            .context(format!("cannot open /x: {io}"))
            .context("checking /db");
        assert_eq!(
            describe(&quoted),
            format!("checking /db: cannot open /x: {io}")
        );
        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(describe(&plain), "outer: inner");
    }
}
