//! The Helm chart in `deploy/helm/strait/`: lint clean, rendered for each cloud, bad values
//! refused with a message naming them, the rendered manifests accepted by a real Kubernetes
//! 1.20 API server (`kubectl apply --dry-run=server`), as are workloads `strait inject` gave a
//! sidecar, and `helm install` of the chart, CRDs included, into one. Needs helm and kubectl (`scripts/kube-control-plane.sh tools`) and, for
//! the API server, the control plane; says so and skips without them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, PostParams};
use strait_tests::kube::{ControlPlane, binaries, helm_and_kubectl as tools};
use strait_tests::wait_for;

fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/helm/strait")
}

/// Runs a command; its stdout, or its stderr as the error.
fn run(program: &Path, args: &[&str]) -> std::result::Result<String, String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("running {}: {e}", program.display()))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

const VALUES: &str = "cluster=west,trustDomain=example.mesh";

/// `kubectl apply --dry-run=server -f FILE`: a line per object the API server accepted.
fn dry_run(kubectl: &Path, kubeconfig: &str, file: &Path) -> Result<String> {
    run(
        kubectl,
        &[
            "--kubeconfig",
            kubeconfig,
            "apply",
            "--dry-run=server",
            "-f",
            &file.to_string_lossy(),
        ],
    )
    .map_err(anyhow::Error::msg)
}

/// A Deployment, a Pod and a Service, as `strait inject` takes them (no token mounted: no
/// controller manager runs here to make one).
const WORKLOAD: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: api, namespace: shop}
spec:
  replicas: 2
  selector: {matchLabels: {app: api}}
  template:
    metadata: {labels: {app: api}}
    spec:
      automountServiceAccountToken: false
      containers:
        - name: api
          image: api:1
          ports: [{name: http, containerPort: 8080}]
          readinessProbe: {httpGet: {path: /ready, port: 8080}}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop}
spec:
  automountServiceAccountToken: false
  containers: [{name: web, image: web:1}]
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: shop}
spec:
  selector: {app: api}
  ports: [{name: http, port: 8080}]
";

fn template(helm: &Path, values: &str) -> std::result::Result<String, String> {
    let chart = chart();
    run(
        helm,
        &[
            "template",
            "strait",
            &chart.to_string_lossy(),
            "--namespace",
            "strait-system",
            "--set",
            values,
        ],
    )
}

