//! `/metrics`: the service's counters in Prometheus' text format (0.0.4).

use std::fmt::Write;

use super::board::Board;

pub fn render(board: &Board) -> String {
    let mut out = String::new();
    let c = &board.counters;
    let mut family = |name: &str, kind: &str, help: &str, samples: &[(&str, f64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    family(
        "colonnade_workers",
        "gauge",
        "Connected workers, by kind.",
        &[("{kind=\"native\"}", board.native as f64), ("{kind=\"browser\"}", board.browser as f64)],
    );
    family("colonnade_tasks_issued_total", "counter", "Tasks sent to workers, copies included.", &[("", c.tasks_issued as f64)]);
    family("colonnade_tasks_completed_total", "counter", "Results verified and assembled.", &[("", c.tasks_completed as f64)]);
    family("colonnade_tasks_rejected_total", "counter", "Results that failed verification.", &[("", c.tasks_rejected as f64)]);
    family("colonnade_tasks_expired_total", "counter", "Leases that ran out before a result came.", &[("", c.tasks_expired as f64)]);
    family("colonnade_flops_total", "counter", "Floating-point operations of verified results.", &[("", c.flops)]);
    family(
        "colonnade_bytes_total",
        "counter",
        "WebSocket bytes, by direction as the master sees it.",
        &[("{direction=\"sent\"}", c.bytes_sent as f64), ("{direction=\"received\"}", c.bytes_received as f64)],
    );
    let states = board.jobs_by_state();
    let labels: Vec<String> = states.keys().map(|s| format!("{{state=\"{s}\"}}")).collect();
    let samples: Vec<(&str, f64)> = labels.iter().zip(states.values()).map(|(l, &n)| (l.as_str(), n as f64)).collect();
    family("colonnade_jobs", "gauge", "Jobs known to this master, by state.", &samples);
    family(
        "colonnade_verify_seconds_total",
        "counter",
        "Time spent precomputing verification, by when: while A was read, or after the plan (not counted: a resumed job's, built as it starts).",
        &[("{phase=\"while_reading\"}", c.verify_seconds_while_reading), ("{phase=\"after_plan\"}", c.verify_seconds_after_plan)],
    );
    let _ = writeln!(out, "# HELP colonnade_job_duration_seconds Jobs from submission to C stored.\n# TYPE colonnade_job_duration_seconds histogram");
    let d = &c.durations;
    for (bound, count) in d.bounds.iter().zip(&d.counts) {
        let _ = writeln!(out, "colonnade_job_duration_seconds_bucket{{le=\"{bound}\"}} {count}");
    }
    let _ = writeln!(out, "colonnade_job_duration_seconds_bucket{{le=\"+Inf\"}} {}", d.count);
    let _ = writeln!(out, "colonnade_job_duration_seconds_sum {}", d.sum);
    let _ = writeln!(out, "colonnade_job_duration_seconds_count {}", d.count);
    out
}
