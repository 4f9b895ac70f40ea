//! A part of the gateway's state kept on disk as a snapshot (`NAME.json`) and a journal of the
//! changes since (`NAME.log`, one JSON line each). A change costs one line in proportion to
//! what it changed, never a write of the whole part; the journal is folded into a new snapshot
//! once it outgrows it. Lines carry a sequence number: at start, the lines after the snapshot's
//! are replayed over it (replaying one the snapshot already holds changes nothing), and a line
//! cut short by a crash ends the replay.
//!
//! One writer task per journal appends lines in the order the changes were made to the state
//! (they are sent while the state is still locked) and tells whoever waits that the change is
//! on disk.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use strait_io::files::write_file;

use crate::GatewayError;

/// The journal is folded into the snapshot once it passes this size and the snapshot's.
const FOLD_AT_LEAST: u64 = 1 << 20;

/// A part of the state that is journaled.
pub trait Journaled: Send + 'static {
    /// The files' name in the state folder (`NAME.json`, `NAME.log`).
    const NAME: &'static str;
    /// The part itself.
    type Part: Serialize + Send + Sync + 'static;
    /// One change.
    type Change: Serialize + DeserializeOwned + Send + 'static;
    /// Reads a snapshot's part.
    fn decode(part: serde_json::Value) -> Result<Self::Part, String>;
    /// Applies a change, as it was applied to the state.
    fn apply(part: &mut Self::Part, change: Self::Change);
}

/// One line of a journal.
#[derive(Serialize, Deserialize)]
struct Line<C> {
    seq: u64,
    #[serde(flatten)]
    change: C,
}

#[derive(Serialize)]
struct SnapshotRef<'a, P> {
    seq: u64,
    part: &'a P,
}

/// A journal's files, and where it stands.
pub struct Journal<J: Journaled> {
    snapshot: PathBuf,
    journal: PathBuf,
    /// The last sequence number given.
    seq: u64,
    /// The journal's size now, and the snapshot's when it was written.
    journal_bytes: u64,
    snapshot_bytes: u64,
    file: Option<std::fs::File>,
    _part: std::marker::PhantomData<J>,
}

