//! The in-capsule agent.
fn main() {}
