use super::*;

const I: u64 = 5_000;

fn key(direction: Direction, service: &str, source: &str, destination: &str) -> SeriesKey {
    SeriesKey {
        direction,
        namespace: "shop".into(),
        service: service.into(),
        source_cluster: source.into(),
        destination_cluster: destination.into(),
        workload: String::new(),
    }
}

/// `ok` requests answered 2xx and `failed` 5xx, all in the 1–2 ms bucket.
fn requests(ok: u64, failed: u64) -> Counts {
    let mut counts = Counts::default();
    counts.status_classes[1] = ok;
    counts.status_classes[4] = failed;
    counts.latency[3] = ok + failed;
    counts
}

fn book(name: &str) -> GoldenBook {
    GoldenBook::new(name, GoldenConfig::default())
}

/// Hands every batch `from` (cluster `from_name`) logged after `cursor` to `to` (cluster
/// `to_name`), as a peer session does.
fn pass(
    (from, from_name): (&GoldenBook, &str),
    (to, to_name): (&mut GoldenBook, &str),
    cursor: &mut u64,
    now: u64,
) {
    let (batches, next) = from.outgoing(*cursor, to_name);
    *cursor = next;
    for batch in batches {
        to.merge(batch, now, from_name).expect("a valid batch");
    }
}

#[test]
fn quantiles_interpolate_within_their_bucket() {
    let mut counts = Counts::default();
    // 100 requests between 1 and 2 ms.
    counts.latency[3] = 100;
    counts.status_classes[1] = 100;
    let p50 = counts.quantile(0.5).unwrap();
    assert!((p50 - 0.0015).abs() < 1e-9, "{p50}");
    // A slow one in the unbounded bucket answers the last bound.
    counts.latency[BUCKET_COUNT - 1] = 1;
    assert_eq!(counts.quantile(1.0), Some(10.0));
    assert_eq!(Counts::default().quantile(0.5), None);
}

#[test]
fn a_summary_gives_success_rate_rate_and_latency() {
    let summary = Summary::of(&requests(90, 10), 10.0, false);
    assert_eq!(summary.requests, 100);
    assert_eq!(summary.success_rate, Some(0.9));
    assert_eq!(summary.rps, 10.0);
    let [p50, p95, p99] = summary.latency_ms.unwrap();
    assert!(1.0 <= p50 && p50 <= p95 && p95 <= p99 && p99 <= 2.0);
    let none = Summary::of(&Counts::default(), 10.0, false);
    assert_eq!((none.success_rate, none.latency_ms), (None, None));
}

#[test]
fn encoding_round_trips_and_names_are_sent_once() {
    let a = key(Direction::Inbound, "api", "east", "west");
    let b = key(Direction::Outbound, "orders", "west", "west");
    let (ca, cb) = (requests(3, 1), requests(7, 0));
    let (names, series) = encode([(&a, &ca), (&b, &cb)]);
    assert_eq!(
        names.iter().filter(|n| n.as_str() == "shop").count(),
        1,
        "{names:?}"
    );
    let decoded = decode(&names, &series).unwrap();
    assert_eq!(decoded, vec![(a, ca), (b, cb)]);
}

#[test]
fn hostile_series_are_refused_with_the_field_named() {
    let a = key(Direction::Inbound, "api", "east", "west");
    let (names, mut series) = encode([(&a, &requests(1, 0))]);
    series[0].service = 99;
    let error = decode(&names, &series).unwrap_err().to_string();
    assert!(error.contains("service refers to name 99"), "{error}");

    let (names, mut series) = encode([(&a, &requests(1, 0))]);
    series[0].latency = vec![1; BUCKET_COUNT + 1];
    let error = decode(&names, &series).unwrap_err().to_string();
    assert!(error.contains("latency has 18 numbers"), "{error}");

    let (mut names, series) = encode([(&a, &requests(1, 0))]);
    names[0] = "x".repeat(MAX_NAME + 1);
    assert!(matches!(
        decode(&names, &series),
        Err(GoldenError::NameTooLong { .. })
    ));

    let many = vec![series[0].clone(); MAX_SERIES_PER_MESSAGE + 1];
    assert!(matches!(
        decode(&names, &many),
        Err(GoldenError::TooManySeries { .. })
    ));

    let empty = vec![String::new(); 6];
    let error = decode(&empty, &series).unwrap_err().to_string();
    assert!(error.contains("namespace is empty"), "{error}");
}

