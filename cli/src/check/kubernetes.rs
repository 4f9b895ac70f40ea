//! `strait check` in Kubernetes mode: the cluster's side of a gateway that is its controller.
//! What the gateway says (its controller's problems, the rights it holds, asked of the API as
//! itself) and what the CLI asks the cluster's API through a kubeconfig: strait's CRDs
//! installed and established, and the sidecar injector's webhook: its configuration, the CA
//! the API server checks the injector with, the Service it calls and that Service's endpoints.

use std::path::Path;
use std::sync::Arc;

use k8s_openapi::api::admissionregistration::v1::{MutatingWebhook, MutatingWebhookConfiguration};
use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, ListParams};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use strait_federation::pki::parse_certs;
use strait_federation::proto::operator::{CertificateStatus, StatusResponse};
use strait_gateway::kubernetes::crd;

use super::Report;
use super::pre::{connect, timed};

const GROUP: &str = "strait-kubernetes";
/// The suffix of the injector's webhooks' names, as the chart names them.
const WEBHOOK_SUFFIX: &str = "inject.strait.dev";
/// Lacking rights named on the line; the rest are counted.
const RIGHTS_NAMED: usize = 10;

/// Runs the Kubernetes-mode checks of a gateway that said how it stands.
pub(super) async fn run(status: &StatusResponse, kubeconfig: Option<&Path>, report: &mut Report) {
    controller(status, report);
    let client = match connect(kubeconfig).await {
        Ok(client) => client,
        Err(e) => {
            report.warn(
                GROUP,
                format!("the cluster's CRDs and webhook were not checked: {e:#}"),
                "give --kubeconfig (or set KUBECONFIG) for the gateway's cluster",
            );
            return;
        }
    };
    crds(&client, report).await;
    webhook(&client, status, report).await;
}

/// What the gateway's controller says of its API and of its rights.
fn controller(status: &StatusResponse, report: &mut Report) {
    if status.kubernetes_problems.is_empty() {
        report.ok(
            GROUP,
            "the gateway's controller can use its cluster's API (watches, writes, the Lease)",
        );
    }
    for problem in &status.kubernetes_problems {
        report.fail(
            GROUP,
            format!("the gateway's controller: {problem}"),
            "check the chart's CRDs and RBAC are applied: strait install | kubectl apply -f -",
        );
    }
    let checked = status.kubernetes_rights_checked;
    let lacking = &status.kubernetes_rights_lacking;
    if checked == 0 {
        // The API did not answer: the problem above says why.
        return;
    }
    if lacking.is_empty() {
        report.ok(
            GROUP,
            format!("the gateway holds the {checked} rights its roles grant (asked of the API as the gateway)"),
        );
        return;
    }
    let mut named = lacking
        .iter()
        .take(RIGHTS_NAMED)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if lacking.len() > RIGHTS_NAMED {
        named.push_str(&format!(" and {} more", lacking.len() - RIGHTS_NAMED));
    }
    report.fail(
        GROUP,
        format!(
            "the gateway lacks {} of the {checked} rights its roles grant: {named}",
            lacking.len()
        ),
        format!(
            "bind the gateway's service account in namespace {} to the chart's roles: strait install | kubectl apply -f - (or deploy/rbac.yaml)",
            status.kubernetes_namespace
        ),
    );
}

