//! One module per subcommand: its arguments (clap) and its `run`, which returns the exit code.
//! Exit code 2 is reserved for errors (reported by `main`); 0 and 1 are each command's answer.

mod cluster_args;
pub mod fsck;
pub mod get;
pub mod key;
pub mod meta;
pub mod mount;
pub mod mount_helper;
mod progress;
pub mod push;
pub mod rebalance;
pub mod route;
pub mod serve_box;
pub mod status;
pub mod trim;
