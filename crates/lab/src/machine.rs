//! What a result was measured on: CPU, cores, kernel, OS, memory, commit, date.

use std::process::Command;

/// The machine and the code a comparison ran on.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Machine {
    /// `model name` from /proc/cpuinfo.
    pub cpu_model: String,
    /// CPUs online.
    pub cpus: usize,
    /// The kernel release.
    pub kernel: String,
    /// `PRETTY_NAME` from /etc/os-release.
    pub os: String,
    /// Total memory in MiB.
    pub memory_mib: u64,
    /// `git rev-parse --short HEAD` (with `-dirty` for uncommitted changes), when the
    /// comparison runs inside a git checkout.
    pub commit: Option<String>,
    /// The c10k version.
    pub c10k_version: String,
    /// When the comparison started (HTTP date format, UTC).
    pub date: String,
}

fn first_value(path: &str, key: &str, sep: char) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .filter_map(|l| l.split_once(sep))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim().trim_matches('"').to_string())
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl Machine {
    /// Reads the machine's description now.
    pub fn detect() -> Machine {
        let cpus = std::fs::read_to_string("/proc/cpuinfo")
            .map(|t| t.lines().filter(|l| l.starts_with("processor")).count())
            .unwrap_or(0)
            .max(1);
        let commit = git(&["rev-parse", "--short", "HEAD"]).map(|c| {
            match git(&["status", "--porcelain", "--untracked-files=no"]) {
                Some(s) if !s.is_empty() => format!("{c}-dirty"),
                _ => c,
            }
        });
        Machine {
            cpu_model: first_value("/proc/cpuinfo", "model name", ':')
                .unwrap_or_else(|| "unknown CPU".into()),
            cpus,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "unknown".into()),
            os: first_value("/etc/os-release", "PRETTY_NAME", '=')
                .unwrap_or_else(|| "unknown".into()),
            memory_mib: first_value("/proc/meminfo", "MemTotal", ':')
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                .map_or(0, |kib| kib / 1024),
            commit,
            c10k_version: env!("CARGO_PKG_VERSION").into(),
            date: httpdate::fmt_http_date(std::time::SystemTime::now()),
        }
    }

    /// One line for a report.
    pub fn describe(&self) -> String {
        format!(
            "{}, {} CPUs, {} MiB, kernel {}, {}",
            self.cpu_model, self.cpus, self.memory_mib, self.kernel, self.os
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_something_sane() {
        let m = Machine::detect();
        assert!(m.cpus >= 1);
        assert!(!m.kernel.is_empty());
        assert!(m.date.ends_with("GMT"));
        assert!(m.describe().contains(&m.kernel));
    }
}
