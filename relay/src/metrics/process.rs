//! The process's own metrics, read from `/proc/self` at each scrape under the names every
//! Prometheus client uses (`process_cpu_seconds_total`, `process_resident_memory_bytes`, ...).
//! Where there is no `/proc` (not Linux), there are none.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

/// `/proc` counts CPU time in ticks of `USER_HZ`, which Linux fixes at 100 for every
/// architecture in what it shows user space.
const TICKS_PER_SECOND: f64 = 100.0;

/// The page size `/proc/self/stat` counts resident memory in, where `status` is unreadable.
const KIB: f64 = 1024.0;

/// The process's CPU time, memory, descriptors and start time, read at each scrape: register
/// it with a [`Registry`](prometheus_client::registry::Registry) whose other metrics it joins.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessCollector;

/// What one scrape reads.
#[derive(Debug, Default, PartialEq)]
struct Figures {
    cpu_seconds: f64,
    resident_bytes: f64,
    virtual_bytes: f64,
    open_fds: f64,
    max_fds: Option<f64>,
    start_time_seconds: Option<f64>,
}

/// The figures in `stat` (`/proc/self/stat`), `status` (`/proc/self/status`), `limits`
/// (`/proc/self/limits`) and the system's `btime` (`/proc/stat`), with `open_fds` counted
/// apart: plain parsing, tested without a process.
fn parse(stat: &str, status: &str, limits: &str, system: &str, open_fds: usize) -> Option<Figures> {
    // The command name, in parentheses, may hold spaces: the fields follow its last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime) and 22 (starttime), counted from the pid as 1.
    let field = |n: usize| fields.get(n - 3)?.parse::<f64>().ok();
    let cpu_seconds = (field(14)? + field(15)?) / TICKS_PER_SECOND;
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(key))?
            .split_whitespace()
            .next()?
            .parse::<f64>()
            .ok()
            .map(|kib| kib * KIB)
    };
    let boot = system
        .lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|s| s.trim().parse::<f64>().ok());
    let start_time_seconds = boot
        .zip(field(22))
        .map(|(boot, ticks)| boot + ticks / TICKS_PER_SECOND);
    let max_fds = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .and_then(|line| line.split_whitespace().nth(3)?.parse::<f64>().ok());
    Some(Figures {
        cpu_seconds,
        resident_bytes: kib("VmRSS:")?,
        virtual_bytes: kib("VmSize:")?,
        open_fds: open_fds as f64,
        max_fds,
        start_time_seconds,
    })
}

fn read() -> Option<Figures> {
    let text = |path| std::fs::read_to_string(path).ok();
    let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count();
    parse(
        &text("/proc/self/stat")?,
        &text("/proc/self/status")?,
        &text("/proc/self/limits").unwrap_or_default(),
        &text("/proc/stat").unwrap_or_default(),
        open_fds,
    )
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let Some(figures) = read() else {
            return Ok(());
        };
        let cpu = ConstCounter::new(figures.cpu_seconds);
        let metric = encoder.encode_descriptor(
            "process_cpu",
            "User and system CPU time spent",
            Some(&Unit::Seconds),
            cpu.metric_type(),
        )?;
        cpu.encode(metric)?;
        let gauges = [
            (
                "process_resident_memory",
                "Resident memory size",
                Some(&Unit::Bytes),
                Some(figures.resident_bytes),
            ),
            (
                "process_virtual_memory",
                "Virtual memory size",
                Some(&Unit::Bytes),
                Some(figures.virtual_bytes),
            ),
            (
                "process_open_fds",
                "Open file descriptors",
                None,
                Some(figures.open_fds),
            ),
            (
                "process_max_fds",
                "The most file descriptors the process may open",
                None,
                figures.max_fds,
            ),
            (
                "process_start_time",
                "When the process started, in seconds since the Unix epoch",
                Some(&Unit::Seconds),
                figures.start_time_seconds,
            ),
        ];
        for (name, help, unit, value) in gauges {
            let Some(value) = value else {
                continue;
            };
            let gauge = ConstGauge::new(value);
            let metric = encoder.encode_descriptor(name, help, unit, gauge.metric_type())?;
            gauge.encode(metric)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_give_the_figures() {
        let stat = "4242 (sesame (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 \
                    5 0 1000 123456 789 18446744073709551615";
        let status = "Name:\tsesame\nVmSize:\t  2048 kB\nVmRSS:\t   512 kB\n";
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 4096                 files\n";
        let system = "cpu  1 2 3\nbtime 1700000000\n";
        let figures = parse(stat, status, limits, system, 7).unwrap();
        assert_eq!(
            figures,
            Figures {
                cpu_seconds: 3.0,
                resident_bytes: 512.0 * 1024.0,
                virtual_bytes: 2048.0 * 1024.0,
                open_fds: 7.0,
                max_fds: Some(1024.0),
                start_time_seconds: Some(1_700_000_010.0),
            }
        );
        assert!(parse("garbage", status, "", "", 0).is_none());
    }

    #[test]
    fn this_process_has_figures() {
        let figures = read().expect("running on Linux");
        assert!(figures.resident_bytes > 0.0 && figures.open_fds > 0.0);
    }
}
