//! Peering with other clusters' gateways over QUIC. The rooms only move bytes and timers; the
//! decisions are federation's sans-IO [`handshake`](strait_federation::handshake) and
//! [`session`](strait_federation::session):
//! - [`endpoint`]: the QUIC endpoint, TLS, and the control stream's frames;
//! - [`socket`]: its UDP socket, which cuts batches of packets to what the kernel sends;
//! - [`dial`]: the dialer of each applied Link;
//! - [`accept`]: the acceptor that admits join tokens;
//! - [`drive`]: the loop that runs a session over the control stream;
//! - [`records`] and [`removal`]: unlinks, and lost peers' services withdrawn.
//!
//! Every wait on a peer has a deadline; every byte from a peer goes through the bounded frame
//! decoder. Lock order everywhere: `peers`, then `state`.

mod accept;
mod dial;
mod drive;
mod endpoint;
mod error;
pub mod quality;
mod records;
mod removal;
pub(crate) mod socket;

pub use accept::accept_loop;
pub use dial::{DialOutcome, dial_when_peering, link_problem, start_dialer};
pub use endpoint::{HANDSHAKE_TIMEOUT, endpoint};
pub use error::PeerError;
pub use removal::{discard, unlink, withdraw_expired};
