//! The view log and the held view against each other: whatever path a sidecar's messages take,
//! what it holds is the whole view.

use super::*;
use crate::identity::{Namespace, ServiceName};
use crate::proto::workload::{Backend, EndpointView};
use crate::seeded::Seeded;

fn key(namespace: &str, name: &str) -> ServiceKey {
    ServiceKey {
        namespace: Namespace::new(namespace).unwrap(),
        name: ServiceName::new(name).unwrap(),
    }
}

fn entry(key: &ServiceKey, endpoints: u64, vips: u64) -> ViewEntry {
    ViewEntry {
        service: ServiceView {
            namespace: key.namespace.to_string(),
            name: key.name.to_string(),
            ports: Vec::new(),
            backends: vec![Backend {
                cluster: "east".into(),
                endpoints: (0..endpoints)
                    .map(|i| EndpointView {
                        address: format!("10.0.0.{i}:80"),
                        hostname: String::new(),
                        ready: true,
                    })
                    .collect(),
                ..Backend::default()
            }],
        },
        virtual_addresses: (0..vips)
            .map(|i| VirtualAddress {
                address: format!("240.0.{endpoints}.{i}"),
                namespace: key.namespace.to_string(),
                service: key.name.to_string(),
                ..VirtualAddress::default()
            })
            .collect(),
    }
}

/// The messages a gateway stream sends for a part, after its message `last`: a whole view with
/// the settings, a delta without.
fn send(part: ServicesPart, last: u64) -> Vec<CatalogView> {
    let settings = part.whole.then(|| CatalogView {
        cluster: "east".into(),
        ..CatalogView::default()
    });
    part.messages(last, settings).collect()
}

/// A part's services and virtual addresses, as a whole view lists them.
fn flat(part: &ServicesPart) -> (Vec<ServiceView>, Vec<VirtualAddress>) {
    let services = part.entries.iter().map(|e| e.service.clone()).collect();
    let addresses = part
        .entries
        .iter()
        .flat_map(|e| e.virtual_addresses.iter().cloned())
        .collect();
    (services, addresses)
}

/// A deterministic pseudo-random source.
struct Walk(Seeded);

impl Walk {
    fn next(&mut self, below: u64) -> u64 {
        self.0.below(below)
    }
}

/// A sidecar following a log: what it holds, the log version it was last sent, and the
/// version of its stream's last message.
struct Follower {
    interest: Interest,
    held: HeldView,
    at: Option<u64>,
    stream_version: u64,
}

#[test]
fn sidecars_that_take_deltas_lose_some_and_fall_behind_always_hold_the_whole_view() {
    for seed in 1..=20 {
        let mut walk = Walk(Seeded::new(seed));
        let mut log = ViewLog::new(40);
        let mut followers: Vec<Follower> = (0..4)
            .map(|i| Follower {
                // Follower 2 asks for one namespace and one service of another.
                interest: if i == 2 {
                    Interest::of(
                        &["ns1".to_owned()],
                        &[ServiceRef {
                            namespace: "ns0".into(),
                            name: "s3".into(),
                        }],
                    )
                } else {
                    Interest::default()
                },
                held: HeldView::default(),
                at: None,
                stream_version: 0,
            })
            .collect();
        let mut gaps = 0;
        for step in 0..300 {
            let changes: Vec<_> = (0..=walk.next(4))
                .map(|_| {
                    let k = key(
                        &format!("ns{}", walk.next(3)),
                        &format!("s{}", walk.next(30)),
                    );
                    let value = (walk.next(5) > 0).then(|| entry(&k, walk.next(3), walk.next(3)));
                    (k, value)
                })
                .collect();
            log.update(changes);
            for (i, follower) in followers.iter_mut().enumerate() {
                // Follower 0 hears every version; the others are woken now and then, and
                // follower 3 loses a message now and then (its stream would start again).
                if i > 0 && walk.next(i as u64 + 1) != 0 {
                    continue;
                }
                let part = follower
                    .at
                    .and_then(|at| log.delta(at, &follower.interest))
                    .unwrap_or_else(|| log.whole(&follower.interest));
                if part.is_empty() {
                    continue;
                }
                let sent = send(part, follower.stream_version);
                follower.stream_version = sent.last().map_or(0, |m| m.version);
                follower.at = Some(log.version());
                if i == 3 && walk.next(5) == 0 {
                    // Lost: the next delta will not follow what the sidecar holds.
                    continue;
                }
                for message in sent {
                    if let Err(gap) = follower.held.apply(message) {
                        gaps += 1;
                        assert!(gap.from > gap.held || gap.held == 0, "{gap}");
                        // The sidecar starts a new stream: a whole view.
                        let whole = send(log.whole(&follower.interest), 0);
                        follower.stream_version = whole.last().map_or(0, |m| m.version);
                        for message in whole {
                            follower.held.apply(message).unwrap();
                        }
                        break;
                    }
                }
                assert!(follower.held.complete());
                let held = follower.held.whole();
                assert_eq!(
                    (held.services, held.virtual_addresses),
                    flat(&log.whole(&follower.interest)),
                    "seed {seed} step {step} follower {i}"
                );
            }
        }
        assert!(
            gaps > 0,
            "seed {seed}: no message was lost, the gap path went untested"
        );
    }
}

