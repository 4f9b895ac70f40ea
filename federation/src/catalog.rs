//! The service catalog: a cluster's own services, the versioned log of what it exports, what it
//! imported from each peer, and the clusterset view that merges them (one service per
//! `(namespace, name)`, served from one or more clusters).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::identity::{ClusterName, Namespace, ServiceName};
use crate::proto::peer as wire;

/// A service's identity in the clusterset: the same key in two clusters is one service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ServiceKey {
    pub namespace: Namespace,
    pub name: ServiceName,
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The application protocol of a port, as the sidecars will treat it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Http,
    Http2,
    Grpc,
    Tcp,
}

impl Protocol {
    /// A protocol as written in documents.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "http" => Some(Self::Http),
            "http2" => Some(Self::Http2),
            "grpc" => Some(Self::Grpc),
            "tcp" => Some(Self::Tcp),
            _ => None,
        }
    }

    /// The protocol as written in documents.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Http2 => "http2",
            Self::Grpc => "grpc",
            Self::Tcp => "tcp",
        }
    }
}

/// A named port of a service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Port {
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
}

/// One instance of a service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Endpoint {
    pub address: SocketAddr,
    /// The pod or host name, for per-endpoint DNS names of headless services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default = "ready_default")]
    pub ready: bool,
}

fn ready_default() -> bool {
    true
}

/// What a cluster knows of one of its own services, or imported of a peer's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    pub export: bool,
    pub ports: Vec<Port>,
    pub endpoints: Vec<Endpoint>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// When the cluster began to export the service (Unix milliseconds; 0 when unknown, as
    /// from a file or an older peer): where clusters disagree on a service's ports, the MCS
    /// API's rule is that the oldest export wins.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub exported_at_ms: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Limits on what a service may hold, so one record can never exceed a frame.
pub const MAX_PORTS: usize = 64;
/// See [`MAX_PORTS`].
pub const MAX_ENDPOINTS: usize = 4096;
/// See [`MAX_PORTS`].
pub const MAX_LABELS: usize = 64;
/// See [`MAX_PORTS`].
pub const MAX_TEXT: usize = 253;

/// The longest name of a port.
pub const MAX_PORT_NAME: usize = 63;

impl ServiceSpec {
    /// Checks the bounds every service keeps, whether applied here or received from a peer, so
    /// a service this cluster accepts is never one its peers refuse. Returns the field and
    /// what is wrong with it.
    pub fn check(&self) -> Result<(), (String, String)> {
        let fail = |field: String, message: String| Err((field, message));
        if self.ports.len() > MAX_PORTS {
            return fail("spec.ports".into(), format!("at most {MAX_PORTS} ports"));
        }
        if self.endpoints.len() > MAX_ENDPOINTS {
            return fail(
                "spec.endpoints".into(),
                format!("at most {MAX_ENDPOINTS} endpoints"),
            );
        }
        if self.labels.len() > MAX_LABELS {
            return fail(
                "metadata.labels".into(),
                format!("at most {MAX_LABELS} labels"),
            );
        }
        let mut names = BTreeSet::new();
        for (i, port) in self.ports.iter().enumerate() {
            if port.port == 0 {
                return fail(
                    format!("spec.ports[{i}].port"),
                    "expected 1..65535, got 0".into(),
                );
            }
            if port.name.is_empty() || port.name.len() > MAX_PORT_NAME {
                return fail(
                    format!("spec.ports[{i}].name"),
                    format!("expected 1 to {MAX_PORT_NAME} characters"),
                );
            }
            if !names.insert(&port.name) {
                return fail(
                    format!("spec.ports[{i}].name"),
                    format!("port name {:?} is used twice", port.name),
                );
            }
        }
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            if let Some(hostname) = &endpoint.hostname
                && ServiceName::new(hostname.as_str()).is_err()
            {
                return fail(
                    format!("spec.endpoints[{i}].hostname"),
                    "expected a DNS label (lowercase letters, digits, '-')".into(),
                );
            }
        }
        for (key, value) in &self.labels {
            if key.is_empty() || key.len() > MAX_TEXT || value.len() > MAX_TEXT {
                return fail(
                    "metadata.labels".into(),
                    format!(
                        "label {:?}: keys must have 1 to {MAX_TEXT} characters and values at most {MAX_TEXT}",
                        truncate(key)
                    ),
                );
            }
        }
        Ok(())
    }
}

