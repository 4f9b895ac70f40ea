//! What the two binaries of strait share: `strait`, which holds everything, and
//! `strait-proxy`, the sidecar alone.

pub mod process;
pub mod proxy;
