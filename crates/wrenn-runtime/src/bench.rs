//! Latency benchmark of the container runtime (placeholder, filled in below).