#[test]
fn the_chart_is_lint_clean_renders_for_each_cloud_and_names_a_bad_value() -> Result<()> {
    let (helm, _) = match tools() {
        Ok(tools) => tools,
        Err(why) => {
            eprintln!("skipped: {why}");
            return Ok(());
        }
    };
    let chart = chart();
    let lint = run(
        &helm,
        &[
            "lint",
            &chart.to_string_lossy(),
            "--strict",
            "--set",
            VALUES,
        ],
    )
    .map_err(anyhow::Error::msg)?;
    ensure!(lint.contains("0 chart(s) failed"), "{lint}");

    for (values, said) in [
        ("trustDomain=example.mesh", "cluster is required"),
        (
            "cluster=West,trustDomain=example.mesh",
            "\"West\" is not a DNS label",
        ),
        ("cluster=west", "trustDomain is required"),
        (
            "cluster=west,trustDomain=example.mesh,quicService.cloud=ibm",
            "quicService.cloud \"ibm\" is not one of",
        ),
        (
            "cluster=west,trustDomain=example.mesh,quicService.type=ExternalName",
            "quicService.type \"ExternalName\" is not one of",
        ),
        (
            "cluster=west,trustDomain=example.mesh,injector.failurePolicy=Maybe",
            "injector.failurePolicy \"Maybe\" is not Fail or Ignore",
        ),
    ] {
        let refused = template(&helm, values).err().unwrap_or_default();
        ensure!(refused.contains(said), "{values}: {refused}");
    }

    // The Grafana dashboard: a ConfigMap Grafana's sidecar loads, whose every query names
    // metrics that strait's processes export.
    let rendered =
        template(&helm, &format!("{VALUES},grafana.dashboard=true")).map_err(anyhow::Error::msg)?;
    ensure!(
        rendered.contains("name: strait-grafana-dashboard")
            && rendered.contains("grafana_dashboard: \"1\""),
        "no dashboard ConfigMap"
    );
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        chart.join("dashboards/strait.json"),
    )?)?;
    let source = ["../gateway/src/metrics.rs", "../sidecar/src/metrics.rs"]
        .iter()
        .map(|file| std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file)))
        .collect::<std::io::Result<Vec<_>>>()?
        .concat();
    let mut queried = 0;
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap_or_default();
            for name in expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|word| word.starts_with("strait_"))
            {
                let base = name
                    .trim_start_matches("strait_")
                    .trim_end_matches("_bucket");
                ensure!(
                    source.contains(&format!("\"{base}\"")),
                    "panel {:?} queries {name}, which no strait process exports",
                    panel["title"]
                );
                queried += 1;
            }
        }
    }
    ensure!(queried >= 10, "the dashboard queries {queried} metrics");

    for (cloud, annotation) in [
        (
            "aws",
            "service.beta.kubernetes.io/aws-load-balancer-type: nlb",
        ),
        ("gcp", "cloud.google.com/l4-rbs: enabled"),
        (
            "azure",
            "service.beta.kubernetes.io/azure-load-balancer-internal: \"false\"",
        ),
    ] {
        let rendered = template(&helm, &format!("{VALUES},quicService.cloud={cloud}"))
            .map_err(anyhow::Error::msg)?;
        let quic = rendered
            .split("---")
            .find(|d| d.contains("name: strait-gateway-quic"))
            .context("no QUIC Service")?;
        ensure!(quic.contains(annotation), "{cloud}: {quic}");
        ensure!(quic.contains("protocol: UDP"), "{cloud}: {quic}");
        ensure!(
            quic.contains("strait.dev/leader: \"true\""),
            "{cloud}: {quic}"
        );
        // The gateway's configuration is this cluster's, in Kubernetes mode.
        // The gateway reads the configuration the chart writes.
        let configmap = rendered
            .split("---")
            .find(|d| d.contains("gateway.yaml: |"))
            .context("no gateway ConfigMap")?;
        let configmap: serde_json::Value = serde_saphyr::from_str(configmap)?;
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("gateway.yaml");
        std::fs::write(
            &path,
            configmap["data"]["gateway.yaml"]
                .as_str()
                .unwrap_or_default(),
        )?;
        let config = strait_gateway::config::GatewayConfig::load(&path)
            .map_err(|e| anyhow::anyhow!("the chart's gateway.yaml: {e}"))?;
        ensure!(config.cluster.as_str() == "west");
        let kubernetes = config.kubernetes.context("not in Kubernetes mode")?;
        ensure!(kubernetes.namespace == "strait-system");
        ensure!(
            kubernetes.injector.map(|i| i.gateway_address)
                == Some("strait-gateway.strait-system.svc:4434".to_owned())
        );
        ensure!(rendered.contains("cluster: west\n"), "{rendered}");
        ensure!(rendered.contains("credentialsDir: /etc/strait/credentials"));
        ensure!(rendered.contains("namespace: strait-system\n      leaseDurationSeconds: 15"));
    }
    Ok(())
}

