//! Journals: what was journaled comes back, whatever was folded, cut or replayed.

use super::*;
use crate::store::imports::{Entry, Imports, ImportsJournal};
use crate::store::policies::{PoliciesJournal, PolicyChange};
use strait_federation::catalog::{Endpoint, Port, Position, Protocol};
use strait_federation::catalog::{ServiceKey, ServiceSpec};
use strait_federation::identity::ClusterName;

type ImportFiles = Journal<ImportsJournal>;

fn key(name: &str) -> ServiceKey {
    ServiceKey {
        namespace: "shop".parse().unwrap(),
        name: name.parse().unwrap(),
    }
}

fn spec(port: u16) -> ServiceSpec {
    ServiceSpec {
        export: true,
        ports: vec![Port {
            name: "http".into(),
            port,
            protocol: Protocol::Http,
        }],
        endpoints: vec![Endpoint {
            address: ([10, 0, 0, 1], port).into(),
            hostname: None,
            ready: true,
        }],
        labels: Default::default(),
        exported_at_ms: 0,
    }
}

fn cluster(name: &str) -> ClusterName {
    ClusterName::new(name).unwrap()
}

fn position(version: u64) -> Position {
    Position { epoch: 7, version }
}

/// Applies a batch to `imports` as a session does, and journals it.
fn batch(
    files: &mut ImportFiles,
    imports: &mut Imports,
    peer: &str,
    version: u64,
    upserts: &[(&str, u16)],
    removals: &[&str],
) {
    let catalog = imports.entry(cluster(peer)).or_default();
    let mut changed = Vec::new();
    for (name, port) in upserts {
        catalog.services.insert(key(name), spec(*port));
        changed.push(key(name));
    }
    for name in removals {
        catalog.services.remove(&key(name));
        changed.push(key(name));
    }
    catalog.position = position(version);
    let entry = Entry::of(imports, &cluster(peer), &changed, false);
    files.append(vec![entry]).unwrap();
}

#[test]
fn journaled_batches_come_back_at_the_next_start_and_fold_into_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let (mut files, mut imports) = ImportFiles::load(dir.path(), Imports::new()).unwrap();
    assert!(imports.is_empty());
    batch(
        &mut files,
        &mut imports,
        "west",
        1,
        &[("api", 80), ("web", 81)],
        &[],
    );
    batch(&mut files, &mut imports, "north", 4, &[("db", 5432)], &[]);
    batch(
        &mut files,
        &mut imports,
        "west",
        2,
        &[("api", 90)],
        &["web"],
    );
    // A batch costs a line in proportion to what it changed.
    let journal = std::fs::read_to_string(dir.path().join("imports.log")).unwrap();
    assert_eq!(journal.lines().count(), 3);
    assert!(journal.lines().last().unwrap().len() < 400, "{journal}");
    drop(files);

    let (mut files, loaded) = ImportFiles::load(dir.path(), Imports::new()).unwrap();
    assert_eq!(loaded, imports);
    // Loading folded the journal into the snapshot.
    assert!(!dir.path().join("imports.log").exists());
    // A peer withdrawn is journaled as a reset with nothing.
    imports.remove(&cluster("north"));
    let entry = Entry::of(&imports, &cluster("north"), &[], true);
    files.append(vec![entry]).unwrap();
    drop(files);
    let (_, loaded) = ImportFiles::load(dir.path(), Imports::new()).unwrap();
    assert_eq!(loaded, imports);
    assert!(!loaded.contains_key(&cluster("north")));
}

#[test]
fn a_line_cut_short_by_a_crash_ends_the_replay_and_what_came_before_stays() {
    let dir = tempfile::tempdir().unwrap();
    let (mut files, mut imports) = ImportFiles::load(dir.path(), Imports::new()).unwrap();
    batch(&mut files, &mut imports, "west", 1, &[("api", 80)], &[]);
    let before = imports.clone();
    batch(&mut files, &mut imports, "west", 2, &[("api", 81)], &[]);
    drop(files);
    let path = dir.path().join("imports.log");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, &text[..text.len() - 10]).unwrap();
    let (_, loaded) = ImportFiles::load(dir.path(), Imports::new()).unwrap();
    assert_eq!(loaded, before);
}

