//! Documents operators apply (`strait apply -f`): YAML in the Kubernetes style, parsed into typed
//! values with unknown fields refused, then checked once. An error names the source, the
//! document, the field and what was expected; a file is applied whole or not at all. This module
//! reads files and hands each document to its kind (a Service here, `link`, `policy`); what the
//! kinds share (places, errors, typed reading) is in `document`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use serde::Deserialize;

use crate::catalog::{Endpoint, Port, Protocol, ServiceKey, ServiceSpec};
use crate::document::{API_VERSION, DocumentError, DocumentPlace, field, typed};
use crate::identity::{Namespace, ServiceName};
use crate::link::LinkSpec;
use crate::policy::{Policy, PolicyKey, PolicyKind};

/// The kinds `apply` takes, for error messages.
const KINDS: &str = "Service, Link (strait.dev/v1alpha1), AuthorizationPolicy, HTTPRoute, RateLimitPolicy, Quota, RequestAuthentication or FailoverPolicy (policy.strait.dev/v1alpha1)";

/// One parsed and checked document.
#[derive(Debug, Clone, PartialEq)]
pub enum Resource {
    /// A universal-mode service of this cluster.
    Service { key: ServiceKey, spec: ServiceSpec },
    /// A link to another cluster.
    Link(LinkSpec),
    /// A mesh-wide policy (`policy.strait.dev`), replicated to every linked cluster.
    Policy { key: PolicyKey, policy: Policy },
}