/// Each of strait's CRDs installed, established, and serving the versions strait uses.
async fn crds(client: &Client, report: &mut Report) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let wanted = crd::all();
    let mut good = 0;
    for (_, wanted) in &wanted {
        let name = wanted.metadata.name.clone().unwrap_or_default();
        let found = match timed(api.get_opt(&name)).await {
            Ok(Some(found)) => found,
            Ok(None) => {
                report.fail(
                    GROUP,
                    format!("CRD {name} is installed"),
                    "kubectl apply -f deploy/crds/ (or strait install | kubectl apply -f -)",
                );
                continue;
            }
            Err(e) => {
                report.fail(
                    GROUP,
                    format!("CRD {name}: {e:#}"),
                    "the kubeconfig's account must be allowed to get customresourcedefinitions",
                );
                continue;
            }
        };
        let established = found
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Established"));
        if let Some(condition) = established.filter(|c| c.status != "True") {
            report.fail(
                GROUP,
                format!(
                    "CRD {name} is established: {}",
                    condition.message.as_deref().unwrap_or("not yet")
                ),
                "the API server has not accepted its names: see kubectl describe crd",
            );
            continue;
        }
        if established.is_none() {
            report.fail(
                GROUP,
                format!("CRD {name} is established"),
                "the API server has not accepted it yet: wait, or see kubectl describe crd",
            );
            continue;
        }
        let missing: Vec<&str> = wanted
            .spec
            .versions
            .iter()
            .map(|v| v.name.as_str())
            .filter(|v| !found.spec.versions.iter().any(|f| f.served && f.name == *v))
            .collect();
        if !missing.is_empty() {
            report.fail(
                GROUP,
                format!("CRD {name} serves {}", missing.join(", ")),
                "update it: kubectl apply -f deploy/crds/",
            );
            continue;
        }
        good += 1;
    }
    if good == wanted.len() {
        report.ok(
            GROUP,
            format!("strait's {good} CRDs are installed, established and served"),
        );
    }
}

/// The webhooks of the cluster's configurations that call this gateway's injector: named as
/// the chart names them, calling a Service of the gateway's namespace or a URL.
fn injector_webhooks(
    configurations: Vec<MutatingWebhookConfiguration>,
    namespace: &str,
) -> Vec<(String, MutatingWebhook)> {
    let mut found = Vec::new();
    for configuration in configurations {
        let name = configuration.metadata.name.unwrap_or_default();
        for webhook in configuration.webhooks.unwrap_or_default() {
            let ours = webhook
                .client_config
                .service
                .as_ref()
                .map_or(webhook.client_config.url.is_some(), |s| {
                    s.namespace == namespace
                });
            if webhook.name.ends_with(WEBHOOK_SUFFIX) && ours {
                found.push((name.clone(), webhook));
            }
        }
    }
    found
}

async fn webhook(client: &Client, status: &StatusResponse, report: &mut Report) {
    let namespace = status.kubernetes_namespace.as_str();
    let configurations = match timed(
        Api::<MutatingWebhookConfiguration>::all(client.clone()).list(&ListParams::default()),
    )
    .await
    {
        Ok(list) => list.items,
        Err(e) => {
            report.fail(
                GROUP,
                format!("the sidecar injector's webhook: {e:#}"),
                "the kubeconfig's account must be allowed to list mutatingwebhookconfigurations",
            );
            return;
        }
    };
    let webhooks = injector_webhooks(configurations, namespace);
    let Some(injector) = &status.injector else {
        if webhooks.is_empty() {
            report.ok(
                GROUP,
                "the gateway serves no sidecar injector, and no webhook calls one",
            );
        }
        for (configuration, webhook) in &webhooks {
            report.fail(
                GROUP,
                format!(
                    "webhook {} of {configuration} calls the sidecar injector, but the gateway serves none",
                    webhook.name
                ),
                "turn the injector on (the chart's injector.enabled) or delete the webhook configuration",
            );
        }
        return;
    };
    if webhooks.is_empty() {
        report.warn(
            GROUP,
            "the gateway serves a sidecar injector, but no webhook configuration calls it",
            "apply the chart's MutatingWebhookConfiguration: strait install | kubectl apply -f -",
        );
        return;
    }
    report.expiry(
        GROUP,
        "the sidecar injector's serving certificate",
        injector.not_after,
        false,
        "make a new one (helm upgrade keeps it: delete Secret strait-injector-tls first)",
    );
    for (configuration, webhook) in &webhooks {
        let what = format!("webhook {} of {configuration}", webhook.name);
        let config = &webhook.client_config;
        let host = match (&config.service, &config.url) {
            (Some(service), _) => {
                format!("{}.{}.svc", service.name, service.namespace)
            }
            (None, Some(url)) => host_of(url),
            (None, None) => String::new(),
        };
        let ca = config.ca_bundle.as_ref().map(|b| b.0.clone());
        match verify(ca.as_deref(), injector, &host) {
            Ok(()) => report.ok(
                GROUP,
                format!("{what} trusts the injector's certificate for {host}"),
            ),
            Err(why) => report.fail(
                GROUP,
                format!("{what} trusts the injector's certificate for {host}: {why}"),
                "the API server would refuse to call it: give the webhook the CA that signed Secret strait-injector-tls (strait install | kubectl apply -f - keeps them a pair)",
            ),
        }
        if let Some(service) = &config.service {
            endpoints(client, &what, &service.namespace, &service.name, report).await;
        }
    }
}