#[test]
fn a_one_service_change_is_a_delta_of_that_service_alone() {
    let mut log = ViewLog::default();
    log.update((0..1000).map(|i| {
        let k = key("shop", &format!("s{i}"));
        let e = entry(&k, 2, 2);
        (k, Some(e))
    }));
    let before = log.version();
    let changed = key("shop", "s500");
    assert!(log.update([(changed.clone(), Some(entry(&changed, 3, 2)))]));
    let delta = log.delta(before, &Interest::default()).unwrap();
    assert_eq!(delta.entries.len(), 1);
    assert_eq!(delta.entries[0].service.name, "s500");
    assert_eq!(delta.entries[0].virtual_addresses.len(), 2);
    assert!(delta.removed.is_empty());
    // One message, which names the version before it.
    let sent = send(delta, 7);
    assert_eq!(sent.len(), 1);
    assert_eq!((sent[0].version, sent[0].delta_from), (8, 7));
    assert!(sent[0].settings_kept && !sent[0].continued);
    assert_eq!(
        log.delta(log.version(), &Interest::default()).unwrap(),
        ServicesPart::default()
    );
    // A sidecar that asked for another namespace hears nothing of it.
    let elsewhere = Interest::of(&["pay".to_owned()], &[]);
    assert!(log.delta(before, &elsewhere).unwrap().is_empty());
    assert!(log.whole(&elsewhere).entries.is_empty());
    let one = Interest::of(
        &[],
        &[ServiceRef {
            namespace: "shop".into(),
            name: "s7".into(),
        }],
    );
    assert_eq!(log.whole(&one).entries.len(), 1);
    // Setting a service to what it is changes nothing.
    assert!(!log.update([(changed.clone(), Some(entry(&changed, 3, 2)))]));
    // A removal is named.
    assert!(log.update([(changed.clone(), None)]));
    let delta = log.delta(log.version() - 1, &Interest::default()).unwrap();
    assert_eq!(delta.removed.len(), 1);
    assert!(delta.entries.is_empty());
}

#[test]
fn a_version_the_log_no_longer_covers_gets_no_delta() {
    let mut log = ViewLog::new(3);
    for i in 0..5 {
        let k = key("shop", &format!("s{i}"));
        let e = entry(&k, 1, 1);
        log.update([(k, Some(e))]);
    }
    assert_eq!(log.version(), 5);
    assert!(
        log.delta(1, &Interest::default()).is_none(),
        "changes 2 and 1 were dropped"
    );
    assert_eq!(log.delta(2, &Interest::default()).unwrap().entries.len(), 3);
    assert!(
        log.delta(6, &Interest::default()).is_none(),
        "a version the log never made"
    );
}

#[test]
fn a_delta_before_any_whole_view_or_out_of_turn_is_refused_and_changes_nothing() {
    let mut held = HeldView::default();
    let delta = CatalogView {
        version: 2,
        delta_from: 1,
        settings_kept: true,
        ..CatalogView::default()
    };
    assert_eq!(held.apply(delta.clone()), Err(ViewGap { from: 1, held: 0 }));
    let k = key("shop", "api");
    held.apply(CatalogView {
        version: 1,
        cluster: "east".into(),
        services: vec![entry(&k, 1, 0).service],
        ..CatalogView::default()
    })
    .unwrap();
    let before = held.whole();
    let skipped = CatalogView {
        version: 4,
        delta_from: 3,
        settings_kept: true,
        removed_services: vec![ServiceRef {
            namespace: "shop".into(),
            name: "api".into(),
        }],
        ..CatalogView::default()
    };
    assert_eq!(held.apply(skipped), Err(ViewGap { from: 3, held: 1 }));
    assert_eq!(held.whole(), before);
    // In turn, it applies and keeps the settings.
    held.apply(delta).unwrap();
    assert_eq!(held.whole().cluster, "east");
    assert_eq!(held.version(), 2);
}

#[test]
fn a_large_view_goes_in_parts_that_are_taken_together() {
    let mut log = ViewLog::default();
    log.update((0..1000).map(|i| {
        let k = key("shop", &format!("s{i:04}"));
        let e = entry(&k, 1, 1);
        (k, Some(e))
    }));
    let sent = send(log.whole(&Interest::default()), 0);
    // 256 services a message: four messages, each a delta of the one before but the first.
    assert_eq!(
        sent.iter().map(|m| m.services.len()).collect::<Vec<_>>(),
        vec![256, 256, 256, 232]
    );
    assert_eq!(
        sent.iter()
            .map(|m| (m.version, m.delta_from, m.continued))
            .collect::<Vec<_>>(),
        vec![(1, 0, true), (2, 1, true), (3, 2, true), (4, 3, false)]
    );
    assert_eq!(sent[0].cluster, "east");
    assert!(
        sent[1..]
            .iter()
            .all(|m| m.settings_kept && m.cluster.is_empty())
    );
    let mut held = HeldView::default();
    for message in sent {
        assert!(!held.complete());
        held.apply(message).unwrap();
    }
    assert!(held.complete());
    assert_eq!(held.len(), 1000);
    let whole = held.whole();
    assert_eq!(
        (whole.services, whole.virtual_addresses),
        flat(&log.whole(&Interest::default()))
    );
    assert_eq!(whole.cluster, "east");
    // A sidecar that takes no deltas gets it in one message.
    let one: Vec<CatalogView> = log.whole(&Interest::default()).message(0, None).collect();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].services.len(), 1000);
    assert!(!one[0].continued && one[0].delta_from == 0);
}
