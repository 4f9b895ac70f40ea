//! The decoders that face a peer, a workload or an operator, against malformed input, without
//! a fuzzer: valid inputs of each (peer frames, flow headers, Link documents and join tokens,
//! bootstrap tokens, policy documents, workload API messages) mutated by a fixed-seed
//! generator, each checked with the same invariants as the cargo-fuzz targets in fuzz/ (which
//! include the same support files), so any failure here reproduces there and a crash found
//! there belongs here as a named case.

use std::time::Instant;

use strait_federation::catalog::{Endpoint, ExportLog, Port, Position, Protocol, ServiceSpec};
use strait_federation::flow::{FlowTarget, accepted, encode_frame, refusal};
use strait_federation::golden::{self, Counts, Direction, SeriesKey};
use strait_federation::handshake::{hello, welcome};
use strait_federation::identity::{AccountName, ClusterName, Namespace, ServiceName};
use strait_federation::link::{LinkDocument, LinkSpec};
use strait_federation::proto::peer::{self as wire, PeerFrame, peer_frame::Body};
use strait_federation::proto::tap::TapEvent;
use strait_federation::proto::workload::{
    CertifyRequest, DeregisterRequest, MetricsReport, PortSpec, RegisterRequest, Spent, TapReport,
    UsageReport, WatchRequest,
};
use strait_federation::session::{PeerSession, SessionConfig};
use strait_federation::wire::{MAX_FRAME, encode};

#[path = "support/allocation.rs"]
mod allocation;
#[path = "support/flow_invariants.rs"]
mod flow_invariants;
#[path = "support/link_invariants.rs"]
mod link_invariants;
#[path = "support/link_key.rs"]
mod link_key;
#[path = "support/peer_frame_invariants.rs"]
mod peer_frame_invariants;
#[path = "support/policy_invariants.rs"]
mod policy_invariants;
#[path = "support/token_invariants.rs"]
mod token_invariants;
#[path = "support/workload_api_invariants.rs"]
mod workload_api_invariants;

use link_key::{NOW, cluster, jws_parts, key, trust_domain};

#[path = "../../gateway/tests/support/rng.rs"]
mod rng;

use rng::Rng;

/// One change to bytes of any kind; applied a few times over.
fn mutate_bytes(rng: &mut Rng, bytes: &mut Vec<u8>) {
    match rng.below(8) {
        // A bit flipped.
        0 | 1 if !bytes.is_empty() => {
            let at = rng.below(bytes.len());
            bytes[at] ^= 1 << rng.below(8);
        }
        // A byte overwritten with a value that protobuf, YAML or base64 treat specially.
        2 if !bytes.is_empty() => {
            let at = rng.below(bytes.len());
            let random = rng.byte();
            bytes[at] = *rng.pick(&[0, 1, 0x7F, 0x80, 0xFF, b':', b'-', b'.', b'&', b'*', random]);
        }
        // Cut short.
        3 => bytes.truncate(rng.below(bytes.len() + 1)),
        // Bytes added at the end.
        4 => {
            for _ in 0..1 + rng.below(16) {
                bytes.push(rng.byte());
            }
        }
        // A byte inserted or removed in the middle.
        5 if !bytes.is_empty() => {
            let at = rng.below(bytes.len());
            if rng.below(2) == 0 {
                bytes.insert(at, rng.byte());
            } else {
                bytes.remove(at);
            }
        }
        // A stretch repeated in place (a field or an element twice).
        6 if !bytes.is_empty() => {
            let from = rng.below(bytes.len());
            let to = (from + 1 + rng.below(32)).min(bytes.len());
            let stretch = bytes[from..to].to_vec();
            bytes.splice(to..to, stretch);
        }
        // A stretch removed.
        _ if !bytes.is_empty() => {
            let from = rng.below(bytes.len());
            let to = (from + 1 + rng.below(16)).min(bytes.len());
            bytes.drain(from..to);
        }
        _ => bytes.push(rng.byte()),
    }
}

