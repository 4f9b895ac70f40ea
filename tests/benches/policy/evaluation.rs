//! The cost of one authorization decision in a sidecar, in-process: the sidecar's policy table
//! built from the documents a gateway streams, then `Policies::authorize` for one request, the
//! path normalization that comes before it, and the table's build.

use std::borrow::Cow;
use std::hint::black_box;

use anyhow::{Result, bail};
use strait_federation::identity::{Namespace, ServiceName, SpiffeId};
use strait_federation::policy::authorization::{Decision, Request};
use strait_federation::policy::common::MAX_LIST;
use strait_federation::policy::path;
use strait_federation::proto::workload::PolicyDocument;
use strait_sidecar::policy::Policies;

use crate::{PerCall, per_call};

/// Rules of each service's policy when rules are spread over the namespace's services.
pub const RULES_PER_SERVICE: usize = 10;

/// The caller of every request.
pub const CALLER: &str = "spiffe://example.mesh/cluster/east/ns/shop/sa/web";

/// Makes the n-th rule that the request does not match.
type RuleMaker = fn(usize) -> serde_json::Value;

/// A rule that names the caller (its namespace and account) but another path: both its source
/// and its operation are checked, and it does not match.
fn other_path_rule(n: usize) -> serde_json::Value {
    serde_json::json!({
        "from": [{"namespaces": ["shop"], "serviceAccounts": ["web"]}],
        "to": [{"methods": ["GET"], "paths": [format!("/other-{n}/*")]}],
    })
}

/// A rule with sources of its own that name the caller (among other accounts), and another
/// path: no rule shares the previous one's sources, so every rule's are checked, and they
/// match; then the operation is checked and does not match. The worst case.
fn own_sources_rule(n: usize) -> serde_json::Value {
    serde_json::json!({
        "from": [{"namespaces": ["shop"], "serviceAccounts": ["web", format!("other-{n}")]}],
        "to": [{"methods": ["GET"], "paths": [format!("/other-{n}/*")]}],
    })
}

/// A rule that names another account: its source fails at the account, its operation is not
/// looked at.
fn other_account_rule(n: usize) -> serde_json::Value {
    serde_json::json!({
        "from": [{"namespaces": ["shop"], "serviceAccounts": [format!("other-{n}")]}],
        "to": [{"methods": ["GET"], "paths": ["/orders/*"]}],
    })
}

/// A rule that names another workload by its whole SPIFFE identity.
fn other_identity_rule(n: usize) -> serde_json::Value {
    serde_json::json!({
        "from": [{"identities": [format!("spiffe://example.mesh/cluster/east/ns/shop/sa/other-{n}")]}],
    })
}

/// The rule the benchmark's request matches.
fn matching_rule() -> serde_json::Value {
    serde_json::json!({
        "from": [{"namespaces": ["shop"], "serviceAccounts": ["web"]}],
        "to": [{"methods": ["GET"], "paths": ["/orders/*"]}],
    })
}

/// An allow AuthorizationPolicy of namespace `shop` protecting `service`, as a gateway
/// streams it to sidecars.
fn allow_document(name: &str, service: &str, rules: Vec<serde_json::Value>) -> PolicyDocument {
    let document = serde_json::json!({
        "apiVersion": "policy.strait.dev/v1alpha1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {
            "targetRef": {"kind": "Service", "name": service},
            "action": "allow",
            "rules": rules,
        },
    });
    PolicyDocument {
        kind: "AuthorizationPolicy".into(),
        namespace: "shop".into(),
        name: name.into(),
        document: document.to_string(),
        ..Default::default()
    }
}

/// `rules` rules protecting `api`, in policies of at most MAX_LIST rules; `rule(n)` makes the
/// others, and the very last rule is the one the request matches (allow policies are looked
/// at in order until one matches, so every rule is looked at).
fn one_service(rules: usize, rule: RuleMaker) -> Vec<PolicyDocument> {
    let mut all: Vec<serde_json::Value> = (0..rules.saturating_sub(1)).map(rule).collect();
    all.push(matching_rule());
    all.chunks(MAX_LIST)
        .enumerate()
        .map(|(i, chunk)| allow_document(&format!("api-allow-{i}"), "api", chunk.to_vec()))
        .collect()
}

/// `rules` rules spread over the services of the namespace, RULES_PER_SERVICE to a service
/// (one policy each); `api`'s last rule is the one the request matches.
fn spread(rules: usize) -> Vec<PolicyDocument> {
    let per_service = rules.min(RULES_PER_SERVICE);
    (0..rules.div_ceil(per_service))
        .map(|s| {
            let service = match s {
                0 => "api".to_owned(),
                s => format!("svc-{s}"),
            };
            let mut chunk: Vec<_> = (1..per_service)
                .map(|r| other_path_rule(s * per_service + r))
                .collect();
            chunk.push(match s {
                0 => matching_rule(),
                s => other_path_rule(s * per_service),
            });
            allow_document(&format!("{service}-allow"), &service, chunk)
        })
        .collect()
}

/// One figure of the evaluation table.
pub struct Row {
    pub label: String,
    pub figure: PerCall,
}

/// What `evaluate` measured.
pub struct Evaluation {
    /// Decisions and normalizations; the first row is the table without policies.
    pub rows: Vec<Row>,
    /// The median of the worst case at 100 rules (every rule on the called service, each with
    /// its own sources that match the caller).
    pub at_hundred_ns: f64,
    /// Building the table of 10,000 rules.
    pub builds: Vec<Row>,
}

