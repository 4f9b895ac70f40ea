//! The view log and the held view against each other: whatever path a sidecar's messages take,
//! what it holds is the whole view.

use super::*;
use crate::identity::{Namespace, ServiceName};
use crate::proto::workload::{Backend, EndpointView};

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

/// A message as a gateway stream sends it: whole, or a delta from the stream's last version.
fn message(part: ServicesPart, from: u64, version: u64) -> CatalogView {
    CatalogView {
        cluster: "east".into(),
        version,
        delta_from: if part.whole { 0 } else { from },
        settings_kept: !part.whole,
        services: part.services,
        virtual_addresses: part.virtual_addresses,
        removed_services: part.removed,
        ..CatalogView::default()
    }
}

/// A deterministic pseudo-random source.
struct Walk(u64);

impl Walk {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % below
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
        let mut walk = Walk(seed);
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
                let from = follower.stream_version;
                follower.stream_version += 1;
                let sent = message(part, from, follower.stream_version);
                follower.at = Some(log.version());
                if i == 3 && walk.next(5) == 0 {
                    // Lost: the next delta will not follow what the sidecar holds.
                    continue;
                }
                match follower.held.apply(sent) {
                    Ok(()) => {}
                    Err(gap) => {
                        gaps += 1;
                        assert!(gap.from > gap.held || gap.held == 0, "{gap}");
                        // The sidecar starts a new stream: a whole view.
                        let whole = message(log.whole(&follower.interest), 0, 1);
                        follower.stream_version = 1;
                        follower.held.apply(whole).unwrap();
                    }
                }
                let want = message(log.whole(&follower.interest), 0, follower.stream_version);
                let held = follower.held.whole();
                assert_eq!(
                    (held.services, held.virtual_addresses),
                    (want.services, want.virtual_addresses),
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
    assert_eq!(delta.services.len(), 1);
    assert_eq!(delta.services[0].name, "s500");
    assert_eq!(delta.virtual_addresses.len(), 2);
    assert!(delta.removed.is_empty());
    assert_eq!(
        log.delta(log.version(), &Interest::default()).unwrap(),
        ServicesPart::default()
    );
    // A sidecar that asked for another namespace hears nothing of it.
    let elsewhere = Interest::of(&["pay".to_owned()], &[]);
    assert!(log.delta(before, &elsewhere).unwrap().is_empty());
    assert!(log.whole(&elsewhere).services.is_empty());
    let one = Interest::of(
        &[],
        &[ServiceRef {
            namespace: "shop".into(),
            name: "s7".into(),
        }],
    );
    assert_eq!(log.whole(&one).services.len(), 1);
    // Setting a service to what it is changes nothing.
    assert!(!log.update([(changed.clone(), Some(entry(&changed, 3, 2)))]));
    // A removal is named.
    assert!(log.update([(changed.clone(), None)]));
    let delta = log.delta(log.version() - 1, &Interest::default()).unwrap();
    assert_eq!(delta.removed.len(), 1);
    assert!(delta.services.is_empty());
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
    assert_eq!(
        log.delta(2, &Interest::default()).unwrap().services.len(),
        3
    );
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
