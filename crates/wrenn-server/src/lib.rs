//! The Wrenn API server: auth, store, capsule lifecycle, proxying to agents.