fn table(documents: &[PolicyDocument]) -> Result<Policies> {
    let policies = Policies::from_documents(documents);
    if policies.refused > 0 {
        bail!("{} benchmark documents refused", policies.refused);
    }
    Ok(policies)
}

/// Times every case.
pub fn evaluate() -> Result<Evaluation> {
    let shop = Namespace::new("shop")?;
    let api = ServiceName::new("api")?;
    let caller: SpiffeId = CALLER.parse()?;
    let stranger: SpiffeId = "spiffe://example.mesh/cluster/east/ns/shop/sa/stranger".parse()?;
    let allowed = Request {
        caller: Some(&caller),
        http: Some(("GET", "/orders/42")),
        principal: None,
        caller_location: None,
        caller_healthy: true,
    };
    let denied = Request {
        caller: Some(&stranger),
        http: Some(("GET", "/orders/42")),
        principal: None,
        caller_location: None,
        caller_healthy: true,
    };
    let decide = |policies: &Policies, request: &Request<'_>, expected: bool| -> Result<PerCall> {
        let allows = policies.authorize(&shop, &api, request) == Decision::Allow;
        if allows != expected {
            bail!("the benchmark's request is decided wrongly");
        }
        Ok(per_call(|| {
            black_box(policies.authorize(black_box(&shop), black_box(&api), black_box(request)));
        }))
    };

    let mut rows = vec![Row {
        label: "no policies (baseline)".into(),
        figure: decide(&Policies::from_documents(&[]), &allowed, true)?,
    }];
    for rules in [1, 100, 10_000] {
        let figure = decide(
            &table(&one_service(rules, other_path_rule))?,
            &allowed,
            true,
        )?;

        rows.push(Row {
            label: match (rules, rules.div_ceil(MAX_LIST)) {
                (1, _) => "1 rule on the called service (1 policy)".to_owned(),
                (_, 1) => format!("{rules} rules on the called service (1 policy)"),
                (_, n) => format!("{rules} rules on the called service ({n} policies)"),
            },
            figure,
        });
    }
    for rules in [100, 10_000] {
        rows.push(Row {
            label: format!(
                "{rules} rules over {} services ({RULES_PER_SERVICE} on the called one)",
                rules / RULES_PER_SERVICE
            ),
            figure: decide(&table(&spread(rules))?, &allowed, true)?,
        });
    }
    let worst = decide(&table(&one_service(100, own_sources_rule))?, &allowed, true)?;
    let at_hundred_ns = worst.median_ns;
    rows.push(Row {
        label: "100 rules, each with its own sources naming the caller".into(),
        figure: worst,
    });
    let variants: [(&str, RuleMaker); 2] = [
        ("100 rules naming other accounts", other_account_rule),
        (
            "100 rules naming other whole identities",
            other_identity_rule,
        ),
    ];
    for (label, rule) in variants {
        rows.push(Row {
            label: label.into(),
            figure: decide(&table(&one_service(100, rule))?, &allowed, true)?,
        });
    }
    let hundred = table(&one_service(100, other_path_rule))?;
    rows.push(Row {
        label: "100 rules: the scan for external policies (none)".into(),
        figure: per_call(|| {
            black_box(hundred.externals(black_box(&shop), black_box(&api), black_box(&allowed)));
        }),
    });
    rows.push(Row {
        label: "100 rules, a caller that none matches (denied)".into(),
        figure: decide(&table(&one_service(100, other_path_rule))?, &denied, false)?,
    });

    let plain = "/orders/42/items";
    let messy = "/orders//./42/../42/%69tems";
    if path::normalize(messy).as_deref() != Ok(plain) {
        bail!("{messy} does not normalize to {plain}");
    }
    for (label, text) in [("plain", plain), ("messy", messy)] {
        rows.push(Row {
            label: format!("normalize a {label} path ({text})"),
            figure: per_call(|| {
                black_box(path::normalize(black_box(text)).ok());
            }),
        });
    }
    rows.push(Row {
        label: "normalize a plain path into an owned String".into(),
        figure: per_call(|| {
            black_box(path::normalize(black_box(plain)).map(Cow::into_owned).ok());
        }),
    });

    let mut builds: Vec<Row> = [
        (
            format!(
                "10000 rules on one service ({} documents)",
                10_000usize.div_ceil(MAX_LIST)
            ),
            one_service(10_000, other_path_rule),
        ),
        (
            format!(
                "10000 rules over {0} services ({0} documents)",
                10_000 / RULES_PER_SERVICE
            ),
            spread(10_000),
        ),
    ]
    .into_iter()
    .map(|(label, documents)| Row {
        label,
        figure: per_call(|| {
            black_box(Policies::from_documents(black_box(&documents)));
        }),
    })
    .collect();
    // A new view with the same policies (a catalog change) keeps the table: what it costs is
    // the documents' fingerprint.
    let unchanged = one_service(10_000, other_path_rule);
    builds.push(Row {
        label: "10000 rules in a view that changed only the catalog".into(),
        figure: per_call(|| {
            black_box(strait_sidecar::policy::fingerprint(black_box(&unchanged)));
        }),
    });
    Ok(Evaluation {
        rows,
        at_hundred_ns,
        builds,
    })
}