#[test]
fn batches_journaled_again_after_a_fold_that_already_holds_them_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut files, mut imports) = ImportFiles::load(dir.path(), Imports::new()).unwrap();
    batch(&mut files, &mut imports, "west", 1, &[("api", 80)], &[]);
    // The state already holds the next two batches when the fold takes it; their lines come
    // after it with higher numbers.
    let mut later = Vec::new();
    for (version, port) in [(2, 81), (3, 82)] {
        let catalog = imports.entry(cluster("west")).or_default();
        catalog.services.insert(key("api"), spec(port));
        catalog.position = position(version);
        later.push(Entry::of(&imports, &cluster("west"), &[key("api")], false));
    }
    files.fold(&imports).unwrap();
    files.append(later).unwrap();
    drop(files);
    let (_, loaded) = ImportFiles::load(dir.path(), Imports::new()).unwrap();
    assert_eq!(loaded, imports);
}

#[test]
fn imports_of_an_older_state_file_become_the_first_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let mut legacy = Imports::new();
    let catalog = legacy.entry(cluster("west")).or_default();
    catalog.services.insert(key("api"), spec(80));
    catalog.position = position(3);
    let (_, loaded) = ImportFiles::load(dir.path(), legacy.clone()).unwrap();
    assert_eq!(loaded, legacy);
    assert!(dir.path().join("imports.json").exists());
    // From then on the snapshot is what counts.
    let (_, loaded) = ImportFiles::load(dir.path(), Imports::new()).unwrap();
    assert_eq!(loaded, legacy);
}

#[test]
fn an_unreadable_snapshot_is_an_error_that_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("imports.json"), "{not json").unwrap();
    let Err(error) = ImportFiles::load(dir.path(), Imports::new()) else {
        panic!("an unreadable snapshot loaded")
    };
    let error = error.to_string();
    assert!(
        error.contains("imports.json") && error.contains("unreadable"),
        "{error}"
    );
}

#[test]
fn policy_changes_come_back_in_order_with_the_clock_and_dropped_tombstones_stay_dropped() {
    use strait_federation::policy::exchange::PolicyBook;
    use strait_federation::resource::{Resource, parse_documents};
    let dir = tempfile::tempdir().unwrap();
    let (mut files, mut book) =
        Journal::<PoliciesJournal>::load(dir.path(), PolicyBook::default()).unwrap();
    let east = cluster("east");
    let documents = parse_documents(
        "p.yaml",
        "apiVersion: policy.strait.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: deny-all, namespace: shop}\nspec: {action: deny}\n---\napiVersion: policy.strait.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: allow-web, namespace: shop}\nspec: {action: allow}\n",
    )
    .unwrap();
    let mut keys = Vec::new();
    for (i, document) in documents.into_iter().enumerate() {
        let Resource::Policy { key, policy } = document else {
            panic!("a policy")
        };
        book.apply(key.clone(), policy, &east, 1_000 + i as u64)
            .unwrap();
        files.append(vec![PolicyChange::of(&book, [&key])]).unwrap();
        keys.push(key);
    }
    // Deleted (a tombstone), then the tombstone dropped after its retention.
    book.delete(&keys[0], &east, 5_000);
    files
        .append(vec![PolicyChange::of(&book, [&keys[0]])])
        .unwrap();
    book.set.remove(&keys[0]);
    files
        .append(vec![PolicyChange::of(&book, [&keys[0]])])
        .unwrap();
    drop(files);
    let (_, loaded) = Journal::<PoliciesJournal>::load(dir.path(), PolicyBook::default()).unwrap();
    assert_eq!(loaded, book);
    assert!(loaded.set.get(&keys[0]).is_none());
    assert!(loaded.set.get(&keys[1]).is_some_and(|e| e.body.is_some()));
    assert_eq!(loaded.clock, book.clock);
}
