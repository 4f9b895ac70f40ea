//! The gateway's persisted state (`state.json` in its state folder): its own services, its
//! export log, its links, the join tokens it admitted and what it imported from each peer. A
//! restart loses nothing: operator changes are written before they are acknowledged, imports
//! are written shortly after they arrive.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use strait_federation::catalog::{
    ExportLog, ImportedCatalog, ServiceKey, ServiceSpec, map_as_list,
};
use strait_federation::identity::ClusterName;
use strait_federation::link::{LinkSpec, Redemptions, random_u64};
use strait_federation::pki::write_file;

use crate::GatewayError;

/// A link this gateway dials (from a Link document applied here).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkRecord {
    pub spec: LinkSpec,
    /// When it was applied (unix seconds).
    pub created: u64,
}

/// Everything a gateway keeps across restarts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    #[serde(with = "map_as_list")]
    pub services: BTreeMap<ServiceKey, ServiceSpec>,
    pub export: ExportLog,
    #[serde(default)]
    pub links: BTreeMap<ClusterName, LinkRecord>,
    #[serde(default)]
    pub redemptions: Redemptions,
    #[serde(default)]
    pub imports: BTreeMap<ClusterName, ImportedCatalog>,
    /// True while a gateway runs on this state; false once it stopped cleanly. Found true at
    /// start, it means a crash: versions may have reached peers that this file never recorded.
    #[serde(default)]
    pub running: bool,
}

impl State {
    /// The state of a new gateway: a fresh export epoch, nothing else.
    pub fn new() -> Self {
        Self {
            services: BTreeMap::new(),
            export: ExportLog::new(random_u64()),
            links: BTreeMap::new(),
            redemptions: Redemptions::default(),
            imports: BTreeMap::new(),
            running: false,
        }
    }

    /// Records a local service and its exported view; returns "created", "configured" or
    /// "unchanged" as kubectl says.
    pub fn put_service(&mut self, key: ServiceKey, spec: ServiceSpec) -> &'static str {
        let result = match self.services.get(&key) {
            None => "created",
            Some(old) if *old == spec => "unchanged",
            Some(_) => "configured",
        };
        self.export.set(&key, spec.export.then_some(&spec));
        self.services.insert(key, spec);
        result
    }

    /// Removes a local service; whether it existed.
    pub fn remove_service(&mut self, key: &ServiceKey) -> bool {
        self.export.set(key, None);
        self.services.remove(key).is_some()
    }
}

impl Default for State {
    fn default() -> Self {
        Self::new()
    }
}

/// Where the state lives.
#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    /// The state file of a state folder.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            path: dir.join("state.json"),
        }
    }

    /// Loads the state, or a new one when there is no file yet.
    pub fn load(&self) -> Result<State, GatewayError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(State::new()),
            Err(e) => {
                return Err(GatewayError::State {
                    path: self.path.clone(),
                    message: e.to_string(),
                });
            }
        };
        serde_json::from_str(&text).map_err(|e| GatewayError::State {
            path: self.path.clone(),
            message: format!("unreadable ({e}); move it away to start from an empty state"),
        })
    }

    /// Serializes a state (call under the lock, write outside it).
    pub fn encode(state: &State) -> Result<String, GatewayError> {
        serde_json::to_string(state).map_err(|e| GatewayError::Internal(e.to_string()))
    }

    /// Writes serialized state atomically.
    pub fn write(&self, encoded: &str) -> Result<(), GatewayError> {
        Ok(write_file(&self.path, encoded, true)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strait_federation::resource::{Resource, parse_documents};

    #[test]
    fn state_survives_a_write_and_a_load() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::in_dir(dir.path());
        let mut state = file.load().unwrap();
        let docs = parse_documents(
            "s.yaml",
            "kind: Service\nmetadata: {name: api, namespace: shop}\nspec:\n  export: true\n  ports: [{port: 80, protocol: http}]\n",
        )
        .unwrap();
        let Resource::Service { key, spec } = docs[0].clone() else {
            panic!()
        };
        assert_eq!(state.put_service(key.clone(), spec.clone()), "created");
        assert_eq!(state.put_service(key.clone(), spec), "unchanged");
        state.imports.insert(
            ClusterName::new("east").unwrap(),
            ImportedCatalog::default(),
        );
        file.write(&StateFile::encode(&state).unwrap()).unwrap();
        assert_eq!(file.load().unwrap(), state);
    }

    #[test]
    fn an_unreadable_state_file_is_an_error_not_a_fresh_start() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("state.json"), "{not json").unwrap();
        let err = StateFile::in_dir(dir.path())
            .load()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("state.json") && err.contains("unreadable"),
            "{err}"
        );
    }
}