#[test]
fn an_interval_is_sealed_after_its_grace_and_quiet_intervals_still_say_alive() {
    let mut west = book("west");
    let a = key(Direction::Inbound, "api", "east", "west");
    let t0 = 100 * I;
    // A gateway starting seals the interval that ended last, to say it is alive.
    assert!(west.seal(t0 + 1_000));
    let (_, cursor) = west.outgoing(0, "east");
    west.record(t0 + 10, vec![(a.clone(), requests(5, 0))]);
    // Not yet: the interval is open, then within its grace.
    assert!(!west.seal(t0 + 10));
    assert!(!west.seal(t0 + I + 500));
    assert!(west.seal(t0 + I + 1_000));
    let (batches, cursor) = west.outgoing(cursor, "east");
    assert_eq!(batches.len(), 1);
    assert_eq!((batches[0].interval, batches[0].series.len()), (100, 1));
    // Two quiet intervals later: one empty batch per interval.
    assert!(west.seal(t0 + 3 * I + 1_000));
    let (batches, _) = west.outgoing(cursor, "east");
    assert_eq!(
        batches
            .iter()
            .map(|b| (b.interval, b.series.len()))
            .collect::<Vec<_>>(),
        vec![(101, 0), (102, 0)]
    );
}

#[test]
fn a_report_after_its_interval_was_sealed_counts_in_the_next_one() {
    let mut west = book("west");
    let a = key(Direction::Inbound, "api", "east", "west");
    let t0 = 100 * I;
    west.seal(t0 + I + 1_000);
    // Counted during interval 100, arriving after it was sealed.
    west.record(t0 + I - 1, vec![(a.clone(), requests(4, 0))]);
    west.seal(t0 + 2 * I + 1_000);
    let rows = west.rows(t0 + 2 * I + 1_000, 30_000);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].counts.requests(), 4);
}

#[test]
fn rows_sum_a_window_and_give_its_rate() {
    let mut west = book("west");
    let a = key(Direction::Inbound, "api", "west", "west");
    let t0 = 100 * I;
    for i in 0..4 {
        west.record(t0 + i * I, vec![(a.clone(), requests(50, 0))]);
        west.seal(t0 + (i + 1) * I + 1_000);
    }
    let now = t0 + 4 * I + 1_000;
    let rows = west.rows(now, 10_000);
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].counts.requests(), rows[0].seconds), (100, 10.0));
    let summary = Summary::of(&rows[0].counts, rows[0].seconds, rows[0].stale);
    assert_eq!(summary.rps, 10.0);
    assert!(!summary.stale);
}

#[test]
fn figures_of_a_silent_cluster_turn_stale_and_keep_their_last_values() {
    let mut west = book("west");
    let mut east = book("east");
    let a = key(Direction::Inbound, "api", "west", "west");
    let t0 = 100 * I;
    let mut cursor = 0;
    for i in 0..3 {
        west.record(t0 + i * I, vec![(a.clone(), requests(50, 0))]);
        west.seal(t0 + (i + 1) * I + 1_000);
        pass(
            (&west, "west"),
            (&mut east, "east"),
            &mut cursor,
            t0 + (i + 1) * I + 1_000,
        );
    }
    let last_heard = t0 + 3 * I + 1_000;
    let fresh = east.rows(last_heard + 1_000, 30_000);
    assert_eq!((fresh[0].counts.requests(), fresh[0].stale), (150, false));
    // West's gateway stops: east keeps its last figures, marked stale, not decayed.
    let later = east.rows(last_heard + 20_000, 30_000);
    assert_eq!((later[0].counts.requests(), later[0].stale), (150, true));
    assert_eq!(later[0].seconds, 15.0);
    assert_eq!(
        east.clusters(last_heard + 20_000),
        vec![("west".into(), true)]
    );
    // And forgets them after long enough.
    east.expire(last_heard + 700_000);
    assert!(east.rows(last_heard + 700_000, 30_000).is_empty());
}

#[test]
fn figures_travel_beyond_a_peer_and_count_once_around_a_triangle() {
    // east — west — north — east: west's batches reach east directly and through north.
    let mut west = book("west");
    let mut north = book("north");
    let mut east = book("east");
    let a = key(Direction::Inbound, "api", "west", "west");
    let t0 = 100 * I;
    west.record(t0, vec![(a.clone(), requests(10, 0))]);
    west.seal(t0 + I + 1_000);
    let now = t0 + I + 2_000;
    let (mut west_north, mut north_east, mut west_east, mut east_north) = (0, 0, 0, 0);
    pass((&west, "west"), (&mut north, "north"), &mut west_north, now);
    pass((&north, "north"), (&mut east, "east"), &mut north_east, now);
    pass((&west, "west"), (&mut east, "east"), &mut west_east, now);
    // East had it from north already, and never hands north back what north sent.
    let (again, _) = east.outgoing(east_north, "north");
    assert!(
        again.is_empty(),
        "east passes north's batch back: {again:?}"
    );
    pass((&east, "east"), (&mut north, "north"), &mut east_north, now);
    for (name, book) in [("north", &north), ("east", &east)] {
        let rows = book.rows(now, 30_000);
        assert_eq!(rows.len(), 1, "{name}");
        assert_eq!(rows[0].counts.requests(), 10, "{name} counted it once");
    }
    // A gateway's own figures coming back are ignored.
    let (echo, _) = north.outgoing(0, "east");
    assert!(!echo.is_empty());
    for batch in echo {
        assert_eq!(west.merge(batch, now, "north"), Ok(false));
    }
    // And a peer never gets back what it originated.
    assert!(north.outgoing(0, "west").0.is_empty());
}

