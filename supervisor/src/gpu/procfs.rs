//! Process ancestry from /proc, to attribute GPU memory to leases.
//!
//! A lease records the pid of the process that asked for it, but the memory is often used
//! by a child (a Python pipeline, an ffmpeg): a process whose parent chain reaches a
//! holder's pid is counted against that holder's lease, not as foreign use.

/// The parent of `pid`, or None when it is gone or is the init process.
pub fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: parse after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let ppid: u32 = rest.split_whitespace().nth(1)?.parse().ok()?;
    (ppid > 1).then_some(ppid)
}

/// `pid` itself, then its ancestors, nearest first (at most 64: a guard against loops).
pub fn lineage(pid: u32) -> impl Iterator<Item = u32> {
    std::iter::successors(Some(pid), |&p| parent(p)).take(64)
}

/// The cgroup paths of `pid` (one per hierarchy: `/proc/<pid>/cgroup`'s third field), empty
/// when it is gone. A pod's processes are found by these (`lease::scope`).
pub fn cgroups(pid: u32) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map(|text| {
            text.lines()
                .filter_map(|line| line.splitn(3, ':').nth(2))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// True while a process with this pid exists.
pub fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// The process group of `pid`, or None when it is gone.
pub fn group(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(2)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_finds_its_parent() {
        let me = std::process::id();
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let lineage: Vec<u32> = lineage(child.id()).collect();
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(lineage[0], child.id());
        assert!(lineage.contains(&me), "{lineage:?} should reach {me}");
    }

    #[test]
    fn a_process_has_cgroups_and_a_gone_one_none() {
        let mine = cgroups(std::process::id());
        assert!(
            !mine.is_empty() && mine.iter().all(|p| p.starts_with('/')),
            "{mine:?}"
        );
        assert!(cgroups(u32::MAX).is_empty());
    }
}