/// Why a service record from a peer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("service record {service}: {reason}")]
pub struct RecordError {
    pub service: String,
    pub reason: String,
}

impl ServiceSpec {
    /// The record sent to peers (exported services only carry what peers need).
    pub fn to_wire(&self, key: &ServiceKey) -> wire::ServiceRecord {
        wire::ServiceRecord {
            namespace: key.namespace.to_string(),
            name: key.name.to_string(),
            ports: self
                .ports
                .iter()
                .map(|p| wire::Port {
                    name: p.name.clone(),
                    port: u32::from(p.port),
                    protocol: p.protocol.as_str().to_owned(),
                })
                .collect(),
            endpoints: self
                .endpoints
                .iter()
                .map(|e| wire::Endpoint {
                    address: e.address.to_string(),
                    hostname: e.hostname.clone().unwrap_or_default(),
                    ready: e.ready,
                })
                .collect(),
            labels: self.labels.clone().into_iter().collect(),
            exported_at_ms: self.exported_at_ms,
        }
    }

    /// Parses a record from a peer. Network input: every field is checked and bounded.
    pub fn from_wire(
        record: &wire::ServiceRecord,
    ) -> Result<(ServiceKey, ServiceSpec), RecordError> {
        let service = format!("{}/{}", truncate(&record.namespace), truncate(&record.name));
        let fail = |reason: String| RecordError {
            service: service.clone(),
            reason,
        };
        let key = ServiceKey {
            namespace: Namespace::new(record.namespace.clone()).map_err(|e| fail(e.to_string()))?,
            name: ServiceName::new(record.name.clone()).map_err(|e| fail(e.to_string()))?,
        };
        if record.ports.len() > MAX_PORTS
            || record.endpoints.len() > MAX_ENDPOINTS
            || record.labels.len() > MAX_LABELS
        {
            return Err(fail("too many ports, endpoints or labels".into()));
        }
        let mut ports = Vec::with_capacity(record.ports.len());
        for port in &record.ports {
            let number = u16::try_from(port.port)
                .map_err(|_| fail(format!("port {} is not in 1..65535", port.port)))?;
            let protocol = Protocol::parse(&port.protocol)
                .ok_or_else(|| fail(format!("unknown protocol {:?}", truncate(&port.protocol))))?;
            ports.push(Port {
                name: port.name.clone(),
                port: number,
                protocol,
            });
        }
        let mut endpoints = Vec::with_capacity(record.endpoints.len());
        for endpoint in &record.endpoints {
            let address = endpoint.address.parse().map_err(|_| {
                fail(format!(
                    "endpoint address {:?} is not IP:port",
                    truncate(&endpoint.address)
                ))
            })?;
            endpoints.push(Endpoint {
                address,
                hostname: Some(endpoint.hostname.clone()).filter(|h| !h.is_empty()),
                ready: endpoint.ready,
            });
        }
        let spec = ServiceSpec {
            export: true,
            ports,
            endpoints,
            labels: record.labels.clone().into_iter().collect(),
            exported_at_ms: record.exported_at_ms,
        };
        spec.check()
            .map_err(|(field, message)| fail(format!("{field}: {message}")))?;
        Ok((key, spec))
    }
}

fn truncate(text: &str) -> &str {
    match text.char_indices().nth(64) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

/// Where an importer stands in an exporter's log: the exporter's incarnation (`epoch`, random,
/// fixed for the life of its state directory) and the last version applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Position {
    pub epoch: u64,
    pub version: u64,
}