#[test]
fn batches_from_the_far_future_or_too_old_are_refused_or_ignored() {
    let mut east = book("east");
    let now = 1_000 * I;
    let batch = |interval| wire::Batch {
        origin: "west".into(),
        interval,
        interval_ms: I as u32,
        names: Vec::new(),
        series: Vec::new(),
        session_names: false,
    };
    assert!(east.merge(batch(u64::MAX / I), now, "west").is_err());
    assert_eq!(east.merge(batch(999), now, "west"), Ok(true));
    assert_eq!(
        east.merge(batch(999), now, "west"),
        Ok(false),
        "a repeat is nothing new"
    );
    assert_eq!(
        east.merge(batch(999 - 12), now, "west"),
        Ok(false),
        "older than retained"
    );
    let mut bad = batch(999);
    bad.interval_ms = 0;
    assert!(east.merge(bad, now, "west").is_err());
}

#[test]
fn series_over_the_limit_are_dropped_and_counted() {
    let config = GoldenConfig {
        max_series: 2,
        ..GoldenConfig::default()
    };
    let mut west = GoldenBook::new("west", config);
    let series = ["a", "b", "c"]
        .iter()
        .map(|s| (key(Direction::Inbound, s, "west", "west"), requests(1, 0)))
        .collect();
    west.record(100 * I, series);
    assert_eq!(west.dropped, 1);
    assert_eq!(west.series_held(), 2);
}

#[test]
fn groups_sum_rows_and_keep_the_stale_mark() {
    let rows = vec![
        Row {
            origin: "west".into(),
            key: key(Direction::Outbound, "api", "west", "east"),
            counts: requests(10, 0),
            seconds: 10.0,
            stale: false,
            age_ms: 0,
        },
        Row {
            origin: "west".into(),
            key: key(Direction::Outbound, "orders", "west", "east"),
            counts: requests(0, 10),
            seconds: 10.0,
            stale: true,
            age_ms: 0,
        },
    ];
    let groups = group(&rows, |r| {
        Some((
            r.key.source_cluster.clone(),
            r.key.destination_cluster.clone(),
        ))
    });
    let summary = &groups[&("west".to_owned(), "east".to_owned())];
    assert_eq!((summary.requests, summary.success_rate), (20, Some(0.5)));
    assert_eq!(summary.rps, 2.0);
    assert!(summary.stale);
}

#[test]
fn two_replicas_of_a_cluster_are_two_origins_and_their_figures_add_up() {
    let mut replica_a = book("west/gateway-a");
    let mut replica_b = book("west/gateway-b");
    let mut east = book("east");
    let a = key(Direction::Inbound, "api", "east", "west");
    let t0 = 100 * I;
    replica_a.record(t0, vec![(a.clone(), requests(3, 0))]);
    replica_b.record(t0, vec![(a.clone(), requests(4, 0))]);
    let now = t0 + I + 1_000;
    replica_a.seal(now);
    replica_b.seal(now);
    let (mut from_a, mut from_b) = (0, 0);
    pass((&replica_a, "west"), (&mut east, "east"), &mut from_a, now);
    pass((&replica_b, "west"), (&mut east, "east"), &mut from_b, now);
    let rows = east.rows(now, 30_000);
    let summed = group(&rows, |r| Some(origin_cluster(&r.origin).to_owned()));
    assert_eq!(summed["west"].requests, 7);
    assert_eq!(east.clusters(now), vec![("west".to_owned(), false)]);
    // A replica's own figures never go back to its cluster, whichever replica asks.
    assert!(east.outgoing(0, "west").0.is_empty());
}

#[test]
fn the_book_holds_at_most_its_total_of_series_whatever_peers_send() {
    let config = GoldenConfig {
        max_total_series: 5,
        ..GoldenConfig::default()
    };
    let mut east = GoldenBook::new("east", config);
    let now = 1_000 * I;
    for origin in 0..4 {
        let keys: Vec<SeriesKey> = (0..3)
            .map(|i| key(Direction::Inbound, &format!("s{i}"), "x", "y"))
            .collect();
        let counts = requests(1, 0);
        let (names, series) = encode(keys.iter().map(|k| (k, &counts)));
        let batch = wire::Batch {
            origin: format!("c{origin}"),
            interval: 999,
            interval_ms: I as u32,
            names,
            series,
            session_names: false,
        };
        east.merge(batch, now, "peer").unwrap();
    }
    assert_eq!(east.series_held(), 5);
    assert_eq!(east.dropped, 7);
    // Forgetting silent clusters frees their room.
    east.expire(now + 700_000);
    assert_eq!(east.series_held(), 0);
}
