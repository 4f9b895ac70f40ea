//! The mesh-wide policies this gateway holds, journaled ([`super::journal`]) as
//! `policies.json` and `policies.log`: a change (an apply here, a peer's batch, tombstones
//! dropped) costs one line in proportion to what it changed, never a write of the whole set.

use serde::{Deserialize, Serialize};
use strait_federation::policy::exchange::PolicyBook;
use strait_federation::policy::replication::{Clock, Entry};
use strait_federation::policy::{Policy, PolicyKey};

use super::journal::Journaled;

/// The policies' journal.
pub struct PoliciesJournal;

/// One change of the policy set, as the journal keeps it: entries as the set now holds them,
/// keys it no longer holds, and the clock after the change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyChange {
    pub clock: Clock,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entries: Vec<(PolicyKey, Entry<Policy>)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dropped: Vec<PolicyKey>,
}

impl PolicyChange {
    /// What `keys` hold in `book` now (a key it no longer holds is dropped).
    pub fn of<'a>(book: &PolicyBook, keys: impl IntoIterator<Item = &'a PolicyKey>) -> Self {
        let mut change = PolicyChange {
            clock: book.clock,
            entries: Vec::new(),
            dropped: Vec::new(),
        };
        for key in keys {
            match book.set.get(key) {
                Some(entry) => change.entries.push((key.clone(), entry.clone())),
                None => change.dropped.push(key.clone()),
            }
        }
        change
    }
}

/// Reads stored policies entry by entry: one that no longer passes its checks is left out (and
/// logged), never the reason a gateway cannot start; peers that hold it send it again.
pub fn stored(value: serde_json::Value) -> PolicyBook {
    let (book, skipped) = PolicyBook::from_stored(value);
    for reason in skipped {
        tracing::warn!(reason = %reason, "a stored policy was left out");
    }
    book
}

impl Journaled for PoliciesJournal {
    const NAME: &'static str = "policies";
    type Part = PolicyBook;
    type Change = PolicyChange;

    fn decode(part: serde_json::Value) -> Result<PolicyBook, String> {
        Ok(stored(part))
    }

    fn apply(part: &mut PolicyBook, change: PolicyChange) {
        for key in &change.dropped {
            part.set.remove(key);
        }
        for (key, entry) in change.entries {
            part.set.merge(key, entry);
        }
        part.clock = change.clock;
    }
}