impl Position {
    /// The position of an importer that has nothing yet.
    pub const NONE: Position = Position {
        epoch: 0,
        version: 0,
    };

    /// From the wire (absent means nothing yet).
    pub fn from_wire(position: Option<&wire::Position>) -> Self {
        position.map_or(Self::NONE, |p| Self {
            epoch: p.epoch,
            version: p.version,
        })
    }

    /// To the wire.
    pub fn to_wire(self) -> wire::Position {
        wire::Position {
            epoch: self.epoch,
            version: self.version,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct LogEntry {
    version: u64,
    /// `None` is a tombstone: the service stopped being exported at `version`.
    spec: Option<ServiceSpec>,
}

/// What an importer lacks, from the exporter's log.
#[derive(Debug, Clone, PartialEq)]
pub struct Changes {
    /// Replace everything (the importer is on another epoch, or too far behind).
    pub reset: bool,
    pub from: Position,
    pub to: Position,
    pub upserts: Vec<(ServiceKey, ServiceSpec)>,
    pub removals: Vec<ServiceKey>,
}

impl Changes {
    /// Whether the importer already has everything.
    pub fn is_empty(&self) -> bool {
        !self.reset && self.upserts.is_empty() && self.removals.is_empty()
    }
}

/// The versioned log of what a cluster exports. Each exported service carries the version of
/// its last change; removals leave tombstones, so "what changed since version v" is answered
/// from state, survives restarts (the log is persisted), and needs no unbounded history.
/// Tombstones beyond a bound are dropped, raising `floor`: an importer older than `floor` gets a
/// snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(into = "ExportLogFile", from = "ExportLogFile")]
pub struct ExportLog {
    epoch: u64,
    version: u64,
    floor: u64,
    entries: BTreeMap<ServiceKey, LogEntry>,
    by_version: BTreeMap<u64, ServiceKey>,
}

/// How an export log is stored: its entries as a list (JSON maps need string keys); the
/// version index is rebuilt on load.
#[derive(Serialize, Deserialize)]
struct ExportLogFile {
    epoch: u64,
    version: u64,
    floor: u64,
    entries: Vec<(ServiceKey, LogEntry)>,
}

impl From<ExportLog> for ExportLogFile {
    fn from(log: ExportLog) -> Self {
        Self {
            epoch: log.epoch,
            version: log.version,
            floor: log.floor,
            entries: log.entries.into_iter().collect(),
        }
    }
}

impl From<ExportLogFile> for ExportLog {
    fn from(file: ExportLogFile) -> Self {
        let entries: BTreeMap<_, _> = file.entries.into_iter().collect();
        let by_version = entries
            .iter()
            .map(|(k, e)| (e.version, k.clone()))
            .collect();
        Self {
            epoch: file.epoch,
            version: file.version,
            floor: file.floor,
            entries,
            by_version,
        }
    }
}

/// Serializes a map with structured keys as a list of pairs.
pub mod map_as_list {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    /// Writes the pairs.
    pub fn serialize<K: Serialize, V: Serialize, S: Serializer>(
        map: &BTreeMap<K, V>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(map.iter())
    }

    /// Reads the pairs.
    pub fn deserialize<'de, K, V, D>(deserializer: D) -> Result<BTreeMap<K, V>, D::Error>
    where
        K: Deserialize<'de> + Ord,
        V: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        Ok(Vec::<(K, V)>::deserialize(deserializer)?
            .into_iter()
            .collect())
    }
}

/// How many tombstones the log keeps before it compacts.
pub const MAX_TOMBSTONES: usize = 10_000;

impl ExportLog {
    /// An empty log for a new incarnation.
    pub fn new(epoch: u64) -> Self {
        Self {
            epoch: epoch.max(1),
            version: 0,
            floor: 0,
            entries: BTreeMap::new(),
            by_version: BTreeMap::new(),
        }
    }

    /// Starts a new incarnation keeping the content: importers of the old epoch get a
    /// snapshot. Used after an unclean shutdown, when versions may have been sent to peers
    /// that the saved log never recorded and must not be numbered again.
    pub fn renew_epoch(&mut self, epoch: u64) {
        self.epoch = epoch.max(1);
        self.floor = self.version;
    }

    /// The latest position.
    pub fn head(&self) -> Position {
        Position {
            epoch: self.epoch,
            version: self.version,
        }
    }

    /// Records the exported state of a service (`None`: not exported, or gone). Returns the new
    /// version when something changed.
    pub fn set(&mut self, key: &ServiceKey, spec: Option<&ServiceSpec>) -> Option<u64> {
        let current = self.entries.get(key).and_then(|e| e.spec.as_ref());
        if current == spec {
            return None;
        }
        if current.is_none() && spec.is_none() {
            return None;
        }
        self.version += 1;
        if let Some(old) = self.entries.get(key) {
            self.by_version.remove(&old.version);
        }
        self.entries.insert(
            key.clone(),
            LogEntry {
                version: self.version,
                spec: spec.cloned(),
            },
        );
        self.by_version.insert(self.version, key.clone());
        self.compact(MAX_TOMBSTONES);
        Some(self.version)
    }

    /// Drops the oldest tombstones beyond `keep`.
    pub fn compact(&mut self, keep: usize) {
        let tombstones = self.entries.values().filter(|e| e.spec.is_none()).count();
        if tombstones <= keep {
            return;
        }
        let excess = tombstones - keep;
        let oldest: Vec<(u64, ServiceKey)> = self
            .by_version
            .iter()
            .filter(|(_, k)| self.entries.get(*k).is_some_and(|e| e.spec.is_none()))
            .take(excess)
            .map(|(v, k)| (*v, k.clone()))
            .collect();
        for (version, key) in oldest {
            self.entries.remove(&key);
            self.by_version.remove(&version);
            self.floor = self.floor.max(version);
        }
    }

    /// The exported services.
    pub fn services(&self) -> impl Iterator<Item = (&ServiceKey, &ServiceSpec)> {
        self.entries
            .iter()
            .filter_map(|(k, e)| e.spec.as_ref().map(|s| (k, s)))
    }

    /// What an importer at `from` lacks.
    pub fn changes_since(&self, from: Position) -> Changes {
        let to = self.head();
        if from.epoch != self.epoch || from.version < self.floor || from.version > self.version {
            return Changes {
                reset: true,
                from,
                to,
                upserts: self
                    .services()
                    .map(|(k, s)| (k.clone(), s.clone()))
                    .collect(),
                removals: Vec::new(),
            };
        }
        let mut upserts = Vec::new();
        let mut removals = Vec::new();
        for (_, key) in self.by_version.range(from.version + 1..) {
            if let Some(entry) = self.entries.get(key) {
                match &entry.spec {
                    Some(spec) => upserts.push((key.clone(), spec.clone())),
                    None => removals.push(key.clone()),
                }
            }
        }
        Changes {
            reset: false,
            from,
            to,
            upserts,
            removals,
        }
    }
}

/// What this cluster imported from one peer: the peer's exported services at a position.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImportedCatalog {
    pub position: Position,
    #[serde(with = "map_as_list")]
    pub services: BTreeMap<ServiceKey, ServiceSpec>,
}

impl ImportedCatalog {
    /// Applies a complete update; returns the services that changed (in key order for a
    /// snapshot, in the update's order for a delta).
    pub fn apply(&mut self, changes: Changes) -> Vec<ServiceKey> {
        let mut changed = Vec::new();
        if changes.reset {
            let incoming: BTreeMap<_, _> = changes.upserts.into_iter().collect();
            changed.extend(
                self.services
                    .iter()
                    .filter(|(k, s)| incoming.get(*k) != Some(*s))
                    .map(|(k, _)| k.clone()),
            );
            changed.extend(
                incoming
                    .keys()
                    .filter(|k| !self.services.contains_key(*k))
                    .cloned(),
            );
            changed.sort();
            self.services = incoming;
        } else {
            for (key, spec) in changes.upserts {
                if self.services.get(&key) != Some(&spec) {
                    changed.push(key.clone());
                    self.services.insert(key, spec);
                }
            }
            for key in changes.removals {
                if self.services.remove(&key).is_some() {
                    changed.push(key);
                }
            }
        }
        self.position = changes.to;
        changed
    }

