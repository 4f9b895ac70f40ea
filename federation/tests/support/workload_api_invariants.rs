//! What a gateway must do with any message a workload sends to its API, shared by the mutation
//! test (federation/tests/decoder_mutations.rs) and the cargo-fuzz target `workload_api`
//! (which includes this file). An input is one byte naming the message, then the message as
//! protobuf; each message read goes on through the pure checks the gateway makes of it: the
//! bootstrap token and the CSR of a Certify, the bounds of a Register (the same a peer
//! applies), the golden series of a metrics report.

use std::net::SocketAddr;
use std::sync::LazyLock;
use std::time::{Duration, SystemTime};

use prost::Message;
use strait_federation::catalog::{Endpoint, Port, Protocol, ServiceKey, ServiceSpec};
use strait_federation::golden::{self, GoldenBook, GoldenConfig, MAX_SERIES_PER_MESSAGE};
use strait_federation::identity::{AccountName, Namespace, ServiceName, SpiffeId};
use strait_federation::pki::{ClusterIssuer, Root};
use strait_federation::proto::workload::{
    CertifyRequest, DeregisterRequest, MetricsReport, RegisterRequest, TapReport, UsageReport,
    WatchRequest,
};
use x509_parser::prelude::{FromDer, GeneralName, X509CertificationRequest};

use super::allocation::{assert_bounded, peak_during};
use super::link_key::{NOW, cluster, trust_domain};
use super::token_invariants::check_workload;

/// The messages, by the first byte of an input (modulo their number).
pub const MESSAGES: [&str; 7] = [
    "CertifyRequest",
    "RegisterRequest",
    "DeregisterRequest",
    "UsageReport",
    "MetricsReport",
    "TapReport",
    "WatchRequest",
];

/// The largest CSR the gateway reads (its API refuses a larger one first).
pub const MAX_CSR: usize = 16 << 10;

/// The cluster's issuer, made once (its keys are fresh each run: what matters is the CSR).
static ISSUER: LazyLock<ClusterIssuer> = LazyLock::new(|| {
    let lifetime = Duration::from_secs(3600 * 24 * 365);
    Root::generate(&trust_domain(), lifetime, now())
        .and_then(|root| root.issue_cluster(&cluster(), lifetime, now()))
        .expect("an issuer for the tests")
});

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(NOW)
}

/// The workload the caller is, as the gateway would know it from its certificate.
pub fn caller() -> SpiffeId {
    SpiffeId::Workload {
        trust_domain: trust_domain(),
        cluster: cluster(),
        namespace: Namespace::new("shop").expect("a namespace"),
        service_account: AccountName::new("web").expect("an account"),
    }
}

/// An input for `message` (an index into [`MESSAGES`]).
pub fn input(message: usize, body: &impl Message) -> Vec<u8> {
    let mut bytes = vec![message as u8];
    bytes.extend(body.encode_to_vec());
    bytes
}

/// Decodes a message and checks that what was read is what would be sent again.
fn read<M: Message + Default>(body: &[u8]) -> Option<M> {
    let (decoded, peak) = peak_during(|| M::decode(body));
    assert_bounded(
        "decoding a workload message",
        body.len(),
        peak,
        1024,
        64 << 10,
    );
    let message = decoded.ok()?;
    // Compared as bytes: a double may be NaN, which equals nothing.
    let bytes = message.encode_to_vec();
    let again = M::decode(bytes.as_slice()).expect("re-encoded, it decodes");
    assert_eq!(
        again.encode_to_vec(),
        bytes,
        "a message changed through encoding"
    );
    Some(message)
}

/// Checks every invariant on one input.
pub fn check(input: &[u8]) {
    let Some((&which, body)) = input.split_first() else {
        return;
    };
    match usize::from(which) % MESSAGES.len() {
        0 => {
            if let Some(request) = read::<CertifyRequest>(body) {
                check_certify(&request);
            }
        }
        1 => {
            if let Some(request) = read::<RegisterRequest>(body) {
                check_register(&request);
            }
        }
        2 => drop(read::<DeregisterRequest>(body)),
        3 => drop(read::<UsageReport>(body)),
        4 => {
            if let Some(report) = read::<MetricsReport>(body) {
                check_metrics(&report);
            }
        }
        5 => drop(read::<TapReport>(body)),
        _ => drop(read::<WatchRequest>(body)),
    }
}