#[test]
fn the_chart_installs_into_a_real_api_server_crds_and_all() -> Result<()> {
    let (helm, kubectl) = match (tools(), binaries()) {
        (Ok(tools), Ok(_)) => tools,
        (Err(why), _) | (_, Err(why)) => {
            eprintln!("skipped: {why}");
            return Ok(());
        }
    };
    let dir = tempfile::tempdir()?;
    let plane = ControlPlane::start("west", dir.path())?;
    let kubeconfig = plane.kubeconfig.to_string_lossy().into_owned();
    let runtime = tokio::runtime::Runtime::new()?;
    let client = runtime.block_on(plane.client())?;
    let namespace: Namespace = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "strait-system"},
    }))?;
    runtime.block_on(
        Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &namespace),
    )?;

    // The rendered manifests, as GitOps would apply them: the API server accepts every object.
    let rendered =
        template(&helm, &format!("{VALUES},quicService.cloud=aws")).map_err(anyhow::Error::msg)?;
    let file = dir.path().join("rendered.yaml");
    std::fs::write(&file, &rendered)?;
    let dry = dry_run(&kubectl, &kubeconfig, &file)?;
    ensure!(
        dry.lines().count() == rendered.matches("\nkind: ").count(),
        "not every object was accepted:\n{dry}"
    );

    // A workload injected by `strait inject`: the API server takes the pods' new shape too.
    let workload = dir.path().join("workload.yaml");
    std::fs::write(&workload, WORKLOAD)?;
    let bundle = dir.path().join("bundle.pem");
    std::fs::write(
        &bundle,
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    )?;
    let injected = run(
        strait_tests::strait_bin(),
        &[
            "inject",
            "-f",
            &workload.to_string_lossy(),
            "--bundle",
            &bundle.to_string_lossy(),
        ],
    )
    .map_err(anyhow::Error::msg)?;
    ensure!(
        injected.matches("name: strait-proxy").count() == 2
            && injected.matches("name: strait-init").count() == 2,
        "{injected}"
    );
    ensure!(
        injected.contains("kind: Service"),
        "the Service went missing: {injected}"
    );
    let file = dir.path().join("injected.yaml");
    std::fs::write(&file, &injected)?;
    let namespace: Namespace = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"},
    }))?;
    runtime.block_on(
        Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &namespace),
    )?;
    // No controller manager runs here to make the namespace's default service account.
    let account = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": "default", "namespace": "shop"},
    }))?;
    runtime.block_on(
        Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(client.clone(), "shop")
            .create(&PostParams::default(), &account),
    )?;
    let dry = dry_run(&kubectl, &kubeconfig, &file)?;
    ensure!(
        dry.lines().count() == 3,
        "not every object was accepted:\n{dry}"
    );

    // helm install: the CRDs from the chart's crds/, then the objects.
    let chart = chart();
    let install = |verb: &str| {
        run(
            &helm,
            &[
                verb,
                "strait",
                &chart.to_string_lossy(),
                "--kubeconfig",
                &kubeconfig,
                "--namespace",
                "strait-system",
                "--set",
                VALUES,
            ],
        )
        .map_err(anyhow::Error::msg)
    };
    install("install")?;
    let crds = runtime.block_on(
        Api::<CustomResourceDefinition>::all(client.clone()).list(&ListParams::default()),
    )?;
    ensure!(crds.items.len() == 9, "{} CRDs installed", crds.items.len());
    let deployment = runtime.block_on(
        Api::<Deployment>::namespaced(client.clone(), "strait-system").get("strait-gateway"),
    )?;
    ensure!(deployment.spec.and_then(|s| s.replicas) == Some(2));
    let services: Vec<String> = runtime
        .block_on(
            Api::<Service>::namespaced(client.clone(), "strait-system")
                .list(&ListParams::default()),
        )?
        .items
        .into_iter()
        .filter_map(|s| s.metadata.name)
        .collect();
    ensure!(
        services
            == [
                "strait-dns",
                "strait-gateway",
                "strait-gateway-quic",
                "strait-injector"
            ],
        "{services:?}"
    );
    // The injector's webhook trusts the CA that signed the gateway's serving certificate.
    let secrets =
        Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), "strait-system");
    let ca = |secret: k8s_openapi::api::core::v1::Secret| {
        secret
            .data
            .and_then(|d| d.get("ca.crt").cloned())
            .map(|b| b.0)
            .unwrap_or_default()
    };
    let installed_ca = ca(runtime.block_on(secrets.get("strait-injector-tls"))?);
    let webhooks = runtime.block_on(
        Api::<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration>::all(
            client.clone(),
        )
        .get("strait-injector-strait-system"),
    )?;
    let bundles: Vec<Vec<u8>> = webhooks
        .webhooks
        .unwrap_or_default()
        .into_iter()
        .filter_map(|w| w.client_config.ca_bundle.map(|b| b.0))
        .collect();
    ensure!(
        bundles.len() == 2
            && bundles.iter().all(|b| *b == installed_ca)
            && !installed_ca.is_empty(),
        "the webhooks do not trust the injector's CA"
    );
    // The DNS Service has its address now: an upgrade writes the CoreDNS block forwarding to it.
    let dns = runtime
        .block_on(Api::<Service>::namespaced(client.clone(), "strait-system").get("strait-dns"))?
        .spec
        .and_then(|s| s.cluster_ip)
        .context("the DNS Service has no ClusterIP")?;
    install("upgrade")?;
    let stub = wait_for(Duration::from_secs(5), "the CoreDNS block", || {
        Ok(runtime
            .block_on(
                Api::<ConfigMap>::namespaced(client.clone(), "strait-system")
                    .get_opt("strait-coredns-stub"),
            )?
            .and_then(|c| c.data)
            .and_then(|d| d.get("clusterset.server").cloned()))
    })?;
    ensure!(
        stub.contains(&format!("forward . {dns}:53")),
        "the block does not forward to {dns}: {stub}"
    );
    // An upgrade keeps the injector's certificate: the webhook and the gateway stay a pair.
    ensure!(
        ca(runtime.block_on(secrets.get("strait-injector-tls"))?) == installed_ca,
        "the upgrade made a new injector CA"
    );
    Ok(())
}