/// A text changed as bytes, kept text (as the CLI reads files).
fn mutate_text(rng: &mut Rng, text: &str) -> String {
    let mut bytes = text.as_bytes().to_vec();
    for _ in 0..1 + rng.below(3) {
        if rng.below(3) == 0 {
            replace_value(rng, &mut bytes);
        } else {
            mutate_bytes(rng, &mut bytes);
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The value after a `: ` replaced by one that tests a parser's edges.
fn replace_value(rng: &mut Rng, text: &mut Vec<u8>) {
    let colons: Vec<usize> = text
        .windows(2)
        .enumerate()
        .filter(|(_, w)| w == b": ")
        .map(|(i, _)| i + 2)
        .collect();
    if colons.is_empty() {
        return;
    }
    let at = *rng.pick(&colons);
    let end = text[at..]
        .iter()
        .position(|&b| matches!(b, b'\n' | b',' | b'}' | b']'))
        .map_or(text.len(), |n| at + n);
    let long = "x".repeat(300);
    let values = [
        "-1",
        "0",
        "4294967296",
        "18446744073709551616",
        "1e309",
        ".nan",
        "''",
        "null",
        "[]",
        "{}",
        "true",
        "&a [*a]",
        "*missing",
        "!!binary aGk=",
        "\"\\u0000\"",
        "0.5s",
        "-1s",
        "99999999999h",
        &long,
    ];
    let value = *rng.pick(&values);
    text.splice(at..end, value.bytes());
}

/// Runs `check` on each seed as it is, then on `count` mutations of the seeds.
fn mutate_all<T: Clone>(
    rng: &mut Rng,
    seeds: &[T],
    count: usize,
    mutate: impl Fn(&mut Rng, &T) -> T,
    mut check: impl FnMut(&T, &T),
) {
    for seed in seeds {
        check(seed, seed);
    }
    for _ in 0..count {
        let seed = rng.pick(seeds);
        let mutated = mutate(rng, seed);
        check(seed, &mutated);
    }
}

fn bytes_mutated(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut bytes = seed.to_vec();
    for _ in 0..1 + rng.below(3) {
        mutate_bytes(rng, &mut bytes);
    }
    bytes
}

fn service_spec(endpoints: usize) -> ServiceSpec {
    ServiceSpec {
        export: true,
        ports: vec![Port {
            name: "http".into(),
            port: 8080,
            protocol: Protocol::Http,
        }],
        endpoints: (0..endpoints)
            .map(|i| Endpoint {
                address: format!("10.0.0.{}:8080", i + 1).parse().unwrap(),
                hostname: Some(format!("api-{i}")),
                ready: i % 3 != 2,
            })
            .collect(),
        labels: [("team".to_owned(), "shop".to_owned())].into(),
        exported_at_ms: 5,
    }
}

// ---- Peer frames ----

/// Mutated peer streams, about 3 s in a debug build.
const PEER_STREAMS: usize = 60_000;

/// Frames of every kind a peer sends, each encoded with its length prefix.
fn peer_frames() -> Vec<Vec<u8>> {
    let now = Instant::now();
    let mut export = ExportLog::new(11);
    for i in 0..6 {
        let key = strait_federation::catalog::ServiceKey {
            namespace: Namespace::new("shop").unwrap(),
            name: ServiceName::new(format!("s{i}")).unwrap(),
        };
        export.set(&key, Some(&service_spec(i % 3 + 1)));
    }
    let mut exporter = PeerSession::new(SessionConfig::default(), Position::NONE, &export, now);
    let mut frames: Vec<PeerFrame> = std::iter::from_fn(|| exporter.poll_transmit(now)).collect();
    let frame = |body| PeerFrame { body: Some(body) };
    let east = ClusterName::new("east").unwrap();
    let (token, _) = key()
        .issue(&cluster(), &trust_domain(), NOW, 3600, 1)
        .unwrap();
    let counts = Counts {
        status_classes: [0, 4, 0, 1, 0],
        ..Counts::default()
    };
    let series_key = SeriesKey {
        direction: Direction::Inbound,
        namespace: "shop".into(),
        service: "api".into(),
        source_cluster: "east".into(),
        destination_cluster: "west".into(),
        workload: "deploy/api".into(),
    };
    let (names, series) = golden::encode([(&series_key, &counts)]);
    let version = wire::PolicyVersion {
        kind: "AuthorizationPolicy".into(),
        namespace: "shop".into(),
        name: "p".into(),
        stamp: 1 << 20,
        origin: "east".into(),
    };
    frames.extend([
        hello(&east, &token, Position::NONE),
        welcome(&east, Position::NONE),
        frame(Body::KeepAlive(wire::KeepAlive {})),
        frame(Body::Ack(wire::Ack {
            position: Some(
                Position {
                    epoch: 7,
                    version: 1,
                }
                .to_wire(),
            ),
        })),
        frame(Body::Health(wire::Health {
            sent_unix_ms: NOW * 1000,
            policy_digest: "abc".into(),
            ..Default::default()
        })),
        frame(Body::QuotaUsage(wire::QuotaUsage {
            counts: vec![wire::QuotaCount {
                quota: "shop/q".into(),
                who: "shop/web".into(),
                window: 9,
                count: 3,
                ..Default::default()
            }],
        })),
        frame(Body::GoldenNames(wire::GoldenNames {
            names: names.clone(),
        })),
        frame(Body::Golden(strait_federation::proto::golden::Batch {
            origin: "east".into(),
            interval: NOW / 5,
            interval_ms: 5_000,
            names,
            series,
            session_names: false,
        })),
        frame(Body::PolicyDigest(wire::PolicyDigest {
            versions: vec![version.clone()],
            complete: true,
        })),
        frame(Body::PolicyEntries(wire::PolicyEntries {
            entries: vec![wire::PolicyEntry {
                version: Some(version),
                document: POLICIES[0].1.to_owned(),
            }],
        })),
        strait_federation::session::refusal(wire::RefusalCode::RefusalProtocol, "no"),
    ]);
    frames.iter().map(encode).collect()
}

/// Streams of one to a few frames, in the orders a session sees them.
fn peer_streams() -> Vec<Vec<u8>> {
    let frames = peer_frames();
    let mut streams: Vec<Vec<u8>> = frames.clone();
    streams.push(frames.concat());
    for pair in frames.windows(2) {
        streams.push(pair.concat());
    }
    streams
}

/// Where the frames of a stream start, as far as the prefixes can be followed.
fn frame_starts(stream: &[u8]) -> Vec<usize> {
    let mut starts = Vec::new();
    let mut at = 0;
    while let Some(prefix) = stream.get(at..at + 4) {
        starts.push(at);
        at += 4 + u32::from_be_bytes(prefix.try_into().unwrap()) as usize;
    }
    starts
}

fn stream_mutated(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut stream = seed.to_vec();
    for _ in 0..1 + rng.below(3) {
        let starts = frame_starts(&stream);
        if starts.is_empty() || rng.below(3) != 0 {
            mutate_bytes(rng, &mut stream);
            continue;
        }
        // A length prefix changed: a little, to anything, or just past the limit.
        let at = *rng.pick(&starts);
        let len = u32::from_be_bytes(stream[at..at + 4].try_into().unwrap());
        let random = rng.next() as u32;
        let len = *rng.pick(&[
            0,
            len.wrapping_add(1),
            len.wrapping_sub(1),
            MAX_FRAME as u32,
            MAX_FRAME as u32 + 1,
            u32::MAX,
            random,
        ]);
        stream[at..at + 4].copy_from_slice(&len.to_be_bytes());
    }
    stream
}

#[test]
fn mutated_peer_streams_keep_every_invariant() {
    let seeds = peer_streams();
    mutate_all(
        &mut Rng(0x5EED_0000_FEED_0001),
        &seeds,
        PEER_STREAMS,
        |rng, seed| stream_mutated(rng, seed),
        |_, stream| peer_frame_invariants::check(stream),
    );
}

#[test]
fn a_stream_cut_anywhere_keeps_every_invariant() {
    let stream = peer_frames().concat();
    for end in 0..stream.len().min(4096) {
        peer_frame_invariants::check(&stream[..end]);
    }
}

#[test]
fn a_length_past_the_limit_is_refused_in_any_piece() {
    let mut stream = (MAX_FRAME as u32 + 1).to_be_bytes().to_vec();
    stream.extend([0; 16]);
    peer_frame_invariants::check(&stream);
    let (decoded, _) = peer_frame_invariants::decode(&stream, 1);
    assert!(matches!(
        decoded.as_slice(),
        [peer_frame_invariants::Decoded::Error(_)]
    ));
}

// ---- Flow headers ----

/// Mutated flow headers, about 2 s in a debug build.
const FLOW_HEADERS: usize = 300_000;

fn flow_seeds() -> Vec<Vec<u8>> {
    let target = FlowTarget {
        cluster: ClusterName::new("east").unwrap(),
        service: strait_federation::catalog::ServiceKey {
            namespace: Namespace::new("shop").unwrap(),
            name: ServiceName::new("api").unwrap(),
        },
        port: 8080,
        hostname: Some("api-0".into()),
        source_cluster: Some(ClusterName::new("west").unwrap()),
        forwarded: true,
        trace: None,
    };
    let mut traced = target.to_wire();
    traced.trace = Some(wire::FlowTrace {
        trace_id: vec![7; 16],
        parent_span_id: vec![1; 8],
        hop_span_ids: vec![vec![2; 8], vec![3; 8]],
    });
    let mut plain = target.to_wire();
    plain.hostname.clear();
    plain.source_cluster.clear();
    plain.forwarded = false;
    let mut seeds = Vec::new();
    for open in [target.to_wire(), traced, plain] {
        for reply in [accepted(), refusal("no ready endpoint of shop/api")] {
            let mut bytes = encode_frame(&open);
            bytes.extend(encode_frame(&reply));
            seeds.push(bytes);
        }
    }
    seeds
}

#[test]
fn mutated_flow_headers_keep_every_invariant() {
    let seeds = flow_seeds();
    mutate_all(
        &mut Rng(0x5EED_0000_F10E_0001),
        &seeds,
        FLOW_HEADERS,
        |rng, seed| bytes_mutated(rng, seed),
        |_, stream| flow_invariants::check(stream),
    );
}

#[test]
fn a_header_length_past_the_limit_is_refused_before_its_body() {
    for len in [2049u16, 4096, u16::MAX] {
        let mut stream = len.to_be_bytes().to_vec();
        stream.extend([0; 8]);
        flow_invariants::check(&stream);
    }
    // Exactly the limit is read (then refused as incomplete here: the body is short).
    flow_invariants::check(&2048u16.to_be_bytes());
}

// ---- Link documents and join tokens ----

/// Mutated Link documents, about 4 s in a debug build.
const LINK_DOCUMENTS: usize = 4_000;
/// Mutated join tokens, about 3 s in a debug build.
const JOIN_TOKENS: usize = 3_000;

fn join_tokens() -> Vec<String> {
    let key = key();
    let (td, west, north) = (
        trust_domain(),
        cluster(),
        ClusterName::new("north").unwrap(),
    );
    vec![
        key.issue(&west, &td, NOW - 60, 3600, 1).unwrap().0,
        // Expired before its first use.
        key.issue(&west, &td, NOW - 7200, 3600, 2).unwrap().0,
        // Another cluster's.
        key.issue(&north, &td, NOW - 60, 3600, 3).unwrap().0,
        // A bootstrap token, not a join token.
        key.issue_workload(
            &west,
            &td,
            &Namespace::new("shop").unwrap(),
            &AccountName::new("web").unwrap(),
            NOW - 60,
            3600,
            4,
        )
        .unwrap(),
    ]
}

fn link_documents() -> Vec<String> {
    let spec = |token: String| LinkSpec {
        cluster: cluster(),
        trust_domain: trust_domain(),
        gateway_address: "192.0.2.10:4433".into(),
        root_fingerprint: format!("sha256:{}", "ab".repeat(32)),
        token,
        expires: Some("2027-01-15T08:00:00Z".into()),
    };
    let mut documents = Vec::new();
    for token in join_tokens() {
        documents.push(format!(
            "apiVersion: strait.dev/v1alpha1\nkind: Link\nmetadata: {{name: west}}\nspec:\n  cluster: west\n  trustDomain: example.mesh\n  gatewayAddress: 192.0.2.10:4433\n  rootFingerprint: sha256:{}\n  token: {token}\n  expires: \"2027-01-15T08:00:00Z\"\n",
            "ab".repeat(32)
        ));
        documents.push(serde_json::to_string(&LinkDocument::new(spec(token))).unwrap());
    }
    documents
}

/// A token changed where it matters: a character, a part swapped, or its claims or header
/// rewritten with the signature kept.
fn token_mutated(rng: &mut Rng, seed: &str) -> String {
    use base64::Engine as _;
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let parts: Vec<&str> = seed.split('.').collect();
    match rng.below(5) {
        0 | 1 => {
            let mut chars: Vec<char> = seed.chars().collect();
            for _ in 0..1 + rng.below(2) {
                let at = rng.below(chars.len().max(1));
                let alphabet: Vec<char> =
                    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ "
                        .chars()
                        .collect();
                let c = *rng.pick(&alphabet);
                match rng.below(3) {
                    0 if at < chars.len() => chars[at] = c,
                    1 => chars.insert(at.min(chars.len()), c),
                    _ if at < chars.len() => {
                        chars.remove(at);
                    }
                    _ => {}
                }
            }
            chars.into_iter().collect()
        }
        2 => {
            let header = *rng.pick(&[
                r#"{"alg":"none","typ":"JWT"}"#,
                r#"{"alg":"HS256","typ":"JWT"}"#,
                r#"{"alg":"ES384","typ":"JWT"}"#,
                r#"{"alg":"ES256","typ":"JWT","crit":["x"]}"#,
                r#"{"alg":"ES256"}"#,
                r#"{"typ":"JWT"}"#,
            ]);
            let rest = parts.get(1..).map(|p| p.join(".")).unwrap_or_default();
            format!("{}.{rest}", engine.encode(header))
        }
        3 => {
            // The claims rewritten (a later expiry, another issuer or audience), signature kept.
            let Some([_, claims, _]) = jws_parts(seed) else {
                return seed.to_owned();
            };
            let Ok(mut claims) = serde_json::from_slice::<serde_json::Value>(&claims) else {
                return seed.to_owned();
            };
            let rewrites = [
                ("exp", serde_json::json!(NOW * 2)),
                ("iss", serde_json::json!("north")),
                ("aud", serde_json::json!(["strait-link", "strait-workload"])),
                ("aud", serde_json::json!("strait-workload")),
                ("scope", serde_json::json!("admin")),
                ("td", serde_json::json!("other.mesh")),
                ("ns", serde_json::json!("kube-system")),
                ("sa", serde_json::json!("Not A Name")),
            ];
            let (field, value) = rng.pick(&rewrites);
            claims[*field] = value.clone();
            let claims = engine.encode(claims.to_string());
            format!("{}.{claims}.{}", parts[0], parts.get(2).unwrap_or(&""))
        }
        _ => {
            // Parts dropped, repeated or swapped.
            let mut parts: Vec<&str> = parts;
            match rng.below(3) {
                0 => {
                    parts.pop();
                }
                1 => parts.push(parts[0]),
                _ => {
                    let last = parts.len() - 1;
                    parts.swap(0, last);
                }
            }
            parts.join(".")
        }
    }
}

/// A token changed is refused, unless its three parts still decode to the same bytes.
fn assert_tampering_refused(original: &str, mutated: &str, accepted: bool) {
    if accepted {
        assert_eq!(
            jws_parts(mutated),
            jws_parts(original),
            "a tampered token was accepted: {mutated}"
        );
    }
}

#[test]
fn mutated_link_documents_keep_every_invariant() {
    let seeds = link_documents();
    mutate_all(
        &mut Rng(0x5EED_0000_714C_0001),
        &seeds,
        LINK_DOCUMENTS,
        |rng, text| mutate_text(rng, text),
        |_, text| link_invariants::check(text),
    );
}

#[test]
fn mutated_join_tokens_are_refused_and_keep_every_invariant() {
    let seeds = join_tokens();
    let (key, west, td) = (key(), cluster(), trust_domain());
    mutate_all(
        &mut Rng(0x5EED_0000_714C_0002),
        &seeds,
        JOIN_TOKENS,
        |rng, seed| token_mutated(rng, seed),
        |original, token| {
            token_invariants::check_join(token);
            let accepted = key.verify(token, &west, &td).is_ok();
            assert_tampering_refused(original, token, accepted);
        },
    );
}

// ---- Bootstrap tokens ----

/// Mutated bootstrap tokens, about 4 s in a debug build.
const WORKLOAD_TOKENS: usize = 4_000;

fn workload_tokens() -> Vec<String> {
    let key = key();
    let (td, west) = (trust_domain(), cluster());
    let shop = Namespace::new("shop").unwrap();
    let web = AccountName::new("web").unwrap();
    vec![
        key.issue_workload(&west, &td, &shop, &web, NOW - 60, 3600, 1)
            .unwrap(),
        key.issue_workload(&west, &td, &shop, &web, NOW - 7200, 3600, 2)
            .unwrap(),
        key.issue_workload(
            &ClusterName::new("north").unwrap(),
            &td,
            &shop,
            &web,
            NOW,
            60,
            3,
        )
        .unwrap(),
        key.issue(&west, &td, NOW - 60, 3600, 4).unwrap().0,
    ]
}

#[test]
fn mutated_bootstrap_tokens_are_refused_and_keep_every_invariant() {
    let seeds = workload_tokens();
    let (key, west, td) = (key(), cluster(), trust_domain());
    mutate_all(
        &mut Rng(0x5EED_0000_B007_0001),
        &seeds,
        WORKLOAD_TOKENS,
        |rng, seed| token_mutated(rng, seed),
        |original, token| {
            token_invariants::check_workload(token);
            let accepted = key.verify_workload(token, &west, &td, NOW).is_ok();
            assert_tampering_refused(original, token, accepted);
        },
    );
}

// ---- Policy documents ----

/// Mutated policy texts, about 4 s in a debug build.
const POLICY_TEXTS: usize = 12_000;

/// One valid document of each kind, as the documentation writes them.
const POLICIES: [(&str, &str); 6] = [
    (
        "AuthorizationPolicy",
        "apiVersion: policy.strait.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: no-west-to-api, namespace: shop}\nspec:\n  targetRef: {kind: Service, name: api}\n  action: deny\n  rules:\n    - from: [{clusters: [west]}]\n      to: [{methods: [GET, POST], paths: [/a, /b/*]}]\n",
    ),
    (
        "HTTPRoute",
        "apiVersion: policy.strait.dev/v1alpha1\nkind: HTTPRoute\nmetadata: {name: api-rollout, namespace: shop}\nspec:\n  targetRef: {kind: Service, name: api}\n  rules:\n    - matches: [{headers: [{name: X-Canary, value: '1'}]}]\n      backendRefs: [{name: api-v2}]\n    - backendRefs:\n        - {name: api, cluster: east, weight: 3}\n        - {name: api, cluster: west, weight: 1}\n",
    ),
    (
        "RateLimitPolicy",
        "apiVersion: policy.strait.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata: {name: api-limits, namespace: shop}\nspec:\n  targetRef: {kind: Service, name: api}\n  limit: {requests: 100, per: 1s, burst: 200}\n  overrides:\n    - from: {namespaces: [shop], serviceAccounts: [batch]}\n      limit: {requests: 10, per: 1m}\n",
    ),
    (
        "Quota",
        "apiVersion: policy.strait.dev/v1alpha1\nkind: Quota\nmetadata: {name: web-per-hour, namespace: shop}\nspec:\n  targetRef: {kind: Service, name: api}\n  limit: {requests: 1000, per: 1h}\n  key: serviceAccount\n",
    ),
    (
        "RequestAuthentication",
        "apiVersion: policy.strait.dev/v1alpha1\nkind: RequestAuthentication\nmetadata: {name: api-jwt, namespace: shop}\nspec:\n  targetRef: {kind: Service, name: api}\n  jwtRules:\n    - issuer: https://id.example.com\n      audiences: [shop-api]\n      jwks:\n        keys:\n          - {kty: EC, crv: P-256, kid: \"2026-11\", alg: ES256, use: sig, x: WPwTIGMBEcNTN1IoimHYIfdyCpVBHARwFdUvbqbQkVg, y: c95d8sL8PhFdZp8cb7olEO9T0rCP2SUeIY6JK8S_B54}\n",
    ),
    (
        "FailoverPolicy",
        "apiVersion: policy.strait.dev/v1alpha1\nkind: FailoverPolicy\nmetadata: {name: ledger-failover, namespace: bank}\nspec:\n  targetRef: {kind: Service, name: ledger}\n  order:\n    - clusters: [eu-primary]\n    - scope: region\n    - locations: [aws/eu-west-1, gcp/europe-west1]\n  unlisted: never\n",
    ),
];

/// Each kind as YAML and as the JSON a peer sends, and all of them in one file.
fn policy_texts() -> Vec<String> {
    let mut texts = Vec::new();
    for (_, yaml) in POLICIES {
        texts.push(yaml.to_owned());
        let value: serde_json::Value = serde_saphyr::from_str(yaml).unwrap();
        texts.push(value.to_string());
    }
    texts.push(POLICIES.map(|(_, yaml)| yaml).join("---\n"));
    texts
}

#[test]
fn every_policy_kind_is_taken_as_documented() {
    for (kind, yaml) in POLICIES {
        let resources = strait_federation::resource::parse_documents("p.yaml", yaml).unwrap();
        assert_eq!(resources[0].kind(), kind);
    }
}

/// Found by these mutations: a limit's period cut one byte before its end, inside a character,
/// panicked (an operator's apply, or a peer's policy entry, could stop the gateway).
#[test]
fn a_period_ending_in_a_wide_character_is_refused_not_a_panic() {
    for per in ["1h\u{e9}", "\u{e9}", "1\u{1F600}", "5\u{e9}h"] {
        for (kind, yaml) in [POLICIES[2], POLICIES[3]] {
            let quoted = format!("per: \"{per}\"");
            let text = yaml.replace("per: 1h", &quoted).replace("per: 1s", &quoted);
            assert!(text.contains(per), "{kind}");
            policy_invariants::check(&text);
            assert!(
                strait_federation::resource::parse_documents("p.yaml", &text).is_err(),
                "{kind} per {per:?}"
            );
            let value: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
            policy_invariants::check(&value.to_string());
        }
    }
}

#[test]
fn mutated_policy_documents_keep_every_invariant() {
    let seeds = policy_texts();
    mutate_all(
        &mut Rng(0x5EED_0000_9011_0001),
        &seeds,
        POLICY_TEXTS,
        |rng, text| mutate_text(rng, text),
        |_, text| policy_invariants::check(text),
    );
}

// ---- Workload API ----

/// Mutated workload messages, about 4 s in a debug build.
const WORKLOAD_MESSAGES: usize = 120_000;

fn workload_messages() -> Vec<Vec<u8>> {
    use workload_api_invariants::input;
    let (_, csr) = strait_federation::pki::new_csr().unwrap();
    let token = workload_tokens().remove(0);
    let series_key = SeriesKey {
        direction: Direction::Inbound,
        namespace: "shop".into(),
        service: "api".into(),
        source_cluster: "east".into(),
        destination_cluster: "west".into(),
        workload: "deploy/api".into(),
    };
    let outbound = SeriesKey {
        direction: Direction::Outbound,
        source_cluster: "west".into(),
        destination_cluster: "east".into(),
        ..series_key.clone()
    };
    let counts = Counts {
        status_classes: [0, 9, 0, 2, 1],
        ..Counts::default()
    };
    let (names, series) = golden::encode([(&series_key, &counts), (&outbound, &counts)]);
    vec![
        input(
            0,
            &CertifyRequest {
                token,
                csr: csr.clone(),
                service_account_token: String::new(),
            },
        ),
        input(
            0,
            &CertifyRequest {
                csr,
                ..Default::default()
            },
        ),
        input(
            1,
            &RegisterRequest {
                service: "api".into(),
                ports: vec![
                    PortSpec {
                        name: "http".into(),
                        port: 8080,
                        protocol: "http".into(),
                    },
                    PortSpec {
                        name: "grpc".into(),
                        port: 9090,
                        protocol: "grpc".into(),
                    },
                ],
                address: "10.0.0.5:8080".into(),
                hostname: "api-0".into(),
                ready: true,
                export: true,
                instance: "i-1".into(),
            },
        ),
        input(
            2,
            &DeregisterRequest {
                service: "api".into(),
                instance: "i-1".into(),
            },
        ),
        input(
            3,
            &UsageReport {
                service: "api".into(),
                spent: vec![Spent {
                    quota: "shop/q".into(),
                    who: "shop/web".into(),
                    window: 9,
                    count: 3,
                }],
            },
        ),
        input(4, &MetricsReport { names, series }),
        input(
            5,
            &TapReport {
                events: vec![TapEvent {
                    direction: "inbound".into(),
                    protocol: "http".into(),
                    namespace: "shop".into(),
                    service: "api".into(),
                    method: "GET".into(),
                    path: "/a".into(),
                    status: 200,
                    latency_ms: 1.5,
                    ..Default::default()
                }],
            },
        ),
        input(
            6,
            &WatchRequest {
                deltas: true,
                namespaces: vec!["shop".into()],
                services: vec![strait_federation::proto::workload::ServiceRef {
                    namespace: "pay".into(),
                    name: "ledger".into(),
                }],
            },
        ),
    ]
}

#[test]
fn mutated_workload_messages_keep_every_invariant() {
    let seeds = workload_messages();
    mutate_all(
        &mut Rng(0x5EED_0000_A1A1_0001),
        &seeds,
        WORKLOAD_MESSAGES,
        |rng, seed| {
            let mut bytes = bytes_mutated(rng, seed);
            // Keep the message named most of the time: the byte is a selector, not data.
            if rng.below(4) != 0 && !bytes.is_empty() {
                bytes[0] = seed[0];
            }
            bytes
        },
        |_, input| workload_api_invariants::check(input),
    );
}

#[test]
fn a_csr_is_signed_for_the_callers_identity_only() {
    let (_, csr) = strait_federation::pki::new_csr().unwrap();
    assert!(
        workload_api_invariants::signs(&csr),
        "a fresh CSR is signed"
    );
    let input = workload_api_invariants::input(
        0,
        &CertifyRequest {
            csr,
            ..Default::default()
        },
    );
    // The leaf's invariants, on a CSR that is signed.
    workload_api_invariants::check(&input);
}

/// Writes the seeds above as the fuzz targets' seed corpora (fuzz/corpus/<target>/), to run
/// again when the seeds change:
/// `cargo test -p strait-federation --test decoder_mutations -- --ignored seed_corpora`.
#[test]
#[ignore = "writes files into fuzz/corpus"]
fn seed_corpora_are_written_into_the_fuzz_folder() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let policies: Vec<Vec<u8>> = policy_texts().into_iter().map(String::into_bytes).collect();
    let links: Vec<Vec<u8>> = link_documents()
        .into_iter()
        .chain(join_tokens())
        .map(String::into_bytes)
        .collect();
    let tokens: Vec<Vec<u8>> = workload_tokens()
        .into_iter()
        .map(String::into_bytes)
        .collect();
    for (target, seeds) in [
        ("peer_frames", peer_streams()),
        ("flow_header", flow_seeds()),
        ("link_document", links),
        ("workload_token", tokens),
        ("policy_documents", policies),
        ("workload_api", workload_messages()),
    ] {
        let folder = root.join(target);
        std::fs::create_dir_all(&folder).unwrap();
        for (i, seed) in seeds.iter().enumerate() {
            std::fs::write(folder.join(format!("seed-{i:02}")), seed).unwrap();
        }
    }
}