/// Whether the cluster issuer signs `csr` for the caller.
pub fn signs(csr: &[u8]) -> bool {
    ISSUER
        .sign_csr(csr, &caller(), Duration::from_secs(3600), now())
        .is_ok()
}

/// The token is checked like any bootstrap token; a CSR signed gives a leaf for the caller's
/// identity only, holding the CSR's key and nothing else of it.
fn check_certify(request: &CertifyRequest) {
    if !request.token.is_empty() {
        check_workload(&request.token);
    }
    if request.csr.len() > MAX_CSR {
        return;
    }
    let identity = caller();
    // Made before the measure: what it takes is not the CSR's doing.
    let issuer = &*ISSUER;
    let (signed, peak) =
        peak_during(|| issuer.sign_csr(&request.csr, &identity, Duration::from_secs(3600), now()));
    assert_bounded("signing a CSR", request.csr.len(), peak, 256, 256 << 10);
    let Ok(chain) = signed else {
        return;
    };
    let (_, csr) = X509CertificationRequest::from_der(&request.csr)
        .expect("a CSR the issuer signed reads as a CSR");
    let pems: Vec<_> = x509_parser::pem::Pem::iter_from_buffer(chain.as_bytes())
        .collect::<Result<_, _>>()
        .expect("the chain is PEM");
    assert_eq!(pems.len(), 2, "a leaf and the issuer");
    let leaf = pems[0].parse_x509().expect("the leaf reads");
    assert_eq!(
        leaf.public_key().raw,
        csr.certification_request_info.subject_pki.raw,
        "the leaf does not hold the CSR's key"
    );
    let uris: Vec<String> = leaf
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::URI(uri) => Some((*uri).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        uris,
        vec![identity.to_string()],
        "the leaf names another identity"
    );
}

/// The gateway's checks of a registration (address, instance, ports, then the service
/// bounds): what passes them, a peer takes as the same service.
fn check_register(request: &RegisterRequest) {
    let Ok(name) = ServiceName::new(request.service.clone()) else {
        return;
    };
    let Ok(address) = request.address.parse::<SocketAddr>() else {
        return;
    };
    if request.instance.is_empty() || request.instance.len() > 128 {
        return;
    }
    let mut ports = Vec::new();
    for port in &request.ports {
        let (Some(number), Some(protocol)) = (
            u16::try_from(port.port).ok().filter(|p| *p != 0),
            Protocol::parse(&port.protocol),
        ) else {
            return;
        };
        ports.push(Port {
            name: port.name.clone(),
            port: number,
            protocol,
        });
    }
    let spec = ServiceSpec {
        export: request.export,
        ports,
        endpoints: vec![Endpoint {
            address,
            hostname: (!request.hostname.is_empty()).then(|| request.hostname.clone()),
            ready: request.ready,
        }],
        labels: Default::default(),
        exported_at_ms: 0,
    };
    if spec.check().is_err() {
        return;
    }
    let key = ServiceKey {
        namespace: Namespace::new("shop").expect("a namespace"),
        name,
    };
    let (again_key, again) = ServiceSpec::from_wire(&spec.to_wire(&key))
        .unwrap_or_else(|e| panic!("a registration the gateway takes, a peer refuses: {e}"));
    assert_eq!(again_key, key);
    // Only exported services travel, so the record carries no export flag.
    assert_eq!(
        (&again.ports, &again.endpoints, &again.labels),
        (&spec.ports, &spec.endpoints, &spec.labels),
        "a peer reads the registration otherwise"
    );
}

/// Series read from a report are within bounds, encode back to themselves, and go into the
/// gateway's book.
fn check_metrics(report: &MetricsReport) {
    let Ok(series) = golden::decode(&report.names, &report.series) else {
        return;
    };
    assert!(series.len() <= MAX_SERIES_PER_MESSAGE);
    let (names, wire) = golden::encode(series.iter().map(|(key, counts)| (key, counts)));
    let again = golden::decode(&names, &wire).expect("series encoded again decode");
    assert_eq!(again, series, "series changed through encoding");
    let mut book = GoldenBook::new(cluster().as_str(), GoldenConfig::default());
    book.record(NOW * 1000, series);
}
