//! The gateway's persisted state (`state.json` in its state folder): its own services, its
//! export log, its links and the join tokens it admitted. What it imported from each peer and
//! the mesh-wide policies are journaled beside it ([`journal`]): a change costs a line in
//! proportion to it. A restart loses nothing: operator changes are written before they are
//! acknowledged, policies before anyone acts on them, imports as they arrive.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use std::time::Instant;

use strait_federation::catalog::{
    Endpoint, ExportLog, ImportedCatalog, MAX_ENDPOINTS, Port, ServiceKey, ServiceSpec, map_as_list,
};
use strait_federation::document::Applied;
use strait_federation::identity::{ClusterName, SpiffeId};
use strait_federation::link::{LinkSpec, Redemptions};
use strait_federation::policy::exchange::PolicyBook;
use strait_io::files::write_file;
use strait_io::random::random_u64;

use crate::GatewayError;

pub mod imports;
pub mod journal;
pub mod policies;

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
    /// Kept in files of their own ([`imports`]); read here only from an older state file.
    #[serde(default, skip_serializing)]
    pub imports: BTreeMap<ClusterName, ImportedCatalog>,
    /// True while a gateway runs on this state; false once it stopped cleanly. Found true at
    /// start, it means a crash: versions may have reached peers that this file never recorded.
    #[serde(default)]
    pub running: bool,
    /// The mesh-wide policies this gateway holds (applied here or received from peers), with
    /// the clock that stamps changes made here. Kept across restarts: a gateway that comes back
    /// while partitioned enforces what it last had.
    /// Kept in files of their own ([`policies`]); here only the clock (which the durable
    /// copy in the API carries), and the whole set only from an older state file.
    #[serde(
        default,
        deserialize_with = "stored_policies",
        serialize_with = "clock_only"
    )]
    pub policies: PolicyBook,
    /// Roots a rotation took out of this gateway's bundle: a Link minted before the rotation
    /// names one, and still names this mesh (the TLS handshake checks the peer itself).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub retired_roots: BTreeSet<String>,
    /// Bootstrap tokens, identities and operator certificates revoked by an operator.
    #[serde(default, skip_serializing_if = "Revocations::is_empty")]
    pub revocations: Revocations,
    /// Endpoints registered by this cluster's sidecars: leases, never written (sidecars
    /// register again within seconds of a restart).
    #[serde(skip)]
    pub registrations: BTreeMap<ServiceKey, BTreeMap<String, Registration>>,
}

/// What operators revoked (`strait revoke`): kept until the gateway's state is deleted. A
/// token's id is kept past its expiry (a few bytes each); identities and certificates stay
/// refused until un-revoked by editing the state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Revocations {
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub tokens: BTreeSet<String>,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub identities: BTreeSet<String>,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub certificates: BTreeSet<String>,
}

impl Revocations {
    /// Nothing revoked.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty() && self.identities.is_empty() && self.certificates.is_empty()
    }

    /// Why a caller is refused: its identity, or its certificate (by fingerprint), was revoked.
    pub fn refuses(&self, identity: &SpiffeId, certificate: Option<&str>) -> Option<String> {
        if self.identities.contains(&identity.to_string()) {
            return Some(format!("identity {identity} was revoked"));
        }
        certificate
            .filter(|f| self.certificates.contains(*f))
            .map(|f| format!("certificate {f} of {identity} was revoked"))
    }
}

/// Reads the stored policies, leaving out (and logging) those that no longer pass their checks.
fn stored_policies<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<PolicyBook, D::Error> {
    Ok(policies::stored(serde_json::Value::deserialize(
        deserializer,
    )?))
}

fn clock_only<S: serde::Serializer>(book: &PolicyBook, serializer: S) -> Result<S::Ok, S::Error> {
    PolicyBook {
        clock: book.clock,
        ..PolicyBook::default()
    }
    .serialize(serializer)
}

