//! What Linux says about a process: resident memory (now and peak) and CPU time.
//! Used for the benchmark's figures; `None` where /proc is not there.

use std::time::Duration;

/// Peak resident set (VmHWM) of `pid`, or of this process.
pub fn peak_rss_bytes(pid: Option<u32>) -> Option<u64> {
    status_bytes(pid, "VmHWM:")
}

/// Resident set now (VmRSS) of `pid`, or of this process.
pub fn rss_bytes(pid: Option<u32>) -> Option<u64> {
    status_bytes(pid, "VmRSS:")
}

fn status_bytes(pid: Option<u32>, field: &str) -> Option<u64> {
    let path = pid.map_or("/proc/self/status".to_owned(), |p| format!("/proc/{p}/status"));
    let status = std::fs::read_to_string(path).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// User plus system CPU time of this process so far.
pub fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // The kernel's USER_HZ is 100 on every Linux platform we run on.
    Some(Duration::from_millis(ticks * 10))
}

/// CPU time of the calling thread so far, to the nanosecond. Cheap enough
/// (one system call, no file) to time each result check.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub fn thread_cpu_time() -> Option<Duration> {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `t` is a valid timespec for the call to fill.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    (rc == 0).then(|| Duration::new(t.tv_sec as u64, t.tv_nsec as u32))
}

#[cfg(not(target_os = "linux"))]
pub fn thread_cpu_time() -> Option<Duration> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        assert!(peak_rss_bytes(None).is_some_and(|b| b > 1 << 20));
        let before = cpu_time().unwrap();
        let mut x = 0u64;
        for i in 0..50_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        std::hint::black_box(x);
        assert!(cpu_time().unwrap() >= before);
    }

    #[test]
    fn counts_this_threads_work_and_not_its_sleep() {
        let before = thread_cpu_time().unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let slept = thread_cpu_time().unwrap() - before;
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_millis(200) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let worked = thread_cpu_time().unwrap() - before - slept;
        assert!(slept < Duration::from_millis(50), "{slept:?} of CPU while asleep");
        assert!(worked > Duration::from_millis(50), "{worked:?} of CPU in 200 ms of spinning");
    }
}
