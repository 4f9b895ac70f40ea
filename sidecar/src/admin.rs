//! What a sidecar's admin server reports: ready once certified, with the catalog received and
//! its endpoint registered when it fronts a service; its metrics. The server is
//! `strait_io::admin`.

use strait_io::admin::{AppProbe, Probes};

use crate::Shared;

impl Probes for Shared {
    fn ready(&self) -> Result<(), String> {
        if self.is_ready() {
            Ok(())
        } else {
            Err("waiting for a certificate, the catalog or the app".into())
        }
    }

    fn metrics(&self) -> String {
        self.metrics.encode()
    }

    fn app_probe(&self, key: &str) -> Option<AppProbe> {
        self.config.app_probes.get(key).cloned()
    }
}
