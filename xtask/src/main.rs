//! postern's developer tasks: `cargo xtask setup | test | demo`.

mod demo;
mod process;
mod setup;
mod test;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "postern's developer tasks (run them as root)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install the prerequisites (apt packages, bpf-linker, nightly rust-src, bpffs); idempotent.
    Setup,
    /// Setup, build everything, run every test, then fail if a test left anything behind.
    Test {
        /// Passed on to `cargo test --workspace` (e.g. a test name filter, `-- --nocapture`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        cargo_test_args: Vec<String>,
    },
    /// Re-enact the seed (Istio's "Ingress Sidecar TLS Termination") with postern, step by step.
    Demo {
        /// Leave the demo running and print the commands to try.
        #[arg(long)]
        keep: bool,
        /// Tear down a demo left running by `--keep` (or interrupted).
        #[arg(long, conflicts_with = "keep")]
        down: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup => setup::run(),
        Command::Test { cargo_test_args } => test::run(&cargo_test_args),
        Command::Demo { keep, down } => {
            if down {
                demo::down()
            } else {
                demo::run(keep)
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