impl Resource {
    /// The kind, as written in documents.
    pub fn kind(&self) -> &'static str {
        match self {
            Resource::Service { .. } => "Service",
            Resource::Link(_) => "Link",
            Resource::Policy { key, .. } => key.kind.as_str(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Metadata {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ServiceDocument {
    #[serde(default)]
    #[allow(dead_code)]
    api_version: Option<String>,
    #[allow(dead_code)]
    kind: String,
    metadata: Metadata,
    spec: ServiceBody,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceBody {
    #[serde(default)]
    export: bool,
    #[serde(default)]
    ports: Vec<PortBody>,
    #[serde(default)]
    endpoints: Vec<EndpointBody>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PortBody {
    #[serde(default)]
    name: Option<String>,
    port: u16,
    #[serde(default = "default_protocol")]
    protocol: Protocol,
}

fn default_protocol() -> Protocol {
    Protocol::Tcp
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointBody {
    address: SocketAddr,
    #[serde(default)]
    hostname: Option<String>,
    #[serde(default = "yes")]
    ready: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct LinkDocumentIn {
    #[serde(default)]
    #[allow(dead_code)]
    api_version: Option<String>,
    #[allow(dead_code)]
    kind: String,
    #[allow(dead_code)]
    metadata: Metadata,
    spec: LinkSpec,
}

/// The largest file `strait apply` and `strait delete` take, in bytes: the CLI refuses a
/// larger one before reading it, the operator API refuses a larger request.
pub const MAX_FILE_BYTES: usize = 4 << 20;

/// The most documents one file may hold. The parser's default (1,024) is too few for a bulk
/// apply; callers bound the size of the text (the operator API takes at most 4 MiB).
pub const MAX_DOCUMENTS: usize = 100_000;

/// The parser's budget for a text of `bytes`: four times as many events and nodes as such a
/// text can hold without aliases (each takes at least a byte of text), so aliases may repeat
/// what is written a few times over but not multiply it without end. A "billion laughs" of 500
/// bytes took 216 MiB to refuse under a budget sized for the largest file; now what a parse
/// may build grows with its text, whatever that text says.
fn yaml_options(bytes: usize) -> serde_saphyr::Options {
    let events = bytes
        .saturating_mul(4)
        .saturating_add(4096)
        .min(80 * MAX_DOCUMENTS);
    let mut budget = serde_saphyr::Budget::default();
    budget.max_documents = MAX_DOCUMENTS;
    budget.max_nodes = events.min(40 * MAX_DOCUMENTS);
    budget.max_events = events;
    budget.max_recorded_anchor_events = events;
    budget.max_recorded_anchor_bytes = bytes.saturating_mul(4).saturating_add(4096);
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options
}

/// Below this many documents a file is parsed on one thread.
const PARALLEL_FROM: usize = 256;

/// Where the documents of a YAML text start: a line beginning with `---` (followed by a space
/// or nothing) at column 0 always starts a new document, even after a block scalar, so a text can
/// be cut there and its pieces parsed on their own.
fn document_starts(text: &str) -> Vec<usize> {
    let mut starts = Vec::new();
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let body = line.trim_end_matches(['\n', '\r']);
        if body == "---" || body.starts_with("--- ") || body.starts_with("---\t") {
            starts.push(offset);
        }
        offset += line.len();
    }
    starts
}

/// Parses the YAML documents of a text, on several threads when it holds many (YAML parsing is
/// most of the cost of a bulk apply), within a budget that grows with the text (aliases cannot
/// multiply it). On any error the whole text is parsed again in one piece, so the error's line
/// numbers are those of the file.
pub fn yaml_documents(text: &str) -> Result<Vec<serde_json::Value>, serde_saphyr::Error> {
    let whole = || serde_saphyr::from_multiple_with_options(text, yaml_options(text.len()));
    // Anchors, aliases and merge keys are budgeted per parse: counted over the whole file,
    // not per piece, so such files are parsed whole.
    if text.contains(['&', '*', '<']) {
        return whole();
    }
    let starts = document_starts(text);
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8);
    if starts.len() < PARALLEL_FROM || threads < 2 {
        return whole();
    }
    // Cut at document starts into one piece per thread; the first piece keeps what comes before
    // the first marker (a document without one, or directives).
    let per_piece = starts.len().div_ceil(threads);
    let mut cuts: Vec<usize> = starts.iter().step_by(per_piece).copied().collect();
    cuts[0] = 0;
    cuts.push(text.len());
    let pieces: Vec<&str> = cuts.windows(2).map(|w| &text[w[0]..w[1]]).collect();
    let parsed: Vec<Option<Vec<serde_json::Value>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = pieces
            .iter()
            .map(|piece| {
                scope.spawn(move || {
                    serde_saphyr::from_multiple_with_options(piece, yaml_options(piece.len())).ok()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().ok().flatten())
            .collect()
    });
    let mut documents = Vec::new();
    for piece in parsed {
        match piece {
            Some(values) => documents.extend(values),
            None => return whole(),
        }
    }
    if documents.len() > MAX_DOCUMENTS {
        return whole();
    }
    Ok(documents)
}

/// Replaces the `jwksFile` of each RequestAuthentication rule with the key set that file holds
/// (as `jwks`): key sets travel with the policy to every cluster, so a file is read where the
/// policy is applied, by `read` (the CLI reads it beside the policy's file). The text to send:
/// unchanged when no document names a file, else every document as JSON (which is YAML).
pub fn inline_key_files<E: std::fmt::Display>(
    source: &str,
    text: &str,
    read: impl Fn(&str) -> Result<String, E>,
) -> Result<String, DocumentError> {
    if !text.contains("jwksFile") {
        return Ok(text.to_owned());
    }
    let documents = yaml_documents(text).map_err(|e| DocumentError::Yaml {
        file: source.to_owned(),
        message: e.to_string(),
    })?;
    let mut documents: Vec<_> = documents.into_iter().filter(|d| !d.is_null()).collect();
    for (i, document) in documents.iter_mut().enumerate() {
        if document.get("kind").and_then(|k| k.as_str()) != Some("RequestAuthentication") {
            continue;
        }
        let place = DocumentPlace {
            source: source.to_owned(),
            index: i + 1,
            kind: Some("RequestAuthentication".into()),
            name: None,
        };
        let Some(rules) = document
            .pointer_mut("/spec/jwtRules")
            .and_then(|r| r.as_array_mut())
        else {
            continue;
        };
        for (j, rule) in rules.iter_mut().enumerate() {
            let Some(rule) = rule.as_object_mut() else {
                continue;
            };
            let Some(path) = rule.remove("jwksFile") else {
                continue;
            };
            let at = format!("spec.jwtRules[{j}].jwksFile");
            let Some(path) = path.as_str() else {
                return Err(field(&place, at, "expected the path of a JWKS file"));
            };
            if rule.contains_key("jwks") || rule.contains_key("jwksUri") {
                return Err(field(
                    &place,
                    at,
                    "expected only one of jwks, jwksUri and jwksFile",
                ));
            }
            let keys = read(path).map_err(|e| field(&place, &at, format!("{path}: {e}")))?;
            let keys: serde_json::Value = serde_json::from_str(&keys)
                .map_err(|e| field(&place, &at, format!("{path}: not JSON: {e}")))?;
            rule.insert("jwks".into(), keys);
        }
    }
    let texts: Result<Vec<String>, _> = documents.iter().map(serde_json::to_string).collect();
    texts
        .map(|texts| texts.join("\n---\n"))
        .map_err(|e| DocumentError::Yaml {
            file: source.to_owned(),
            message: e.to_string(),
        })
}

/// Parses every document of a YAML text. `source` names it in errors (a file name).
pub fn parse_documents(source: &str, text: &str) -> Result<Vec<Resource>, DocumentError> {
    let documents = yaml_documents(text).map_err(|e| DocumentError::Yaml {
        file: source.to_owned(),
        message: e.to_string(),
    })?;
    let documents: Vec<_> = documents.into_iter().filter(|d| !d.is_null()).collect();
    if documents.is_empty() {
        return Err(DocumentError::Empty {
            file: source.to_owned(),
        });
    }
    let mut resources = Vec::with_capacity(documents.len());
    let mut seen = BTreeSet::new();
    for (i, document) in documents.into_iter().enumerate() {
        let mut place = DocumentPlace {
            source: source.to_owned(),
            index: i + 1,
            kind: None,
            name: None,
        };
        if !document.is_object() {
            return Err(field(
                &place,
                "(document)",
                "expected a mapping with kind, metadata and spec",
            ));
        }
        let kind = document
            .get("kind")
            .and_then(|k| k.as_str())
            .map(str::to_owned);
        let Some(kind) = kind else {
            return Err(field(&place, "kind", format!("missing; expected {KINDS}")));
        };
        place.kind = Some(kind.clone());
        place.name = document
            .pointer("/metadata/name")
            .and_then(|n| n.as_str())
            .map(|name| {
                match document
                    .pointer("/metadata/namespace")
                    .and_then(|n| n.as_str())
                {
                    Some(ns) => format!("{ns}/{name}"),
                    None => name.to_owned(),
                }
            });
        let policy_kind = PolicyKind::ALL.into_iter().find(|k| k.as_str() == kind);
        if let Some(policy_kind) = policy_kind {
            let (key, policy) = Policy::parse(policy_kind, document, &place)?;
            if !seen.insert(key.to_string()) {
                return Err(field(
                    &place,
                    "metadata.name",
                    format!("{key} appears twice in the file"),
                ));
            }
            resources.push(Resource::Policy { key, policy });
            continue;
        }
        if let Some(version) = document.get("apiVersion")
            && version.as_str() != Some(API_VERSION)
        {
            return Err(field(
                &place,
                "apiVersion",
                format!("{version} is not known; expected {API_VERSION}"),
            ));
        }
        let resource = match kind.as_str() {
            "Service" => service(typed(document, &place)?, &place)?,
            "Link" => {
                let link: LinkDocumentIn = typed(document, &place)?;
                if !link.spec.root_fingerprint.starts_with("sha256:") {
                    return Err(field(
                        &place,
                        "spec.rootFingerprint",
                        "expected sha256:<hex>",
                    ));
                }
                if link.spec.gateway_address.is_empty() {
                    return Err(field(&place, "spec.gatewayAddress", "expected host:port"));
                }
                Resource::Link(link.spec)
            }
            other => {
                return Err(field(
                    &place,
                    "kind",
                    format!("{other:?} is not a kind strait knows; expected {KINDS}"),
                ));
            }
        };
        let identity = match &resource {
            Resource::Service { key, .. } => format!("Service {key}"),
            Resource::Link(spec) => format!("Link {}", spec.cluster),
            Resource::Policy { key, .. } => key.to_string(),
        };
        if !seen.insert(identity.clone()) {
            return Err(field(
                &place,
                "metadata.name",
                format!("{identity} appears twice in the file"),
            ));
        }
        resources.push(resource);
    }
    Ok(resources)
}

fn service(document: ServiceDocument, place: &DocumentPlace) -> Result<Resource, DocumentError> {
    let name = ServiceName::new(document.metadata.name)
        .map_err(|e| field(place, "metadata.name", e.to_string()))?;
    let namespace = Namespace::new(
        document
            .metadata
            .namespace
            .unwrap_or_else(|| "default".into()),
    )
    .map_err(|e| field(place, "metadata.namespace", e.to_string()))?;
    let body = document.spec;
    let spec = ServiceSpec {
        export: body.export,
        ports: body
            .ports
            .into_iter()
            .map(|port| Port {
                name: port.name.unwrap_or_else(|| port.port.to_string()),
                port: port.port,
                protocol: port.protocol,
            })
            .collect(),
        endpoints: body
            .endpoints
            .into_iter()
            .map(|endpoint| Endpoint {
                address: endpoint.address,
                hostname: endpoint.hostname,
                ready: endpoint.ready,
            })
            .collect(),
        labels: document.metadata.labels,
        exported_at_ms: 0,
    };
    // The same bounds a peer applies to what it receives from us.
    spec.check()
        .map_err(|(name, message)| field(place, name, message))?;
    Ok(Resource::Service {
        key: ServiceKey { namespace, name },
        spec,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const API: &str = "kind: Service
metadata: {name: api, namespace: shop}
spec:
  export: true
  ports: [{name: http, port: 8080, protocol: http}]
  endpoints: [{address: 127.0.0.1:9001}]
";

    /// A rule's `jwksFile` becomes its `jwks`, read through the caller's reader; a file that
    /// cannot be read or is not JSON is refused naming the rule; other texts pass unchanged.
    #[test]
    fn aliases_that_repeat_a_block_are_taken_within_the_budget() {
        // One rule written once and used 30 times: aliases repeat it, well within the budget.
        let rule = "&rule {from: [{clusters: [west, north]}, {namespaces: [shop, ops]}], to: [{methods: [GET, POST], paths: [/a, /b]}]}";
        let rules = std::iter::once(rule.to_owned())
            .chain(std::iter::repeat_n("*rule".to_owned(), 29))
            .collect::<Vec<_>>()
            .join(", ");
        let text = format!(
            "apiVersion: policy.strait.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: shop}}\nspec:\n  targetRef: {{kind: Service, name: api}}\n  action: deny\n  rules: [{rules}]\n"
        );
        let parsed = parse_documents("shared.yaml", &text).unwrap();
        assert_eq!(parsed.len(), 1);
    }

    #[test]
    fn a_key_file_is_read_into_the_policy_where_it_is_applied() {
        const KEYS: &str = r#"{"keys": [{"kty": "EC", "crv": "P-256", "x": "a", "y": "b"}]}"#;
        let policy = "apiVersion: policy.strait.dev/v1alpha1
kind: RequestAuthentication
metadata: {name: api-jwt, namespace: shop}
spec:
  jwtRules:
    - {issuer: https://id.test, jwksFile: keys.json}
";
        let text = format!("{API}---\n{policy}");
        let read = |path: &str| match path {
            "keys.json" => Ok(KEYS.to_owned()),
            "broken.json" => Ok("{not json".to_owned()),
            other => Err(format!("no file {other}")),
        };
        let inlined = inline_key_files("jwt.yaml", &text, read).unwrap();
        let documents = yaml_documents(&inlined).unwrap();
        assert_eq!(documents.len(), 2);
        assert_eq!(documents[0], yaml_documents(API).unwrap()[0]);
        let rule = &documents[1]["spec"]["jwtRules"][0];
        assert_eq!(rule["jwks"]["keys"][0]["crv"], "P-256");
        assert!(rule.get("jwksFile").is_none());
        for (file, wrong) in [
            ("missing.json", "missing.json: no file missing.json"),
            ("broken.json", "broken.json: not JSON"),
        ] {
            let text = text.replace("keys.json", file);
            let err = inline_key_files("jwt.yaml", &text, read)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("jwt.yaml: document 2")
                    && err.contains("spec.jwtRules[0].jwksFile")
                    && err.contains(wrong),
                "{err}"
            );
        }
        assert_eq!(inline_key_files("services.yaml", API, read).unwrap(), API);
    }

    #[test]
    fn the_documented_service_is_accepted() {
        let resources = parse_documents("services.yaml", API).unwrap();
        let [Resource::Service { key, spec }] = resources.as_slice() else {
            panic!("{resources:?}");
        };
        assert_eq!(key.to_string(), "shop/api");
        assert!(spec.export);
        assert_eq!(spec.ports[0].protocol, Protocol::Http);
        assert_eq!(spec.endpoints[0].address, "127.0.0.1:9001".parse().unwrap());
    }

    #[test]
    fn several_documents_in_one_file_are_read() {
        let text = format!("{API}---\n{}", API.replace("name: api", "name: web"));
        assert_eq!(parse_documents("s.yaml", &text).unwrap().len(), 2);
    }

    #[test]
    fn an_error_names_file_document_field_and_expectation() {
        let text = format!("{API}---\n{}", API.replace("port: 8080", "port: 70000"));
        let err = parse_documents("services.yaml", &text)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("services.yaml: document 2 (Service shop/api): spec.ports[0].port:"),
            "{err}"
        );
        let err = parse_documents("s.yaml", &API.replace("export: true", "exprot: true"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("spec") && err.contains("exprot"), "{err}");
        let err = parse_documents("s.yaml", &API.replace("127.0.0.1:9001", "nowhere"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("spec.endpoints[0].address"), "{err}");
        let err = parse_documents("s.yaml", &API.replace("kind: Service", "kind: Gadget"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("Gadget") && err.contains("expected Service, Link"),
            "{err}"
        );
    }

    #[test]
    fn a_bulk_file_of_ten_thousand_documents_is_read() {
        let text: Vec<String> = (0..10_000)
            .map(|i| API.replace("name: api", &format!("name: api-{i}")))
            .collect();
        assert_eq!(
            parse_documents("bulk.yaml", &text.join("---\n"))
                .unwrap()
                .len(),
            10_000
        );
    }

    #[test]
    fn a_label_too_long_for_peers_is_refused_at_apply() {
        let long = API.replace(
            "metadata: {name: api, namespace: shop}",
            &format!(
                "metadata: {{name: api, namespace: shop, labels: {{team: {}}}}}",
                "x".repeat(300)
            ),
        );
        let err = parse_documents("s.yaml", &long).unwrap_err().to_string();
        assert!(err.contains("metadata.labels"), "{err}");
    }

    #[test]
    fn a_large_file_parsed_in_pieces_reads_as_parsed_whole() {
        // Some documents open with a marker line carrying a space, some hold a quoted "---".
        let mut text = String::from("%YAML 1.2\n");
        for i in 0..600 {
            let doc = API.replace("name: api", &format!("name: api-{i}"));
            if i % 7 == 0 {
                let noted = doc.replace(
                    "namespace: shop}",
                    "namespace: shop, labels: {note: \"a --- b\"}}",
                );
                text.push_str(&format!("--- \n{noted}"));
            } else {
                text.push_str(&format!("---\n{doc}"));
            }
        }
        let whole: Vec<serde_json::Value> =
            serde_saphyr::from_multiple_with_options(&text, yaml_options(text.len())).unwrap();
        let pieces = yaml_documents(&text).unwrap();
        assert_eq!(pieces.len(), 600);
        assert_eq!(pieces, whole);
    }

    #[test]
    fn an_error_in_a_large_file_names_the_line_in_the_file() {
        let docs: Vec<String> = (0..600)
            .map(|i| API.replace("name: api", &format!("name: api-{i}")))
            .collect();
        let mut text = docs.join("---\n");
        text.push_str("---\nkind: [broken\n");
        let last = text.lines().count();
        let err = parse_documents("bulk.yaml", &text).unwrap_err().to_string();
        assert!(
            (last - 1..=last + 1).any(|line| err.contains(&format!("line {line} "))),
            "{err}"
        );
    }

    #[test]
    fn bad_names_and_duplicates_are_refused() {
        let err = parse_documents("s.yaml", &API.replace("name: api", "name: Api"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("metadata.name"), "{err}");
        let twice = format!("{API}---\n{API}");
        let err = parse_documents("s.yaml", &twice).unwrap_err().to_string();
        assert!(err.contains("appears twice"), "{err}");
        assert!(matches!(
            parse_documents("s.yaml", "a: [b"),
            Err(DocumentError::Yaml { .. })
        ));
        assert!(matches!(
            parse_documents("s.yaml", ""),
            Err(DocumentError::Empty { .. })
        ));
    }

    /// The contract's document, and the two refusals the acceptance check makes: an unknown
    /// field, and a route weight of -1. Each error names the file, the document and the field.
    #[test]
    fn policy_documents_are_read_beside_services_and_refused_by_field() {
        let contract = "apiVersion: policy.strait.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: no-west-to-api, namespace: shop}
spec:
  targetRef: {kind: Service, name: api}
  action: deny
  rules:
    - from: [{clusters: [west]}]
";
        let both = format!("{API}---\n{contract}");
        let resources = parse_documents("mesh.yaml", &both).unwrap();
        assert_eq!(resources.len(), 2);
        let Resource::Policy { key, .. } = &resources[1] else {
            panic!("a policy expected: {resources:?}")
        };
        assert_eq!(key.to_string(), "AuthorizationPolicy shop/no-west-to-api");

        let unknown = contract.replace("action: deny", "action: deny\n  actoin: allow");
        let err = parse_documents("p.yaml", &unknown).unwrap_err().to_string();
        assert!(
            err.starts_with("p.yaml: document 1 (AuthorizationPolicy shop/no-west-to-api): spec"),
            "{err}"
        );
        assert!(err.contains("actoin"), "{err}");

        let route = "apiVersion: policy.strait.dev/v1alpha1
kind: HTTPRoute
metadata: {name: api-split, namespace: shop}
spec:
  targetRef: {kind: Service, name: api}
  rules:
    - backendRefs: [{name: api, weight: -1}]
";
        let err = parse_documents("r.yaml", route).unwrap_err().to_string();
        assert!(err.contains("spec.rules[0].backendRefs[0].weight"), "{err}");

        let twice = format!("{contract}---\n{contract}");
        let err = parse_documents("p.yaml", &twice).unwrap_err().to_string();
        assert!(err.contains("appears twice"), "{err}");
    }
}