/// Checks that the webhook's Service exists and has a ready endpoint.
async fn endpoints(client: &Client, what: &str, namespace: &str, name: &str, report: &mut Report) {
    match timed(Api::<Service>::namespaced(client.clone(), namespace).get_opt(name)).await {
        Ok(Some(_)) => {}
        Ok(None) => {
            report.fail(
                GROUP,
                format!("{what} calls Service {namespace}/{name}, which does not exist"),
                "apply the chart's Service strait-injector: strait install | kubectl apply -f -",
            );
            return;
        }
        Err(e) => {
            report.fail(
                GROUP,
                format!("{what}: Service {namespace}/{name}: {e:#}"),
                "the kubeconfig's account must be allowed to get services",
            );
            return;
        }
    }
    let ready =
        match timed(Api::<Endpoints>::namespaced(client.clone(), namespace).get_opt(name)).await {
            Ok(endpoints) => endpoints
                .and_then(|e| e.subsets)
                .unwrap_or_default()
                .iter()
                .map(|s| s.addresses.as_ref().map_or(0, Vec::len))
                .sum::<usize>(),
            Err(e) => {
                report.fail(
                    GROUP,
                    format!("{what}: the endpoints of Service {namespace}/{name}: {e:#}"),
                    "the kubeconfig's account must be allowed to get endpoints",
                );
                return;
            }
        };
    if ready == 0 {
        report.fail(
            GROUP,
            format!("{what} calls Service {namespace}/{name}, which has no ready endpoint"),
            "are the gateway's pods ready? kubectl -n NAMESPACE get pods -l app.kubernetes.io/name=strait",
        );
    } else {
        report.ok(
            GROUP,
            format!(
                "{what} calls Service {namespace}/{name} ({ready} ready endpoint{})",
                if ready == 1 { "" } else { "s" }
            ),
        );
    }
}

/// The host of an `https://host:port/path` URL.
fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or_default();
    if let Some(bracketed) = authority.strip_prefix('[') {
        return bracketed.split(']').next().unwrap_or_default().to_owned();
    }
    authority
        .rsplit_once(':')
        .map_or(authority, |(host, _)| host)
        .to_owned()
}

