//! postern's developer tasks: `cargo xtask setup | test | resilience | demo | vm-test | bench`.

mod bench;
mod demo;
mod process;
mod resilience;
mod setup;
mod test;
mod vm_test;

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
    /// Setup, lints, build everything, run every test on this kernel (the resilience suite
    /// last), then fail if a test left anything behind; then the end-to-end core on the other kernels in QEMU (vm-test).
    Test {
        /// Skip the QEMU guests (a quicker run while developing).
        #[arg(long)]
        no_vm: bool,
        /// Passed on to `cargo test --workspace` (e.g. a test name filter, `-- --nocapture`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        cargo_test_args: Vec<String>,
    },
    /// The resilience suite (hostile input, slowloris, thousands of connections, a crash under
    /// load, TLS scanners); writes its figures to docs/resilience.md (resilience-soak.md).
    Resilience {
        /// The long soak instead of the CI-sized run (adds testssl.sh's cipher and
        /// vulnerability checks).
        #[arg(long)]
        soak: bool,
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
    /// Run the end-to-end suite on Debian's cloud kernels, each booted in QEMU (vm-test/README.md).
    VmTest {
        /// Which kernel(s) to boot.
        #[arg(long, value_enum, default_value = "all")]
        kernel: vm_test::KernelChoice,
        /// Arguments for the e2e test binary in the guest (test name filters, `--test-threads`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        e2e_args: Vec<String>,
    },
    /// postern side by side with haproxy, nginx and stunnel (mutual TLS, one core each); writes
    /// docs/benchmarks.md and its charts.
    Bench {
        /// A short smoke run: one round of one second per measurement.
        #[arg(long)]
        quick: bool,
        /// Rounds, interleaved (default 3; 1 with --quick).
        #[arg(long)]
        rounds: Option<usize>,
        /// Measure this postern binary instead of building one (to compare builds).
        #[arg(long)]
        postern_bin: Option<std::path::PathBuf>,
        /// Where the report and charts go (default: docs/).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
        /// Only these proxies besides postern (haproxy, nginx, stunnel), comma-separated.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup => setup::run(),
        Command::Test {
            no_vm,
            cargo_test_args,
        } => test::run(&cargo_test_args).and_then(|()| {
            if no_vm {
                println!("test: QEMU guests skipped (--no-vm)");
                Ok(())
            } else {
                vm_test::run(vm_test::KernelChoice::All, &[])
            }
        }),
        Command::Resilience { soak } => resilience::run(soak),
        Command::VmTest { kernel, e2e_args } => vm_test::run(kernel, &e2e_args),
        Command::Bench {
            quick,
            rounds,
            postern_bin,
            out,
            only,
        } => bench::run(&bench::Options {
            quick,
            rounds,
            postern_bin,
            out,
            only,
        }),
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
