//! `strait check --pre`: whether a Kubernetes cluster can take strait, asked of its API before
//! `helm install` or `strait install`: the API's version and groups, the caller's rights to
//! create what the chart creates and to grant what the gateway needs, CRDs that something else
//! installed, and the Secret with the cluster's credentials.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::Api;
use kube::config::{KubeConfigOptions, Kubeconfig};
use strait_federation::identity::TrustDomain;
use strait_federation::pki::TrustBundle;
use strait_gateway::kubernetes::rbac::{self, Right};
use strait_gateway::kubernetes::{access, crd};

use super::{CheckArgs, Report};

/// How long one question to the API may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The oldest Kubernetes minor version strait's manifests apply on.
const OLDEST_MINOR: u32 = 20;

/// Runs the pre-install checks.
pub(super) async fn run(args: &CheckArgs, report: &mut Report) {
    match connect(args.kubeconfig.as_deref()).await {
        Ok(client) => pre_install(&client, args, report).await,
        Err(e) => report.fail(
            "kubernetes-api",
            format!("can reach the Kubernetes API: {e:#}"),
            "give --kubeconfig, or set KUBECONFIG, for the cluster to install into",
        ),
    }
}

/// A client of the kubeconfig's cluster (or the one `kube` infers).
pub(super) async fn connect(kubeconfig: Option<&Path>) -> Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path)
                .with_context(|| format!("kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer().await?,
    };
    Ok(Client::try_from(config)?)
}

/// Runs a call to the API with the check's time limit.
pub(super) async fn timed<T>(
    call: impl std::future::Future<Output = kube::Result<T>>,
) -> Result<T> {
    Ok(tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .context("the API did not answer in time")??)
}

async fn pre_install(client: &Client, args: &CheckArgs, report: &mut Report) {
    const API: &str = "kubernetes-api";
    let version = match timed(client.apiserver_version()).await {
        Ok(version) => version,
        Err(e) => {
            report.fail(
                API,
                format!("can reach the Kubernetes API: {e:#}"),
                "is the kubeconfig's server up and reachable from here?",
            );
            return;
        }
    };
    report.ok(
        API,
        format!("can reach the Kubernetes API ({})", version.git_version),
    );
    let minor: u32 = version
        .minor
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap_or(0);
    if version.major == "1" && minor >= OLDEST_MINOR {
        report.ok(API, format!("is Kubernetes 1.{OLDEST_MINOR} or later"));
    } else {
        report.fail(
            API,
            format!("is Kubernetes 1.{OLDEST_MINOR} or later (it is {}.{})", version.major, version.minor),
            "upgrade the cluster: strait's manifests need admissionregistration.k8s.io/v1 and EndpointSlices",
        );
    }
    match timed(client.list_api_groups()).await {
        Ok(groups) => {
            let served: BTreeMap<String, Vec<String>> = groups
                .groups
                .iter()
                .map(|g| {
                    (
                        g.name.clone(),
                        g.versions.iter().map(|v| v.version.clone()).collect(),
                    )
                })
                .collect();
            for (group, versions, why) in [
                (
                    "discovery.k8s.io",
                    &["v1", "v1beta1"][..],
                    "EndpointSlices, which the gateway reads and writes",
                ),
                (
                    "admissionregistration.k8s.io",
                    &["v1"][..],
                    "the sidecar injector's webhook",
                ),
                (
                    "coordination.k8s.io",
                    &["v1"][..],
                    "the Lease that picks the writing replica",
                ),
                ("apiextensions.k8s.io", &["v1"][..], "strait's CRDs"),
            ] {
                let has = served
                    .get(group)
                    .and_then(|v| versions.iter().find(|want| v.iter().any(|s| s == *want)));
                match has {
                    Some(version) => report.ok(API, format!("serves {group}/{version} ({why})")),
                    None => report.fail(
                        API,
                        format!("serves {group} {} ({why})", versions.join(" or ")),
                        "a cluster of Kubernetes 1.20 or later serves it",
                    ),
                }
            }
        }
        Err(e) => report.fail(
            API,
            format!("lists its API groups: {e:#}"),
            "the caller needs discovery",
        ),
    }
    rights(client, &args.namespace, report).await;
    crds(client, report).await;
    credentials(client, args, report).await;
}