/// Verifies the injector's certificate as the API server will: chained to the webhook's
/// caBundle, valid now, for `host`.
fn verify(ca: Option<&[u8]>, injector: &CertificateStatus, host: &str) -> Result<(), String> {
    let ca = ca.filter(|c| !c.is_empty()).ok_or("it has no caBundle")?;
    let ca = std::str::from_utf8(ca).map_err(|_| "its caBundle is not PEM")?;
    let roots = parse_certs(ca, Path::new("caBundle")).map_err(|e| e.to_string())?;
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store
            .add(root)
            .map_err(|e| format!("its caBundle holds a certificate rustls refuses: {e}"))?;
    }
    let chain = parse_certs(&injector.pem, Path::new("the injector's certificate"))
        .map_err(|e| e.to_string())?;
    let (leaf, intermediates) = chain
        .split_first()
        .ok_or("the gateway sent no injector certificate")?;
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(store),
        strait_federation::tls::provider(),
    )
    .build()
    .map_err(|e| e.to_string())?;
    let name = ServerName::try_from(host.to_owned()).map_err(|e| format!("{host}: {e}"))?;
    let intermediates: Vec<CertificateDer<'static>> = intermediates.to_vec();
    rustls::client::danger::ServerCertVerifier::verify_server_cert(
        verifier.as_ref(),
        leaf,
        &intermediates,
        &name,
        &[],
        UnixTime::now(),
    )
    .map(|_| ())
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authority(name: &str) -> (rcgen::Certificate, rcgen::Issuer<'static, rcgen::KeyPair>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        (cert, rcgen::Issuer::new(params, key))
    }

    fn serving(host: &str, issuer: &rcgen::Issuer<'_, rcgen::KeyPair>) -> CertificateStatus {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![host.to_owned()])
            .unwrap()
            .signed_by(&key, issuer)
            .unwrap();
        CertificateStatus {
            pem: cert.pem(),
            ..Default::default()
        }
    }

    #[test]
    fn the_injectors_certificate_is_checked_as_the_api_server_checks_it() {
        let (ca, issuer) = authority("strait-injector-ca");
        let (other, _) = authority("another-ca");
        let host = "strait-injector.strait-system.svc";
        let injector = serving(host, &issuer);
        let bundle = ca.pem().into_bytes();
        assert_eq!(verify(Some(&bundle), &injector, host), Ok(()));
        let wrong_ca = verify(Some(other.pem().as_bytes()), &injector, host).unwrap_err();
        assert!(wrong_ca.contains("UnknownIssuer"), "{wrong_ca}");
        let wrong_name = verify(Some(&bundle), &injector, "strait-injector.other.svc").unwrap_err();
        assert!(wrong_name.contains("not valid for name"), "{wrong_name}");
        assert_eq!(
            verify(None, &injector, host),
            Err("it has no caBundle".to_owned())
        );
        assert_eq!(
            verify(Some(b"not pem"), &injector, host).map_err(|e| e.contains("caBundle")),
            Err(true)
        );
    }

    #[test]
    fn a_self_signed_injector_certificate_is_its_own_ca() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let injector = CertificateStatus {
            pem: cert.pem(),
            ..Default::default()
        };
        assert_eq!(
            verify(Some(cert.pem().as_bytes()), &injector, "127.0.0.1"),
            Ok(())
        );
    }

    #[test]
    fn a_webhook_urls_host_is_what_its_certificate_must_name() {
        assert_eq!(host_of("https://127.0.0.1:8443/mutate"), "127.0.0.1");
        assert_eq!(host_of("https://injector.example:443"), "injector.example");
        assert_eq!(host_of("https://[::1]:8443/mutate"), "::1");
        assert_eq!(
            host_of("https://injector.example/mutate"),
            "injector.example"
        );
    }

    #[test]
    fn only_webhooks_calling_the_injector_of_the_gateways_namespace_are_checked() {
        let configuration: MutatingWebhookConfiguration =
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "strait-injector-strait-system"},
                "webhooks": [
                    {"name": "namespace.inject.strait.dev", "admissionReviewVersions": ["v1"],
                     "sideEffects": "None",
                     "clientConfig": {"service": {"name": "strait-injector", "namespace": "strait-system"}}},
                    {"name": "pod.inject.strait.dev", "admissionReviewVersions": ["v1"],
                     "sideEffects": "None",
                     "clientConfig": {"service": {"name": "strait-injector", "namespace": "other"}}},
                    {"name": "validate.example.com", "admissionReviewVersions": ["v1"],
                     "sideEffects": "None",
                     "clientConfig": {"url": "https://example.com/validate"}},
                ],
            }))
            .unwrap();
        let found = injector_webhooks(vec![configuration], "strait-system");
        let names: Vec<&str> = found.iter().map(|(_, w)| w.name.as_str()).collect();
        assert_eq!(names, ["namespace.inject.strait.dev"]);
    }
}
