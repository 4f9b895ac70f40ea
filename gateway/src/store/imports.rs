//! What the gateway imported from its peers, journaled ([`super::journal`]) as
//! `imports.json` and `imports.log`: a peer's batch costs one line in proportion to what it
//! changed, never a write of the whole catalog.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use strait_federation::catalog::{ImportedCatalog, Position, ServiceKey, ServiceSpec};
use strait_federation::identity::ClusterName;

use super::journal::Journaled;

/// Every peer's imported catalog.
pub type Imports = BTreeMap<ClusterName, ImportedCatalog>;

/// The imports' journal.
pub struct ImportsJournal;

impl Journaled for ImportsJournal {
    const NAME: &'static str = "imports";
    type Part = Imports;
    type Change = Entry;

    fn decode(part: serde_json::Value) -> Result<Imports, String> {
        serde_json::from_value(part).map_err(|e| e.to_string())
    }

    fn apply(part: &mut Imports, change: Entry) {
        change.apply_to(part);
    }
}

/// One batch of a peer, as the journal keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    pub cluster: ClusterName,
    /// Forget what was held from the peer first (a snapshot, or the peer withdrawn).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reset: bool,
    pub position: Position,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upserts: Vec<(ServiceKey, ServiceSpec)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removals: Vec<ServiceKey>,
}

impl Entry {
    /// The batch that brought a peer's catalog to what `imports` holds now for `changed`
    /// (all of it when `reset`).
    pub fn of(
        imports: &Imports,
        cluster: &ClusterName,
        changed: &[ServiceKey],
        reset: bool,
    ) -> Self {
        let catalog = imports.get(cluster);
        let mut entry = Entry {
            cluster: cluster.clone(),
            reset,
            position: catalog.map_or(Position::NONE, |c| c.position),
            upserts: Vec::new(),
            removals: Vec::new(),
        };
        match (reset, catalog) {
            (true, Some(catalog)) => {
                entry.upserts = catalog
                    .services
                    .iter()
                    .map(|(k, s)| (k.clone(), s.clone()))
                    .collect();
            }
            (true, None) => {}
            (false, _) => {
                for key in changed {
                    match catalog.and_then(|c| c.services.get(key)) {
                        Some(spec) => entry.upserts.push((key.clone(), spec.clone())),
                        None => entry.removals.push(key.clone()),
                    }
                }
            }
        }
        entry
    }

    /// Applies the batch.
    fn apply_to(self, imports: &mut Imports) {
        if self.reset && self.upserts.is_empty() && self.position == Position::NONE {
            imports.remove(&self.cluster);
            return;
        }
        let catalog = imports.entry(self.cluster).or_default();
        if self.reset {
            catalog.services.clear();
        }
        for (key, spec) in self.upserts {
            catalog.services.insert(key, spec);
        }
        for key in self.removals {
            catalog.services.remove(&key);
        }
        catalog.position = self.position;
    }
}
