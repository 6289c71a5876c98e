//! What a server process costs, read from `/proc`.

use anyhow::{Context, Result};

/// Resident memory of `pid`, in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("process {pid}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")
}

/// CPU time (user + system) of `pid` so far, in microseconds.
pub fn cpu_us(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("process {pid}"))?;
    // Fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')').context("bad stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11).context("utime")?.parse()?;
    let stime: u64 = fields.get(12).context("stime")?.parse()?;
    let hz = 100; // USER_HZ on Linux
    Ok((utime + stime) * 1_000_000 / hz)
}

/// Total CPU of several processes (a server and its Redis, say).
pub fn cpu_us_all(pids: &[u32]) -> Result<u64> {
    pids.iter().map(|p| cpu_us(*p)).sum()
}