#[test]
fn strait_inject_needs_no_context_and_then_takes_the_bundle_from_a_config_map() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let workload = dir.path().join("deploy.yaml");
    std::fs::write(&workload, WORKLOAD)?;
    let output = Command::new(strait_tests::strait_bin())
        .args(["inject", "-f", &workload.to_string_lossy()])
        .env("STRAIT_CONFIG", dir.path().join("no-contexts"))
        .env_remove("STRAIT_CONTEXT")
        .output()?;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    ensure!(output.status.success(), "{stderr}");
    ensure!(
        stdout.matches("name: strait-proxy").count() == 2,
        "no sidecar added:\n{stdout}"
    );
    ensure!(
        stdout.contains("name: strait-trust-bundle")
            && stderr.contains("ConfigMap strait-trust-bundle"),
        "the sidecar's bundle is not the ConfigMap's, or nobody was told:\n{stdout}\n{stderr}"
    );
    Ok(())
}

/// Values that reach every branch and every `toYaml` of the chart.
const ALL_VALUES: &str = r#"
gateway:
  replicas: 3
  location: {cloud: aws, region: eu-west-1, zone: "eu-west-1a"}
  advertiseAddress: "203.0.113.7:4433"
  nodeSelector: {kubernetes.io/os: linux, "node-role": "true"}
  tolerations:
    - {key: dedicated, operator: Equal, value: mesh, effect: NoSchedule}
    - operator: Exists
  resources:
    requests: {cpu: 250m, memory: 128Mi}
    limits: {memory: 1Gi, cpu: "1"}
quicService:
  annotations: {"service.beta.kubernetes.io/aws-load-balancer-eip-allocations": "eipalloc-1,eipalloc-2", "x": "yes", "note": "a: b #c", "empty": ""}
  loadBalancerIP: 203.0.113.7
  loadBalancerSourceRanges: ["198.51.100.0/24", "192.0.2.0/24"]
  nodePort: 31443
  externalIPs: ["198.51.100.7"]
  tcpHealth: true
dns: {serviceIP: 10.96.0.53}
grafana: {dashboard: true}
"#;

