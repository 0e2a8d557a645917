//! `GET /metrics`: host-wide counters in the Prometheus text format, for the operator (no
//! capsule ids, no team: only counts). Shows the start and teardown queues and the teardowns
//! that failed and are being retried, so a stuck one is never silent.

use std::fmt::Write;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use crate::AppState;

pub(super) async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let c = &state.capsules;
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, kind: &str, samples: &[(String, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    let by_status: Vec<(String, u64)> = c
        .status_counts()
        .into_iter()
        .map(|(s, n)| (format!("{{status=\"{s}\"}}"), n as u64))
        .collect();
    gauge(
        "wrenn_capsules",
        "Live capsules by status.",
        "gauge",
        &by_status,
    );
    for (lane, what, l) in [
        ("starts", "capsule starts", c.starts()),
        ("teardowns", "capsule teardowns", c.stops()),
    ] {
        gauge(
            &format!("wrenn_{lane}_queued"),
            &format!("{what} waiting for their turn."),
            "gauge",
            &[(String::new(), l.queued() as u64)],
        );
        gauge(
            &format!("wrenn_{lane}_running"),
            &format!("{what} running now."),
            "gauge",
            &[(String::new(), l.running() as u64)],
        );
        gauge(
            &format!("wrenn_{lane}_max"),
            &format!("{what} allowed at once (--max-starting)."),
            "gauge",
            &[(String::new(), l.width() as u64)],
        );
        gauge(
            &format!("wrenn_{lane}_total"),
            &format!("{what} that had their turn since start-up."),
            "counter",
            &[(String::new(), l.done())],
        );
    }
    let t = c.teardown_stats();
    gauge(
        "wrenn_teardowns_pending",
        "Failed teardowns that housekeeping is still retrying.",
        "gauge",
        &[(String::new(), t.pending as u64)],
    );
    gauge(
        "wrenn_teardown_failures_total",
        "Failed teardown attempts since start-up.",
        "counter",
        &[(String::new(), t.failures)],
    );
    gauge(
        "wrenn_teardowns_retried_total",
        "Teardowns that finished on a housekeeping retry.",
        "counter",
        &[(String::new(), t.finished_on_retry)],
    );
    gauge(
        "wrenn_teardowns_stuck_total",
        "Teardowns reported as stuck after repeated failures.",
        "counter",
        &[(String::new(), t.stuck)],
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
