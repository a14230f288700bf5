//! The CPU time this process has used, for the bench's `cpu_us_per_cycle`.
//!
//! On the shared 2-core VM the cycles per second of one build moved by ±30 % between runs
//! minutes apart, while the CPU a cycle costs moved by a few percent (docs/benchmarks.md,
//! session 16), so two builds compare in fewer rounds by their CPU per cycle. Read from
//! `/proc/self/stat`: the user and system time of all the process's threads. A store's
//! server (PostgreSQL) is another process and is not counted. `None` without procfs.

use std::time::Duration;

/// Clock ticks per second of the times in `/proc` (`USER_HZ`: 100 in Linux's ABI).
const TICKS_PER_SEC: u64 = 100;

/// User + system CPU time of this process so far.
pub(crate) fn process_cpu_time() -> Option<Duration> {
    parse_stat(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

fn parse_stat(stat: &str) -> Option<Duration> {
    // Field 2, the command name, is in parentheses and may hold spaces and parentheses:
    // count from the last ')'. The field after it is field 3 (state); utime is field 14,
    // stime field 15.
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    let utime: u64 = fields.nth(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis(
        (utime + stime) * 1000 / TICKS_PER_SEC,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_user_and_system_time_past_a_name_with_spaces() {
        let stat = "4242 (tokio (rt) 1) R 1 4242 4242 0 -1 4194560 2816 0 0 0 1234 56 0 0 20 0 \
                    4 0 98765 1073741824 4321 18446744073709551615";
        assert_eq!(parse_stat(stat), Some(Duration::from_millis(12_900)));
        assert_eq!(parse_stat("4242 (cut short) R 1"), None);
        assert_eq!(parse_stat("no name at all"), None);
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn this_process_has_used_some_cpu() {
        let spin = std::time::Instant::now();
        while spin.elapsed() < Duration::from_millis(30) {
            std::hint::black_box(0);
        }
        assert!(process_cpu_time().expect("procfs on Linux") > Duration::ZERO);
    }
}