    /// Forgets everything (a peer withdrawn after its grace period, or unlinked).
    pub fn withdraw(&mut self) {
        self.services.clear();
        self.position = Position::NONE;
    }
}

/// One service of the clusterset view.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClustersetService {
    pub key: ServiceKey,
    /// Whether this cluster exports its own instance.
    pub exported: bool,
    /// The clusters serving it, this cluster first when it has an instance.
    pub backends: Vec<(ClusterName, ServiceSpec)>,
}

/// A disagreement between the clusters that export one service: which export the clusterset
/// follows (the oldest, the MCS API's rule) and the clusters whose ports differ from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub winner: ClusterName,
    pub differing: Vec<ClusterName>,
}

impl ClustersetService {
    /// The export whose ports the clusterset uses: the oldest; an export of unknown age comes
    /// after every known one, and the cluster name breaks ties.
    pub fn oldest_export(&self) -> Option<&(ClusterName, ServiceSpec)> {
        self.backends.iter().min_by(|(a, x), (b, y)| {
            (x.exported_at_ms == 0, x.exported_at_ms, a).cmp(&(
                y.exported_at_ms == 0,
                y.exported_at_ms,
                b,
            ))
        })
    }

    /// The clusters that disagree with the oldest export on the ports (names, numbers and
    /// protocols, in any order); `None` when all agree.
    pub fn conflict(&self) -> Option<Conflict> {
        let (winner, spec) = self.oldest_export()?;
        let ports = sorted_ports(spec);
        let differing: Vec<ClusterName> = self
            .backends
            .iter()
            .filter(|(_, other)| sorted_ports(other) != ports)
            .map(|(cluster, _)| cluster.clone())
            .collect();
        (!differing.is_empty()).then(|| Conflict {
            winner: winner.clone(),
            differing,
        })
    }
}