impl<J: Journaled> Journal<J> {
    /// The part kept in `dir`: the snapshot with the journal replayed over it. `legacy` (what
    /// an older `state.json` held) is the snapshot when there is none yet. What was replayed is
    /// written as the new snapshot at once, so the journal starts empty.
    pub fn load(dir: &Path, legacy: J::Part) -> Result<(Self, J::Part), GatewayError> {
        let snapshot_path = dir.join(format!("{}.json", J::NAME));
        let journal_path = dir.join(format!("{}.log", J::NAME));
        let unreadable = |path: &Path, message: String| GatewayError::State {
            path: path.to_owned(),
            message: format!(
                "unreadable ({message}); move {name}.json and {name}.log away to start without them",
                name = J::NAME
            ),
        };
        let (mut part, snapshot_seq, snapshot_bytes) = match std::fs::read_to_string(&snapshot_path)
        {
            Ok(text) => {
                let mut value: serde_json::Value = serde_json::from_str(&text)
                    .map_err(|e| unreadable(&snapshot_path, e.to_string()))?;
                let seq = value.get("seq").and_then(serde_json::Value::as_u64);
                let part = value.get_mut("part").map(serde_json::Value::take);
                let (Some(seq), Some(part)) = (seq, part) else {
                    return Err(unreadable(&snapshot_path, "no seq or part".into()));
                };
                let part = J::decode(part).map_err(|e| unreadable(&snapshot_path, e))?;
                (part, seq, text.len() as u64)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (legacy, 0, 0),
            Err(e) => return Err(unreadable(&snapshot_path, e.to_string())),
        };
        let mut seq = snapshot_seq;
        let mut journal_bytes = 0;
        match std::fs::File::open(&journal_path) {
            Ok(file) => {
                for (number, line) in std::io::BufReader::new(file).lines().enumerate() {
                    let line = line.map_err(|e| unreadable(&journal_path, e.to_string()))?;
                    journal_bytes += line.len() as u64 + 1;
                    match serde_json::from_str::<Line<J::Change>>(&line) {
                        Ok(line) if line.seq > snapshot_seq => {
                            seq = seq.max(line.seq);
                            J::apply(&mut part, line.change);
                        }
                        Ok(_) => {}
                        Err(error) => {
                            // Only the last line can be cut short (a crash while appending);
                            // nothing after it was acknowledged as written.
                            tracing::warn!(file = %journal_path.display(), line = number + 1, %error, "a journal ends in a line cut short: the rest is left out");
                            break;
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(unreadable(&journal_path, e.to_string())),
        }
        let mut journal = Self {
            snapshot: snapshot_path,
            journal: journal_path,
            seq,
            journal_bytes,
            snapshot_bytes,
            file: None,
            _part: std::marker::PhantomData,
        };
        // A line cut short must not stay in front of new ones.
        journal.fold(&part)?;
        Ok((journal, part))
    }

    /// Appends changes (numbered in their order) and syncs the journal.
    pub fn append(&mut self, changes: Vec<J::Change>) -> Result<(), GatewayError> {
        let fail = |path: &Path, e: std::io::Error| GatewayError::State {
            path: path.to_owned(),
            message: e.to_string(),
        };
        let mut text = String::new();
        for change in changes {
            self.seq += 1;
            text.push_str(&serde_json::to_string(&Line {
                seq: self.seq,
                change,
            })?);
            text.push('\n');
        }
        let file = match &mut self.file {
            Some(file) => file,
            None => self.file.insert(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.journal)
                    .map_err(|e| fail(&self.journal, e))?,
            ),
        };
        file.write_all(text.as_bytes())
            .map_err(|e| fail(&self.journal, e))?;
        file.sync_data().map_err(|e| fail(&self.journal, e))?;
        self.journal_bytes += text.len() as u64;
        Ok(())
    }

    /// Whether the journal has outgrown the snapshot.
    pub fn wants_fold(&self) -> bool {
        self.journal_bytes > FOLD_AT_LEAST.max(self.snapshot_bytes)
    }

    /// Writes `part` (which holds every change appended so far) as the snapshot and empties
    /// the journal.
    pub fn fold(&mut self, part: &J::Part) -> Result<(), GatewayError> {
        let text = serde_json::to_string(&SnapshotRef {
            seq: self.seq,
            part,
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

/// A change on its way to the journal (`None`: write the whole part now, for changes whose
/// keys are not at hand), and who waits for it to be on disk.
pub struct Pending<C> {
    change: Option<C>,
    written: Option<tokio::sync::oneshot::Sender<()>>,
}

/// Where changes go to be journaled, in the order they were made.
pub struct Writer<C> {
    tx: tokio::sync::mpsc::UnboundedSender<Pending<C>>,
}

impl<C> Writer<C> {
    /// A writer, and what its task reads.
    pub fn new() -> (Self, tokio::sync::mpsc::UnboundedReceiver<Pending<C>>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        (Self { tx }, rx)
    }

    /// Sends a change (call with the state still locked from making it).
    pub fn send(&self, change: C) {
        // Closed only once the gateway stops: the change is then made again by whoever
        // made it (a peer resends, an operator was not told it is done).
        let _ = self.tx.send(Pending {
            change: Some(change),
            written: None,
        });
    }

    /// Asks for the whole part to be written (call after the change, the state unlocked or
    /// not).
    pub fn send_whole(&self) {
        let _ = self.tx.send(Pending {
            change: None,
            written: None,
        });
    }

    /// Sends a change and returns what tells once it is on disk (call with the state still
    /// locked; wait outside the lock).
    pub fn send_and_wait(&self, change: C) -> Written {
        let (written, done) = tokio::sync::oneshot::channel();
        let _ = self.tx.send(Pending {
            change: Some(change),
            written: Some(written),
        });
        Written(done)
    }
}

/// Tells once a change is on disk.
pub struct Written(tokio::sync::oneshot::Receiver<()>);

impl Written {
    /// Waits until the change is on disk; an error when it could not be written (the writer
    /// logged why).
    pub async fn wait(self) -> Result<(), GatewayError> {
        self.0.await.map_err(|_| GatewayError::State {
            path: PathBuf::from("the state folder's journals"),
            message: "a change could not be written (the gateway's log says why)".into(),
        })
    }
}

/// Appends changes as they come, and folds the journal into a new snapshot once it outgrows
/// the last one; `part` reads the part from the state (every change sent so far is in it:
/// changes are made before they are sent). A change is reported written only once it is on
/// disk, by a line or by a fold.
pub async fn keep<J: Journaled>(
    mut journal: Journal<J>,
    mut pending: tokio::sync::mpsc::UnboundedReceiver<Pending<J::Change>>,
    part: impl Fn() -> J::Part + Send + 'static,
) {
    // Set when a write failed: the next fold writes everything again.
    let mut unwritten = false;
    while let Some(first) = pending.recv().await {
        let mut batch = vec![first];
        while let Ok(next) = pending.try_recv() {
            batch.push(next);
        }
        let whole = batch.iter().any(|p| p.change.is_none());
        let (changes, mut waiting): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|p| (p.change, p.written)).unzip();
        let changes: Vec<J::Change> = changes.into_iter().flatten().collect();
        if !changes.is_empty() {
            let Some((returned, appended)) = on_disk(journal, move |j| j.append(changes)).await
            else {
                return;
            };
            journal = returned;
            match appended {
                Ok(()) => tell(&mut waiting),
                Err(error) => {
                    tracing::error!(journal = J::NAME, %error, "cannot append to a journal; writing the whole part");
                    unwritten = true;
                }
            }
        }
        if journal.wants_fold() || unwritten || whole {
            let snapshot = part();
            let Some((returned, folded)) = on_disk(journal, move |j| j.fold(&snapshot)).await
            else {
                return;
            };
            journal = returned;
            match folded {
                Ok(()) => {
                    unwritten = false;
                    tell(&mut waiting);
                }
                Err(error) => {
                    tracing::error!(journal = J::NAME, %error, "cannot write a journal's snapshot")
                }
            }
        }
        // Whoever still waits is told nothing: its change is not on disk.
    }
}

/// Runs a write of the journal on a blocking thread, and hands the journal back with the
/// write's result; `None` when that thread was lost (the writer then stops, and logs why).
async fn on_disk<J: Journaled>(
    mut journal: Journal<J>,
    write: impl FnOnce(&mut Journal<J>) -> Result<(), GatewayError> + Send + 'static,
) -> Option<(Journal<J>, Result<(), GatewayError>)> {
    let done = tokio::task::spawn_blocking(move || {
        let result = write(&mut journal);
        (journal, result)
    })
    .await;
    if done.is_err() {
        tracing::error!(journal = J::NAME, "a journal's writer stopped");
    }
    done.ok()
}

/// Tells whoever waits that their changes are on disk.
fn tell(waiting: &mut [Option<tokio::sync::oneshot::Sender<()>>]) {
    for written in waiting.iter_mut().filter_map(Option::take) {
        let _ = written.send(());
    }
}

#[cfg(test)]
mod tests;