/// One endpoint registered by a sidecar (universal mode).
#[derive(Debug, Clone, PartialEq)]
pub struct Registration {
    pub ports: Vec<Port>,
    pub endpoint: Endpoint,
    pub export: bool,
    /// When the lease lapses unless refreshed.
    pub expires: Instant,
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
            policies: PolicyBook::default(),
            registrations: BTreeMap::new(),
            retired_roots: BTreeSet::new(),
            revocations: Revocations::default(),
        }
    }

    /// A local service as the mesh sees it: the applied document (ports, export) with the
    /// endpoints its sidecars registered added; a service only registered takes its ports and
    /// export from its registrations.
    pub fn effective(&self, key: &ServiceKey) -> Option<ServiceSpec> {
        let registered = self.registrations.get(key).filter(|r| !r.is_empty());
        let mut spec = match (self.services.get(key), registered) {
            (Some(spec), _) => spec.clone(),
            (None, Some(registered)) => {
                let first = registered.values().next()?;
                ServiceSpec {
                    export: registered.values().any(|r| r.export),
                    ports: first.ports.clone(),
                    endpoints: Vec::new(),
                    labels: BTreeMap::new(),
                    exported_at_ms: 0,
                }
            }
            (None, None) => return None,
        };
        if let Some(registered) = registered {
            for registration in registered.values() {
                if spec.endpoints.len() >= MAX_ENDPOINTS {
                    break;
                }
                if !spec
                    .endpoints
                    .iter()
                    .any(|e| e.address == registration.endpoint.address)
                {
                    spec.endpoints.push(registration.endpoint.clone());
                }
            }
        }
        Some(spec)
    }

    /// How many services this cluster has, without copying them (a gauge reads it often).
    pub fn local_service_count(&self) -> usize {
        let registered_only = self
            .registrations
            .iter()
            .filter(|(key, r)| !r.is_empty() && !self.services.contains_key(*key))
            .count();
        self.services.len() + registered_only
    }

    /// Every local service as the mesh sees it (see [`State::effective`]).
    pub fn local_services(&self) -> BTreeMap<ServiceKey, ServiceSpec> {
        self.services
            .keys()
            .chain(self.registrations.keys())
            .filter_map(|key| Some((key.clone(), self.effective(key)?)))
            .collect()
    }

    /// Brings the export log in line with the effective service; whether it changed.
    pub fn republish(&mut self, key: &ServiceKey) -> bool {
        let spec = self.effective(key).filter(|s| s.export);
        self.export.set(key, spec.as_ref()).is_some()
    }

    /// Adds or refreshes a sidecar's registration; whether the mesh's view changed.
    pub fn register(
        &mut self,
        key: &ServiceKey,
        instance: &str,
        registration: Registration,
    ) -> bool {
        let before = self.effective(key);
        let registered = self.registrations.entry(key.clone()).or_default();
        // A restarted sidecar registers under a new instance: its old lease goes at once.
        registered.retain(|other, old| {
            other == instance || old.endpoint.address != registration.endpoint.address
        });
        registered.insert(instance.to_owned(), registration);
        let changed = self.effective(key) != before;
        if changed {
            self.republish(key);
        }
        changed
    }

    /// Removes a sidecar's registration; whether it existed.
    pub fn deregister(&mut self, key: &ServiceKey, instance: &str) -> bool {
        let Some(registered) = self.registrations.get_mut(key) else {
            return false;
        };
        let existed = registered.remove(instance).is_some();
        if registered.is_empty() {
            self.registrations.remove(key);
        }
        if existed {
            self.republish(key);
        }
        existed
    }

    /// Drops lapsed registrations; whether any did.
    pub fn expire_registrations(&mut self, now: Instant) -> bool {
        let mut lapsed = Vec::new();
        for (key, registered) in &self.registrations {
            for (instance, registration) in registered {
                if registration.expires <= now {
                    lapsed.push((key.clone(), instance.clone()));
                }
            }
        }
        for (key, instance) in &lapsed {
            self.deregister(key, instance);
        }
        !lapsed.is_empty()
    }

    /// Records a local service and its exported view; says what changed, as kubectl does.
    pub fn put_service(&mut self, key: ServiceKey, spec: ServiceSpec) -> Applied {
        let result = match self.services.get(&key) {
            None => Applied::Created,
            Some(old) if *old == spec => Applied::Unchanged,
            Some(_) => Applied::Configured,
        };
        self.services.insert(key.clone(), spec);
        self.republish(&key);
        result
    }

    /// Removes a local service (its registered endpoints stay); whether it existed.
    pub fn remove_service(&mut self, key: &ServiceKey) -> bool {
        let existed = self.services.remove(key).is_some();
        self.republish(key);
        existed
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
        Ok(serde_json::to_string(state)?)
    }

    /// Writes serialized state atomically.
    pub fn write(&self, encoded: &str) -> Result<(), GatewayError> {
        Ok(write_file(&self.path, encoded, true)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
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
        assert_eq!(
            state.put_service(key.clone(), spec.clone()),
            Applied::Created
        );
        assert_eq!(state.put_service(key.clone(), spec), Applied::Unchanged);
        state.imports.insert(
            ClusterName::new("east").unwrap(),
            ImportedCatalog::default(),
        );
        let policy = parse_documents(
            "p.yaml",
            "apiVersion: policy.strait.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: deny-all, namespace: shop}\nspec: {action: deny}\n",
        )
        .unwrap();
        let Resource::Policy { key, policy } = policy[0].clone() else {
            panic!()
        };
        let east = ClusterName::new("east").unwrap();
        state
            .policies
            .apply(key.clone(), policy, &east, 1_000)
            .unwrap();
        file.write(&StateFile::encode(&state).unwrap()).unwrap();
        let loaded = file.load().unwrap();
        // Imports and policies have files of their own; the state keeps the policies' clock.
        assert!(loaded.imports.is_empty());
        assert!(loaded.policies.set.is_empty());
        assert_eq!(loaded.policies.clock, state.policies.clock);
        let mut expected = state.clone();
        expected.imports.clear();
        expected.policies.set = Default::default();
        assert_eq!(loaded, expected);

        // An older state file holds the whole set: it loads, and a stored policy that no
        // longer passes its checks is left out while the rest loads.
        let mut older: serde_json::Value =
            serde_json::from_str(&StateFile::encode(&state).unwrap()).unwrap();
        older["policies"] = serde_json::to_value(&state.policies).unwrap();
        file.write(&older.to_string()).unwrap();
        let loaded = file.load().unwrap();
        assert!(
            loaded
                .policies
                .set
                .get(&key)
                .is_some_and(|e| e.body.is_some())
        );
        let text = older.to_string().replace("\"deny\"", "\"perhaps\"");
        assert!(text.contains("perhaps"));
        file.write(&text).unwrap();
        let loaded = file.load().unwrap();
        assert!(loaded.policies.set.is_empty());
        assert_eq!(loaded.services, state.services);
    }

    #[test]
    fn registered_endpoints_join_the_applied_service_and_lapse_with_their_lease() {
        let mut state = State::new();
        let docs = parse_documents(
            "s.yaml",
            "kind: Service\nmetadata: {name: api, namespace: shop}\nspec:\n  export: true\n  ports: [{port: 80, protocol: http}]\n",
        )
        .unwrap();
        let Resource::Service { key, spec } = docs[0].clone() else {
            panic!()
        };
        state.put_service(key.clone(), spec.clone());
        let now = Instant::now();
        let registration = |port: u16, expires: Instant| Registration {
            ports: spec.ports.clone(),
            endpoint: Endpoint {
                address: ([127, 0, 0, 1], port).into(),
                hostname: None,
                ready: true,
            },
            export: true,
            expires,
        };
        let head = state.export.head();
        assert!(state.register(&key, "a", registration(1000, now + Duration::from_secs(1))));
        assert!(state.register(&key, "b", registration(1001, now + Duration::from_secs(9))));
        // A refresh of the same endpoint is not a change.
        assert!(!state.register(&key, "a", registration(1000, now + Duration::from_secs(2))));
        assert_eq!(state.export.head().version, head.version + 2);
        assert_eq!(state.effective(&key).unwrap().endpoints.len(), 2);
        // A restarted sidecar (new instance, same address) replaces its old lease at once.
        assert!(!state.register(&key, "a2", registration(1000, now + Duration::from_secs(1))));
        assert_eq!(state.registrations[&key].len(), 2);
        assert!(state.registrations[&key].contains_key("a2"));
        assert!(state.expire_registrations(now + Duration::from_secs(3)));
        let endpoints = state.effective(&key).unwrap().endpoints;
        assert_eq!(endpoints.len(), 1);
        assert_eq!(endpoints[0].address.port(), 1001);
        // Removing the document keeps the service while a sidecar still registers it.
        state.remove_service(&key);
        assert_eq!(state.local_services().len(), 1);
        assert_eq!(state.local_service_count(), 1);
        assert!(state.deregister(&key, "b"));
        assert!(state.local_services().is_empty());
        assert_eq!(state.local_service_count(), 0);
        assert!(state.export.services().next().is_none());
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