fn sorted_ports(spec: &ServiceSpec) -> Vec<(&str, u16, Protocol)> {
    let mut ports: Vec<_> = spec
        .ports
        .iter()
        .map(|p| (p.name.as_str(), p.port, p.protocol))
        .collect();
    ports.sort_by_key(|&(name, port, _)| (name, port));
    ports
}

/// Merges a cluster's own services with its imports into one service per key (in key order),
/// each as [`clusterset_service`] makes it.
pub fn clusterset<'a>(
    local_cluster: &ClusterName,
    local: &'a BTreeMap<ServiceKey, ServiceSpec>,
    imports: impl IntoIterator<Item = (&'a ClusterName, &'a ImportedCatalog)>,
) -> Vec<ClustersetService> {
    let imports: Vec<_> = imports.into_iter().collect();
    let keys: std::collections::BTreeSet<&ServiceKey> = local
        .keys()
        .chain(imports.iter().flat_map(|(_, i)| i.services.keys()))
        .collect();
    keys.into_iter()
        .filter_map(|key| {
            clusterset_service(key, local_cluster, local.get(key), imports.iter().copied())
        })
        .collect()
}

/// One service of the clusterset view: this cluster's own instance first, then the imports in
/// cluster order; `None` when no cluster serves it.
pub fn clusterset_service<'a>(
    key: &ServiceKey,
    local_cluster: &ClusterName,
    local: Option<&ServiceSpec>,
    imports: impl IntoIterator<Item = (&'a ClusterName, &'a ImportedCatalog)>,
) -> Option<ClustersetService> {
    let mut backends: Vec<(ClusterName, ServiceSpec)> = local
        .map(|spec| (local_cluster.clone(), spec.clone()))
        .into_iter()
        .collect();
    let mut imported: Vec<_> = imports
        .into_iter()
        .filter_map(|(cluster, catalog)| Some((cluster, catalog.services.get(key)?)))
        .collect();
    imported.sort_by(|a, b| a.0.cmp(b.0));
    backends.extend(
        imported
            .into_iter()
            .map(|(cluster, spec)| (cluster.clone(), spec.clone())),
    );
    (!backends.is_empty()).then(|| ClustersetService {
        key: key.clone(),
        exported: local.is_some_and(|spec| spec.export),
        backends,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn key(ns: &str, name: &str) -> ServiceKey {
        ServiceKey {
            namespace: Namespace::new(ns).unwrap(),
            name: ServiceName::new(name).unwrap(),
        }
    }

    #[test]
    fn the_oldest_export_wins_and_the_others_that_differ_conflict() {
        let with = |port: u16, at: u64| ServiceSpec {
            exported_at_ms: at,
            ..spec(port)
        };
        let cluster = |name: &str| ClusterName::new(name).unwrap();
        let service = |backends: Vec<(&str, ServiceSpec)>| ClustersetService {
            key: key("shop", "api"),
            exported: true,
            backends: backends.into_iter().map(|(c, s)| (cluster(c), s)).collect(),
        };
        // Same ports everywhere: no conflict, whatever the ages.
        let agreed = service(vec![("east", with(8080, 20)), ("west", with(8080, 10))]);
        assert_eq!(agreed.conflict(), None);
        assert_eq!(agreed.oldest_export().unwrap().0, cluster("west"));
        // West exported first: its ports hold, and east differs.
        let split = service(vec![("east", with(9090, 20)), ("west", with(8080, 10))]);
        assert_eq!(
            split.conflict(),
            Some(Conflict {
                winner: cluster("west"),
                differing: vec![cluster("east")],
            })
        );
        // An export of unknown age (0) loses to any known one; names break ties.
        let unknown = service(vec![("east", with(9090, 0)), ("west", with(8080, 99))]);
        assert_eq!(unknown.oldest_export().unwrap().0, cluster("west"));
        let tie = service(vec![("west", with(8080, 5)), ("east", with(9090, 5))]);
        assert_eq!(tie.oldest_export().unwrap().0, cluster("east"));
    }

    pub(crate) fn spec(port: u16) -> ServiceSpec {
        ServiceSpec {
            export: true,
            ports: vec![Port {
                name: "http".into(),
                port,
                protocol: Protocol::Http,
            }],
            endpoints: vec![Endpoint {
                address: "127.0.0.1:9001".parse().unwrap(),
                hostname: None,
                ready: true,
            }],
            labels: BTreeMap::new(),
            exported_at_ms: 0,
        }
    }

    #[test]
    fn a_delta_carries_only_what_changed_since_the_position() {
        let mut log = ExportLog::new(7);
        log.set(&key("shop", "api"), Some(&spec(80)));
        log.set(&key("shop", "web"), Some(&spec(80)));
        let seen = log.head();
        log.set(&key("shop", "api"), Some(&spec(81)));
        log.set(&key("shop", "web"), None);
        let changes = log.changes_since(seen);
        assert!(!changes.reset);
        assert_eq!(changes.upserts, vec![(key("shop", "api"), spec(81))]);
        assert_eq!(changes.removals, vec![key("shop", "web")]);
        assert!(log.changes_since(log.head()).is_empty());
    }

    #[test]
    fn setting_the_same_state_again_is_not_a_change() {
        let mut log = ExportLog::new(7);
        assert_eq!(log.set(&key("a", "b"), Some(&spec(80))), Some(1));
        assert_eq!(log.set(&key("a", "b"), Some(&spec(80))), None);
        assert_eq!(log.set(&key("a", "c"), None), None);
    }

    #[test]
    fn another_epoch_or_a_position_below_the_floor_gets_a_snapshot() {
        let mut log = ExportLog::new(7);
        for i in 0..5 {
            log.set(&key("ns", &format!("s{i}")), Some(&spec(80)));
        }
        let early = Position {
            epoch: 7,
            version: 1,
        };
        for i in 0..3 {
            log.set(&key("ns", &format!("s{i}")), None);
        }
        log.compact(1);
        assert!(log.changes_since(early).reset, "tombstones were compacted");
        let other_epoch = Position {
            epoch: 8,
            version: log.head().version,
        };
        let snapshot = log.changes_since(other_epoch);
        assert!(snapshot.reset);
        assert_eq!(snapshot.upserts.len(), 2);
    }

    #[test]
    fn a_renewed_epoch_sends_importers_of_the_old_one_a_snapshot() {
        let mut log = ExportLog::new(7);
        log.set(&key("a", "b"), Some(&spec(80)));
        let old = log.head();
        log.renew_epoch(8);
        let changes = log.changes_since(old);
        assert!(changes.reset);
        assert_eq!(changes.upserts.len(), 1);
        assert!(log.changes_since(log.head()).is_empty());
    }

    #[test]
    fn a_label_a_peer_would_refuse_is_refused_here_too() {
        let mut long = spec(80);
        long.labels.insert("team".into(), "x".repeat(MAX_TEXT + 1));
        let (field, _) = long.check().unwrap_err();
        assert_eq!(field, "metadata.labels");
        assert!(ServiceSpec::from_wire(&long.to_wire(&key("shop", "api"))).is_err());
    }

    #[test]
    fn a_log_reloaded_from_disk_answers_the_same() {
        let mut log = ExportLog::new(7);
        log.set(&key("a", "b"), Some(&spec(80)));
        log.set(&key("a", "c"), Some(&spec(80)));
        log.set(&key("a", "b"), None);
        let text = serde_json::to_string(&log).unwrap();
        let again: ExportLog = serde_json::from_str(&text).unwrap();
        let from = Position {
            epoch: 7,
            version: 1,
        };
        assert_eq!(again.changes_since(from), log.changes_since(from));
    }

    #[test]
    fn records_from_peers_are_checked() {
        let good = spec(80).to_wire(&key("shop", "api"));
        assert_eq!(
            ServiceSpec::from_wire(&good).unwrap(),
            (key("shop", "api"), spec(80))
        );
        let mut bad = good.clone();
        bad.ports[0].port = 70000;
        assert!(ServiceSpec::from_wire(&bad).is_err());
        let mut bad = good.clone();
        bad.endpoints[0].address = "not an address".into();
        assert!(ServiceSpec::from_wire(&bad).is_err());
        let mut bad = good;
        bad.name = "Bad_Name".into();
        assert!(ServiceSpec::from_wire(&bad).is_err());
    }

    #[test]
    fn the_same_key_from_two_clusters_is_one_service_with_two_backends() {
        let west = ClusterName::new("west").unwrap();
        let east = ClusterName::new("east").unwrap();
        let north = ClusterName::new("north").unwrap();
        let mut local = BTreeMap::new();
        local.insert(key("shop", "api"), spec(80));
        let mut from_west = ImportedCatalog::default();
        from_west.services.insert(key("shop", "api"), spec(80));
        from_west.services.insert(key("shop", "db"), spec(5432));
        let merged = clusterset(&east, &local, [(&west, &from_west)]);
        assert_eq!(merged.len(), 2);
        let api = &merged[0];
        assert_eq!(api.key, key("shop", "api"));
        let clusters: Vec<_> = api.backends.iter().map(|(c, _)| c.as_str()).collect();
        assert_eq!(clusters, ["east", "west"], "local first");
        assert!(
            merged
                .iter()
                .all(|s| s.backends.iter().all(|(c, _)| c != &north))
        );
    }
}
