//! The executor hyper runs its tasks on: each HTTP/2 request's (its response on the client side,
//! its handler on the server side) and each connection's.
//!
//! hyper spawns one task per HTTP/2 request, and the future it hands over is an enum as large
//! as its largest variant: on the client, the whole connection's (the TLS session and h2's
//! state). Spawned as it is, every request's task moved those bytes into a fresh allocation,
//! and moved them again when it ended; the moves were 3-5 % of a sidecar's CPU time under
//! load. Large futures go behind a box first: the box is sized to the future, and the task
//! holds a pointer.

use std::future::Future;

/// Futures up to this size are spawned as they are; larger ones are boxed first.
const INLINE_BYTES: usize = 256;

/// Spawns hyper's tasks on the current tokio runtime, large futures boxed.
#[derive(Debug, Clone, Copy, Default)]
pub struct Executor;

impl<F> hyper::rt::Executor<F> for Executor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        if std::mem::size_of::<F>() > INLINE_BYTES {
            tokio::spawn(Box::pin(future));
        } else {
            tokio::spawn(future);
        }
    }
}
