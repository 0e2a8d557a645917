//! HTTP front ends over the capsule service. `wrenn` serves the Wrenn API.

pub mod wrenn;

pub use wrenn::{router, UPLOAD_LIMIT};
