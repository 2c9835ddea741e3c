//! CPU time of processes and kernel threads from /proc, shared by the benchmarks that report
//! CPU (`bench vrrp`, `bench checks`).

use anyhow::{Context, Result};

/// CPU seconds (user + system) a process or thread has used so far.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').context("bad /proc stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11).context("short /proc stat")?.parse::<f64>()? + f.get(12).context("short /proc stat")?.parse::<f64>()?;
    // SAFETY: sysconf only reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz)
}

/// CPU seconds of the threaded-NAPI kernel threads (`napi/DEV-ID`) of the given devices: the
/// receive work a benchmark moved off the sender's CPU, reported apart.
pub fn napi_cpu(devs: &[&str]) -> f64 {
    let prefixes: Vec<String> = devs
        .iter()
        .map(|d| {
            let p = format!("napi/{d}-");
            // A thread's comm is cut to 15 bytes.
            p.get(..15).unwrap_or(&p).to_owned()
        })
        .collect();
    let mut total = 0.0;
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if prefixes.iter().any(|p| comm.starts_with(p.as_str())) {
            total += cpu_seconds(pid).unwrap_or(0.0);
        }
    }
    total
}