/// May the caller do `verb` on `resource` of `group` (in `namespace`)?
async fn may(
    client: &Client,
    group: &str,
    resource: &str,
    verb: &str,
    namespace: Option<&str>,
) -> Result<bool> {
    let right = Right {
        group: group.to_owned(),
        resource: resource.to_owned(),
        verb: verb.to_owned(),
        namespaced: namespace.is_some(),
    };
    let asked = access::may(client, &right, namespace.unwrap_or_default());
    tokio::time::timeout(CALL_TIMEOUT, asked)
        .await
        .context("the API did not answer in time")?
        .map_err(anyhow::Error::msg)
}

/// `resource.group` as kubectl writes it.
fn qualified(group: &str, resource: &str) -> String {
    if group.is_empty() {
        resource.to_owned()
    } else {
        format!("{resource}.{group}")
    }
}

async fn rights(client: &Client, namespace: &str, report: &mut Report) {
    const GROUP: &str = "pre-install rights";
    // What the chart creates, cluster-wide and in the namespace.
    let creates: [(&str, &str, Option<&str>); 11] = [
        ("apiextensions.k8s.io", "customresourcedefinitions", None),
        ("rbac.authorization.k8s.io", "clusterroles", None),
        ("rbac.authorization.k8s.io", "clusterrolebindings", None),
        (
            "admissionregistration.k8s.io",
            "mutatingwebhookconfigurations",
            None,
        ),
        ("", "serviceaccounts", Some(namespace)),
        ("", "secrets", Some(namespace)),
        ("", "configmaps", Some(namespace)),
        ("", "services", Some(namespace)),
        ("apps", "deployments", Some(namespace)),
        ("rbac.authorization.k8s.io", "roles", Some(namespace)),
        ("rbac.authorization.k8s.io", "rolebindings", Some(namespace)),
    ];
    for (group, resource, scope) in creates {
        let what = qualified(group, resource);
        let place = scope.map_or_else(
            || "cluster-wide".to_owned(),
            |n| format!("in namespace {n}"),
        );
        match may(client, group, resource, "create", scope).await {
            Ok(true) => report.ok(GROUP, format!("can create {what} {place}")),
            Ok(false) => report.fail(
                GROUP,
                format!("can create {what} {place}"),
                "install as an account that may (cluster-admin, or a role granting it)",
            ),
            Err(e) => report.fail(
                GROUP,
                format!("can create {what} {place}: {e:#}"),
                "the caller must be allowed to create selfsubjectaccessreviews",
            ),
        }
    }
    // Kubernetes refuses a role granting what its creator does not hold: the caller must hold
    // every right the gateway's roles grant.
    let rights = rbac::rights();
    let asked = rights.len();
    let mut lacking = Vec::new();
    for right in rights {
        let scope = right.namespaced.then_some(namespace);
        match may(client, &right.group, &right.resource, &right.verb, scope).await {
            Ok(true) => {}
            Ok(false) => lacking.push(right.to_string()),
            Err(e) => lacking.push(format!("{right} ({e:#})")),
        }
    }
    if lacking.is_empty() {
        report.ok(
            GROUP,
            format!("can grant the gateway's {asked} rights (holds each one)"),
        );
    } else {
        report.fail(
            GROUP,
            format!("can grant the gateway's rights: lacks {}", lacking.join(", ")),
            "Kubernetes lets an account grant only what it holds: install as one that holds these (or may escalate clusterroles)",
        );
    }
}

/// Who installed an object, by the labels and annotations installers leave.
fn installer(crd: &CustomResourceDefinition) -> Option<String> {
    let labels = crd.metadata.labels.clone().unwrap_or_default();
    let annotations = crd.metadata.annotations.clone().unwrap_or_default();
    let name = labels
        .get("app.kubernetes.io/part-of")
        .or_else(|| labels.get("app.kubernetes.io/name"))
        .cloned();
    if name.as_deref() == Some("strait") {
        return None;
    }
    name.or_else(|| {
        annotations
            .get("meta.helm.sh/release-name")
            .filter(|release| release.as_str() != "strait")
            .map(|release| format!("Helm release {release}"))
    })
    .or_else(|| {
        labels
            .get("app.kubernetes.io/managed-by")
            .filter(|m| m.as_str() != "Helm")
            .cloned()
    })
}

