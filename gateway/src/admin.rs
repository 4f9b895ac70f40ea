//! What a gateway's admin server reports: ready once it listens on every port and serves; its
//! metrics with the gauges read from state refreshed first. The server is `strait_io::admin`.

use std::sync::atomic::Ordering;

use strait_io::admin::Probes;

use crate::Shared;

impl Probes for Shared {
    fn ready(&self) -> Result<(), String> {
        if !self.ready.load(Ordering::SeqCst) {
            return Err("starting or stopping".into());
        }
        match self.kubernetes.problem() {
            Some(problem) => Err(problem),
            None => Ok(()),
        }
    }

    fn metrics(&self) -> String {
        self.refresh_metrics();
        self.refresh_certificate_metrics();
        self.metrics.encode()
    }
}
