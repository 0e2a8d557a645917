//! Integration tests: the real agent binary on a temp socket, driven only through
//! `wrenn-agent-client`. They assume root (user switching), as CI runs them.

mod caps;
mod cli;
mod common;
mod envd;
mod exec;
mod files;
mod processes;
mod pty;
mod streams;
