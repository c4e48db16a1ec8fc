//! Finds and removes what tests left behind.

use std::path::Path;
use std::time::Duration;

use crate::mesh::{cgroup2_mount, remove_cgroup, TEST_CGROUP_PREFIX};
use crate::netns::{destroy, TEST_NETNS_PREFIX};
use crate::postern::{remove_bpffs_dir, TEST_BPFFS_PREFIX};
use crate::process::{stop_process, BPFFS_ROOT};

/// Removes every leftover of the test bed and says what it found: processes started with a
/// test bpffs dir (`--bpffs /sys/fs/bpf/postern-test-*`), network namespaces named `pt-*`,
/// cgroups named `postern-test-*`, and `/sys/fs/bpf/postern-test-*` dirs. An empty list means the tests cleaned up after themselves.
/// Do not call it while tests run.
pub fn sweep_leftovers() -> Vec<String> {
    let mut found = Vec::new();
    let bpffs_pattern = Path::new(BPFFS_ROOT).join(TEST_BPFFS_PREFIX);
    let bpffs_pattern = bpffs_pattern.to_string_lossy();

    for (pid, cmdline) in processes() {
        if pid != std::process::id() && cmdline.iter().any(|arg| arg.starts_with(&*bpffs_pattern)) {
            let result = stop_process(pid, Duration::from_secs(2));
            found.push(note(
                format!("process {pid}: {}", cmdline.join(" ")),
                result,
            ));
        }
    }
    for name in names_in(Path::new("/run/netns"), TEST_NETNS_PREFIX) {
        let result = destroy(&name);
        found.push(note(format!("netns {name}"), result));
    }
    if let Ok(root) = cgroup2_mount() {
        for name in names_in(&root, TEST_CGROUP_PREFIX) {
            let result = remove_cgroup(&root.join(&name));
            found.push(note(
                format!("cgroup {}", root.join(name).display()),
                result,
            ));
        }
    }
    for name in names_in(Path::new(BPFFS_ROOT), TEST_BPFFS_PREFIX) {
        let dir = Path::new(BPFFS_ROOT).join(name);
        let result = remove_bpffs_dir(&dir);
        found.push(note(format!("bpffs dir {}", dir.display()), result));
    }
    found
}

fn note(what: String, result: anyhow::Result<()>) -> String {
    match result {
        Ok(()) => what,
        Err(e) => format!("{what} (could not remove it: {e:#})"),
    }
}

/// Sorted names of the entries of `dir` that start with `prefix`.
fn names_in(dir: &Path, prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(prefix))
        .collect();
    names.sort();
    names
}

/// Every process's pid and argv.
fn processes() -> Vec<(u32, Vec<String>)> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let raw = std::fs::read(entry.path().join("cmdline")).ok()?;
            let argv = raw
                .split(|&b| b == 0)
                .filter(|arg| !arg.is_empty())
                .map(|arg| String::from_utf8_lossy(arg).into_owned())
                .collect();
            Some((pid, argv))
        })
        .collect()
}
