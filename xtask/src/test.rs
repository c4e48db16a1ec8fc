//! `cargo xtask test`: setup, lints (rustfmt, clippy with warnings denied), build everything,
//! run every test (the resilience suite after the others), and fail if anything was left behind (test network namespaces, test bpffs
//! dirs, test posterns).

use anyhow::{bail, Result};
use postern_testbed::{require_root, sweep_leftovers};

use crate::process::{cargo, run as run_command};
use crate::resilience::Report;

pub fn run(cargo_test_args: &[String]) -> Result<()> {
    require_root()?;
    crate::setup::run()?;

    let stale = sweep_leftovers();
    if !stale.is_empty() {
        println!("test: removed leftovers of an earlier run:");
        for item in &stale {
            println!("  {item}");
        }
    }

    run_command(cargo().args(["fmt", "--all", "--", "--check"]))?;
    // `--all-targets` leaves out targets with `test = false`: the resilience suite is named.
    run_command(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--test",
        "resilience",
        "--",
        "-D",
        "warnings",
    ]))?;
    run_command(cargo().args(["build", "--workspace", "--all-targets"]))?;
    let tests = run_command(cargo().args(["test", "--workspace"]).args(cargo_test_args))
        // After the e2e suite: the resilience suite, with its report under the target dir.
        .and_then(|()| crate::resilience::run_suite(false, Report::Target));

    let leftovers = sweep_leftovers();
    if !leftovers.is_empty() {
        eprintln!(
            "test: FAILED: the tests left {} thing(s) behind (now removed):",
            leftovers.len()
        );
        for item in &leftovers {
            eprintln!("  {item}");
        }
    }
    match (tests, leftovers.is_empty()) {
        (Err(e), true) => Err(e),
        (Err(e), false) => Err(e.context("and the tests left things behind")),
        (Ok(()), false) => bail!("the tests passed but left things behind (listed above)"),
        (Ok(()), true) => {
            println!("test: all tests passed and nothing was left behind");
            Ok(())
        }
    }
}
