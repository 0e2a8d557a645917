//! Wire types shared by the Wrenn server, the in-capsule agent and their clients.
//!
//! `agent` holds the agent protocol (spoken over a unix socket between the server and
//! `wrenn-agent`); `api` holds the public REST/WebSocket shapes of the contract. The agent
//! protocol mirrors the public shapes so the server stays a thin proxy. No I/O lives here.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod agent;
pub mod api;
pub mod envd;
pub mod error;
pub mod files;
pub mod integral;
pub mod keys;
pub mod stream;