/// The output with what differs between two renders blanked: the injector's generated
/// certificates and the checksum of the Secret that holds them.
fn without_generated_keys(manifests: &str) -> String {
    manifests
        .lines()
        .map(|line| {
            let key = line.trim_start();
            let generated = [
                "ca.crt: ",
                "tls.crt: ",
                "tls.key: ",
                "caBundle: ",
                "checksum/injector: ",
            ]
            .iter()
            .any(|k| key.starts_with(k));
            match line.split_once(": ") {
                Some((name, _)) if generated => format!("{name}: GENERATED"),
                _ => line.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn strait_install_prints_what_helm_template_prints_for_the_same_values() -> Result<()> {
    let (helm, _) = match tools() {
        Ok(tools) => tools,
        Err(why) => {
            eprintln!("skipped: {why}");
            return Ok(());
        }
    };
    let dir = tempfile::tempdir()?;
    let values = dir.path().join("values.yaml");
    std::fs::write(&values, ALL_VALUES)?;
    let values = values.to_string_lossy().into_owned();
    let chart = chart();
    let strait = strait_tests::strait_bin();
    for (namespace, file, set) in [
        ("strait-system", false, ""),
        ("mesh", true, ""),
        ("mesh", true, "injector.enabled=false,quicService.cloud=gcp"),
        (
            "strait-system",
            true,
            "quicService.cloud=azure,quicService.type=NodePort,injector.failurePolicy=Ignore",
        ),
        (
            "strait-system",
            false,
            "quicService.cloud=aws,gateway.leaseDurationSeconds=30,coreDNS.stubDomain=false",
        ),
        ("strait-system", true, "quicService.type=ClusterIP"),
    ] {
        let mut helm_args = vec![
            "template",
            "strait",
            chart.to_str().context("chart path")?,
            "--include-crds",
            "--namespace",
            namespace,
            "--set",
            "cluster=east,trustDomain=t.example",
        ];
        let mut strait_args = vec![
            "install",
            "--namespace",
            namespace,
            "--cluster",
            "east",
            "--trust-domain",
            "t.example",
        ];
        if file {
            helm_args.extend(["-f", &values]);
            strait_args.extend(["-f", &values]);
        }
        if !set.is_empty() {
            helm_args.extend(["--set", set]);
            strait_args.extend(["--set", set]);
        }
        let by_helm = run(&helm, &helm_args).map_err(anyhow::Error::msg)?;
        let by_strait = run(strait, &strait_args).map_err(anyhow::Error::msg)?;
        let (by_helm, by_strait) = (
            without_generated_keys(&by_helm),
            without_generated_keys(&by_strait),
        );
        if by_helm != by_strait {
            let line = by_helm
                .lines()
                .zip(by_strait.lines())
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            anyhow::bail!(
                "{namespace} {file} {set}: strait install differs from helm template at line {}:\nhelm:   {:?}\nstrait: {:?}",
                line + 1,
                by_helm.lines().nth(line),
                by_strait.lines().nth(line)
            );
        }
        ensure!(by_strait.contains("kind: CustomResourceDefinition"));
    }

    // A bad value: the chart's own message, from either.
    let refused = run(
        strait,
        &[
            "install",
            "--cluster",
            "east",
            "--trust-domain",
            "t.example",
            "--set",
            "quicService.cloud=ibm",
        ],
    )
    .err()
    .unwrap_or_default();
    ensure!(
        refused.contains("service-quic.yaml")
            && refused.contains("quicService.cloud \"ibm\" is not one of"),
        "{refused}"
    );
    // Without CRDs, for clusters that have them.
    let skipped = run(
        strait,
        &[
            "install",
            "--cluster",
            "east",
            "--trust-domain",
            "t.example",
            "--skip-crds",
        ],
    )
    .map_err(anyhow::Error::msg)?;
    ensure!(
        !skipped.contains("kind: CustomResourceDefinition") && skipped.contains("kind: Deployment")
    );
    Ok(())
}

/// `strait check --pre`: its output and whether it passed.
fn check_pre(kubeconfig: &Path, more: &[&str]) -> Result<(bool, String)> {
    let output = Command::new(strait_tests::strait_bin())
        .args(["check", "--pre", "--kubeconfig"])
        .arg(kubeconfig)
        .args(more)
        .output()?;
    Ok((
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    ))
}

#[test]
fn check_pre_names_what_a_cluster_lacks_then_strait_install_applies_with_kubectl() -> Result<()> {
    let (_, kubectl) = match (tools(), binaries()) {
        (Ok(tools), Ok(_)) => tools,
        (Err(why), _) | (_, Err(why)) => {
            eprintln!("skipped: {why}");
            return Ok(());
        }
    };
    let dir = tempfile::tempdir()?;
    let plane = ControlPlane::start("west", dir.path())?;
    let runtime = tokio::runtime::Runtime::new()?;
    let client = runtime.block_on(plane.client())?;

    // An account with no rights: every right the install needs is named as lacking.
    let kubeconfig = plane.kubeconfig.to_string_lossy().into_owned();
    run(
        &kubectl,
        &["--kubeconfig", &kubeconfig, "create", "namespace", "tools"],
    )
    .map_err(anyhow::Error::msg)?;
    runtime.block_on(strait_tests::kube::service_account(
        &client,
        "tools",
        "installer",
    ))?;
    let limited = runtime.block_on(strait_tests::kube::account_kubeconfig(
        &plane,
        &client,
        "tools",
        "installer",
    ))?;
    let (passed, said) = check_pre(&limited, &[])?;
    ensure!(!passed, "{said}");
    for line in [
        "[ok] can reach the Kubernetes API (v1.20.2)",
        "[ok] is Kubernetes 1.20 or later",
        "[ok] serves discovery.k8s.io/v1beta1",
        "[fail] can create customresourcedefinitions.apiextensions.k8s.io cluster-wide",
        "[fail] can create deployments.apps in namespace strait-system",
        "[fail] can grant the gateway's rights: lacks get services, list services",
        "Status check results are [fail]",
    ] {
        ensure!(said.contains(line), "no {line:?} in:\n{said}");
    }

    // The admin, before the namespace and its Secret exist; an MCS CRD another project put in.
    let foreign =
        std::fs::read_to_string(chart().join("crds/serviceexports.multicluster.x-k8s.io.yaml"))?
            .replacen(
                "metadata:\n",
                "metadata:\n  labels:\n    app.kubernetes.io/name: othermesh\n",
                1,
            );
    let foreign_file = dir.path().join("foreign.yaml");
    std::fs::write(&foreign_file, foreign)?;
    run(
        &kubectl,
        &[
            "--kubeconfig",
            &kubeconfig,
            "apply",
            "-f",
            &foreign_file.to_string_lossy(),
        ],
    )
    .map_err(anyhow::Error::msg)?;
    let (passed, said) = check_pre(&plane.kubeconfig, &[])?;
    ensure!(!passed, "{said}");
    for line in [
        "[ok] can create customresourcedefinitions.apiextensions.k8s.io cluster-wide",
        "[ok] can grant the gateway's",
        "[warn] serviceexports.multicluster.x-k8s.io was installed by othermesh",
        "[ok] links.strait.dev is not installed yet",
        "[fail] namespace strait-system exists",
        "hint: kubectl create namespace strait-system",
    ] {
        ensure!(said.contains(line), "no {line:?} in:\n{said}");
    }

    // The namespace and the credentials `strait trust issue` writes: it passes, with the
    // warning, and the issuer's cluster is checked.
    let trust = dir.path().join("trust");
    let credentials = dir.path().join("credentials");
    let strait = strait_tests::strait_bin();
    run(
        strait,
        &[
            "trust",
            "init",
            "--trust-domain",
            "example.mesh",
            "--dir",
            &trust.to_string_lossy(),
        ],
    )
    .map_err(anyhow::Error::msg)?;
    run(
        strait,
        &[
            "trust",
            "issue",
            "--cluster",
            "west",
            "--trust",
            &trust.to_string_lossy(),
            "--dir",
            &credentials.to_string_lossy(),
        ],
    )
    .map_err(anyhow::Error::msg)?;
    run(
        &kubectl,
        &[
            "--kubeconfig",
            &kubeconfig,
            "create",
            "namespace",
            "strait-system",
        ],
    )
    .map_err(anyhow::Error::msg)?;
    let (passed, said) = check_pre(&plane.kubeconfig, &[])?;
    ensure!(
        !passed && said.contains("[fail] Secret strait-system/strait-cluster-credentials exists"),
        "{said}"
    );
    run(
        &kubectl,
        &[
            "--kubeconfig",
            &kubeconfig,
            "-n",
            "strait-system",
            "create",
            "secret",
            "generic",
            "strait-cluster-credentials",
            &format!("--from-file={}", credentials.display()),
        ],
    )
    .map_err(anyhow::Error::msg)?;
    let (passed, said) = check_pre(&plane.kubeconfig, &["--cluster", "west", "-o", "json"])?;
    ensure!(passed, "{said}");
    let report: serde_json::Value = serde_json::from_str(&said)?;
    ensure!(report["status"] == "warn", "{said}");
    let described = |status: &str| -> Vec<String> {
        report["checks"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["status"] == status)
            .map(|c| c["description"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    ensure!(described("warn").len() == 1, "{said}");
    ensure!(
        described("ok").iter().any(|d| d
            == "its issuer is cluster west's in trust domain example.mesh, chained to the bundle"),
        "{said}"
    );
    let (passed, said) = check_pre(&plane.kubeconfig, &["--cluster", "east"])?;
    ensure!(!passed && said.contains("not cluster east's"), "{said}");

    // Then `strait install | kubectl apply -f -`: every object is created.
    let manifests = run(
        strait,
        &[
            "install",
            "--cluster",
            "west",
            "--trust-domain",
            "example.mesh",
        ],
    )
    .map_err(anyhow::Error::msg)?;
    let file = dir.path().join("install.yaml");
    std::fs::write(&file, &manifests)?;
    let applied = run(
        &kubectl,
        &[
            "--kubeconfig",
            &kubeconfig,
            "apply",
            "-f",
            &file.to_string_lossy(),
        ],
    )
    .map_err(anyhow::Error::msg)?;
    ensure!(
        applied.lines().count() == manifests.matches("\nkind: ").count(),
        "not every object was applied:\n{applied}"
    );
    let deployment = runtime.block_on(
        Api::<Deployment>::namespaced(client.clone(), "strait-system").get("strait-gateway"),
    )?;
    ensure!(deployment.spec.and_then(|s| s.replicas) == Some(2));
    let (_, said) = check_pre(&plane.kubeconfig, &[])?;
    ensure!(
        said.contains("[ok] links.strait.dev is installed, by strait"),
        "{said}"
    );
    Ok(())
}
