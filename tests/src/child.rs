//! The processes a test starts: signals, waits with a deadline, reaping, their logs and memory.

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};

/// The last lines of a log file, under a title, for failure messages.
pub(crate) fn log_tail(path: &Path, title: &str) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<_> = text.lines().collect();
    format!(
        "--- last lines of {title} ---\n{}",
        lines[lines.len().saturating_sub(30)..].join("\n")
    )
}

/// Kills a child, if any, and waits for it.
pub(crate) fn reap(child: Option<Child>) {
    if let Some(mut child) = child {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Sends a signal (`TERM`, `KILL`, ...) to a child.
pub(crate) fn signal(child: &Child, name: &str) -> Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status()?;
    if !status.success() {
        bail!("kill -{name} failed");
    }
    Ok(())
}

/// Waits for a child to exit, killing it after `limit`.
pub(crate) fn wait_child(child: &mut Child, limit: Duration) -> Result<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("process {} did not exit within {limit:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The sum of the first `fields` CPU-time fields of /proc/PID/stat from utime (utime, stime,
/// then the children's cutime, cstime), in clock ticks (100 a second here). `pid` may be
/// `self`.
pub fn proc_cpu_ticks(pid: &str, fields: usize) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after_name = text
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow!("odd /proc/{pid}/stat"))?;
    // utime is field 14 of the line, the 12th after the name.
    Ok(after_name
        .split_whitespace()
        .skip(11)
        .take(fields)
        .filter_map(|v| v.parse::<u64>().ok())
        .sum())
}

/// A field of /proc/PID/status, in bytes.
pub fn proc_memory(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("no {field} for process {pid}"))?;
    Ok(kib * 1024)
}