async fn crds(client: &Client, report: &mut Report) {
    const GROUP: &str = "custom resources";
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for (_, wanted) in crd::all() {
        let name = wanted.metadata.name.clone().unwrap_or_default();
        let found = match timed(api.get_opt(&name)).await {
            Ok(found) => found,
            Err(e) => {
                report.fail(
                    GROUP,
                    format!("{name}: {e:#}"),
                    "the caller must be allowed to get customresourcedefinitions",
                );
                continue;
            }
        };
        let Some(found) = found else {
            report.ok(GROUP, format!("{name} is not installed yet"));
            continue;
        };
        let served: Vec<&str> = found
            .spec
            .versions
            .iter()
            .filter(|v| v.served)
            .map(|v| v.name.as_str())
            .collect();
        let needed: Vec<&str> = wanted
            .spec
            .versions
            .iter()
            .map(|v| v.name.as_str())
            .collect();
        let missing: Vec<&&str> = needed.iter().filter(|v| !served.contains(v)).collect();
        match (installer(&found), missing.is_empty()) {
            (None, true) => report.ok(GROUP, format!("{name} is installed, by strait (an upgrade keeps it)")),
            (Some(owner), true) => report.warn(
                GROUP,
                format!("{name} was installed by {owner}"),
                format!("strait will share it: it reads and writes {} of its schema; an upgrade of {owner} must keep serving it", needed.join(", ")),
            ),
            (owner, false) => report.fail(
                GROUP,
                format!(
                    "{name}, installed by {}, does not serve {}",
                    owner.as_deref().unwrap_or("strait"),
                    missing.iter().map(|v| **v).collect::<Vec<_>>().join(", ")
                ),
                "strait needs that version served: update the CRD (kubectl apply -f deploy/crds/) or remove what installed it",
            ),
        }
    }
}

async fn credentials(client: &Client, args: &CheckArgs, report: &mut Report) {
    const GROUP: &str = "credentials";
    let namespace = &args.namespace;
    let secret_name = &args.credentials_secret;
    let make = format!(
        "strait trust issue --cluster CLUSTER --trust T --dir D, then kubectl -n {namespace} create secret generic {secret_name} --from-file=D/"
    );
    match timed(Api::<Namespace>::all(client.clone()).get_opt(namespace)).await {
        Ok(Some(_)) => report.ok(GROUP, format!("namespace {namespace} exists")),
        Ok(None) => {
            report.fail(
                GROUP,
                format!("namespace {namespace} exists"),
                format!("kubectl create namespace {namespace}; then {make}"),
            );
            return;
        }
        Err(e) => {
            report.fail(
                GROUP,
                format!("namespace {namespace}: {e:#}"),
                "the caller must be allowed to get namespaces",
            );
            return;
        }
    }
    let secret = match timed(
        Api::<Secret>::namespaced(client.clone(), namespace).get_opt(secret_name),
    )
    .await
    {
        Ok(Some(secret)) => secret,
        Ok(None) => {
            report.fail(
                GROUP,
                format!("Secret {namespace}/{secret_name} exists"),
                make,
            );
            return;
        }
        Err(e) => {
            report.fail(
                GROUP,
                format!("Secret {namespace}/{secret_name}: {e:#}"),
                "the caller must be allowed to get secrets there",
            );
            return;
        }
    };
    let data = secret.data.unwrap_or_default();
    let text = |key: &str| {
        data.get(key)
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
    };
    let missing: Vec<&str> = ["bundle.pem", "issuer.crt", "issuer.key", "link.key"]
        .into_iter()
        .filter(|key| text(key).is_none_or(|t| t.trim().is_empty()))
        .collect();
    if !missing.is_empty() {
        report.fail(
            GROUP,
            format!(
                "Secret {namespace}/{secret_name} holds the cluster's credentials: no {}",
                missing.join(", ")
            ),
            make,
        );
        return;
    }
    report.ok(
        GROUP,
        format!(
            "Secret {namespace}/{secret_name} holds bundle.pem, issuer.crt, issuer.key and link.key"
        ),
    );
    match issuer_facts(
        &text("bundle.pem").unwrap_or_default(),
        &text("issuer.crt").unwrap_or_default(),
    ) {
        Ok(facts) => {
            let description = format!(
                "its issuer is cluster {}'s in trust domain {}, chained to the bundle",
                facts.cluster, facts.trust_domain
            );
            match &args.cluster {
                Some(cluster) if *cluster != facts.cluster => report.fail(
                    GROUP,
                    format!("{description}, not cluster {cluster}'s"),
                    format!(
                        "issue credentials for cluster {cluster}, or install as cluster {}",
                        facts.cluster
                    ),
                ),
                _ => report.ok(GROUP, description),
            }
            report.expiry(
                GROUP,
                "the issuer",
                u64::try_from(facts.not_after.unix_timestamp()).unwrap_or(0),
                false,
                "issue a new one: strait trust issue",
            );
        }
        Err(e) => report.fail(
            GROUP,
            format!("the issuer in Secret {namespace}/{secret_name}: {e:#}"),
            make,
        ),
    }
}

