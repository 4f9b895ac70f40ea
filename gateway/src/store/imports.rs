//! What the gateway imported from its peers, on disk as a snapshot (`imports.json`) and a
//! journal of the batches since (`imports.log`, one JSON line each). A peer's batch costs one
//! line in proportion to what it changed, never a write of the whole catalog; the journal is
//! folded into a new snapshot once it outgrows it. Lines carry a sequence number: at start, the
//! lines after the snapshot's are replayed over it (replaying one the snapshot already holds
//! changes nothing), and a line cut short by a crash ends the replay.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use strait_federation::catalog::{ImportedCatalog, Position, ServiceKey, ServiceSpec};
use strait_federation::identity::ClusterName;
use strait_io::files::write_file;

use crate::GatewayError;

/// Every peer's imported catalog.
pub type Imports = BTreeMap<ClusterName, ImportedCatalog>;

/// The journal is folded into the snapshot once it passes this size and the snapshot's.
const FOLD_AT_LEAST: u64 = 1 << 20;

/// One batch of a peer, as the journal keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    pub seq: u64,
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
            seq: 0,
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
    fn apply(self, imports: &mut Imports) {
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

#[derive(Debug, Default, Serialize, Deserialize)]
struct Snapshot {
    seq: u64,
    imports: Imports,
}

/// The files of the imports in a state folder, and where the journal stands.
#[derive(Debug)]
pub struct ImportFiles {
    snapshot: PathBuf,
    journal: PathBuf,
    /// The last sequence number given.
    seq: u64,
    /// The journal's size now, and the snapshot's when it was written.
    journal_bytes: u64,
    snapshot_bytes: u64,
    file: Option<std::fs::File>,
}

impl ImportFiles {
    /// The imports kept in `dir`: the snapshot with the journal replayed over it. `legacy`
    /// (what an older `state.json` held) is the snapshot when there is none yet.
    pub fn load(dir: &Path, legacy: Imports) -> Result<(Self, Imports), GatewayError> {
        let snapshot_path = dir.join("imports.json");
        let journal_path = dir.join("imports.log");
        let unreadable = |path: &Path, message: String| GatewayError::State {
            path: path.to_owned(),
            message: format!("unreadable ({message}); move it away to import everything again"),
        };
        let (snapshot, snapshot_bytes) = match std::fs::read_to_string(&snapshot_path) {
            Ok(text) => (
                serde_json::from_str::<Snapshot>(&text)
                    .map_err(|e| unreadable(&snapshot_path, e.to_string()))?,
                text.len() as u64,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (
                Snapshot {
                    seq: 0,
                    imports: legacy,
                },
                0,
            ),
            Err(e) => return Err(unreadable(&snapshot_path, e.to_string())),
        };
        let mut imports = snapshot.imports;
        let mut seq = snapshot.seq;
        let mut journal_bytes = 0;
        match std::fs::File::open(&journal_path) {
            Ok(file) => {
                for (number, line) in std::io::BufReader::new(file).lines().enumerate() {
                    let line = line.map_err(|e| unreadable(&journal_path, e.to_string()))?;
                    journal_bytes += line.len() as u64 + 1;
                    match serde_json::from_str::<Entry>(&line) {
                        Ok(entry) if entry.seq > snapshot.seq => {
                            seq = seq.max(entry.seq);
                            entry.apply(&mut imports);
                        }
                        Ok(_) => {}
                        Err(error) => {
                            // Only the last line can be cut short (a crash while appending);
                            // what follows it was never acknowledged as written.
                            tracing::warn!(file = %journal_path.display(), line = number + 1, %error, "the imports journal ends in a line cut short: the rest is imported again from the peers");
                            break;
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(unreadable(&journal_path, e.to_string())),
        }
        let mut files = Self {
            snapshot: snapshot_path,
            journal: journal_path,
            seq,
            journal_bytes,
            snapshot_bytes,
            file: None,
        };
        // Start clean: what was replayed becomes the snapshot, and the journal starts empty
        // (a line cut short must not stay in front of new ones).
        files.fold(&imports)?;
        Ok((files, imports))
    }

    /// Numbers a batch for the journal (in the order batches were applied).
    pub fn number(&mut self, entry: &mut Entry) {
        self.seq += 1;
        entry.seq = self.seq;
    }

    /// Appends numbered batches to the journal and syncs it.
    pub fn append(&mut self, entries: &[Entry]) -> Result<(), GatewayError> {
        let fail = |e: std::io::Error| GatewayError::State {
            path: self.journal.clone(),
            message: e.to_string(),
        };
        let mut text = String::new();
        for entry in entries {
            text.push_str(&serde_json::to_string(entry)?);
            text.push('\n');
        }
        if self.file.is_none() {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.journal)
                .map_err(fail)?;
            self.file = Some(file);
        }
        if let Some(file) = &mut self.file {
            file.write_all(text.as_bytes()).map_err(fail)?;
            file.sync_data().map_err(fail)?;
        }
        self.journal_bytes += text.len() as u64;
        Ok(())
    }

    /// Whether the journal has outgrown the snapshot.
    pub fn wants_fold(&self) -> bool {
        self.journal_bytes > FOLD_AT_LEAST.max(self.snapshot_bytes)
    }

    /// Writes `imports` (which hold every batch numbered so far) as the snapshot and empties
    /// the journal.
    pub fn fold(&mut self, imports: &Imports) -> Result<(), GatewayError> {
        let text = serde_json::to_string(&SnapshotRef {
            seq: self.seq,
            imports,
        })?;
        write_file(&self.snapshot, &text, true)?;
        self.snapshot_bytes = text.len() as u64;
        self.file = None;
        match std::fs::remove_file(&self.journal) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(GatewayError::State {
                    path: self.journal.clone(),
                    message: e.to_string(),
                });
            }
        }
        self.journal_bytes = 0;
        Ok(())
    }
}

#[derive(Serialize)]
struct SnapshotRef<'a> {
    seq: u64,
    imports: &'a Imports,
}

#[cfg(test)]
mod tests;