/// What the Secret's issuer certificate says, checked against its bundle.
struct IssuerFacts {
    cluster: String,
    trust_domain: String,
    not_after: time::OffsetDateTime,
}

fn issuer_facts(bundle_pem: &str, issuer_pem: &str) -> Result<IssuerFacts> {
    let (_, pem) =
        x509_parser::pem::parse_x509_pem(issuer_pem.as_bytes()).context("issuer.crt is not PEM")?;
    let cert = pem
        .parse_x509()
        .context("issuer.crt is not a certificate")?;
    let uri = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .into_iter()
        .flat_map(|san| san.value.general_names.iter())
        .find_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) => Some(uri.to_string()),
            _ => None,
        })
        .context("issuer.crt names no cluster (no spiffe:// URI)")?;
    let (trust_domain, cluster) = uri
        .strip_prefix("spiffe://")
        .and_then(|rest| rest.split_once("/cluster/"))
        .with_context(|| format!("issuer.crt names {uri}, not a cluster's issuer"))?;
    let domain = TrustDomain::new(trust_domain)
        .with_context(|| format!("issuer.crt's trust domain {trust_domain:?}"))?;
    let bundle = TrustBundle::from_pem(domain, bundle_pem, Path::new("bundle.pem"))?;
    if bundle.fingerprint_of_issuer(issuer_pem).is_none() {
        bail!("issuer.crt was not signed by a root of bundle.pem");
    }
    Ok(IssuerFacts {
        cluster: cluster.to_owned(),
        trust_domain: trust_domain.to_owned(),
        not_after: cert.validity().not_after.to_datetime(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_issuer_is_read_from_its_certificate_and_checked_against_the_bundle() {
        use strait_federation::identity::ClusterName;
        use strait_federation::pki::{ISSUER_LIFETIME, ROOT_LIFETIME, Root};
        let now = std::time::SystemTime::now();
        let domain = TrustDomain::new("example.mesh").unwrap();
        let root = Root::generate(&domain, ROOT_LIFETIME, now).unwrap();
        let west = ClusterName::new("west").unwrap();
        let issuer = root.issue_cluster(&west, ISSUER_LIFETIME, now).unwrap();
        let facts = issuer_facts(&root.cert_pem, &issuer.chain_pem).unwrap();
        assert_eq!(
            (facts.cluster.as_str(), facts.trust_domain.as_str()),
            ("west", "example.mesh")
        );
        let other = Root::generate(&domain, ROOT_LIFETIME, now).unwrap();
        let error = issuer_facts(&other.cert_pem, &issuer.chain_pem)
            .err()
            .unwrap();
        assert!(
            error
                .to_string()
                .contains("not signed by a root of bundle.pem"),
            "{error}"
        );
    }
}
