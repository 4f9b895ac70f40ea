//! Adding strait's sidecar to a pod: the `strait-init` init container that redirects the pod's
//! TCP (`strait sidecar init`) and the `strait-proxy` container (`strait sidecar run` with the
//! pod's projected service-account token). One function serves every kind that holds a pod
//! template, on untyped objects so that nothing it does not know is lost; `strait inject` runs it
//! on YAML, and the admission webhook will run the same function on the pods it is sent.

use serde_json::{Value, json};

/// The sidecar's container.
pub const PROXY: &str = "strait-proxy";
/// The init container that sets the pod's iptables rules.
pub const INIT: &str = "strait-init";
/// The annotation (on a pod or its template) or namespace label that asks for a sidecar
/// (`enabled`) or refuses one (`disabled`).
pub const INJECT: &str = "strait.dev/inject";
/// The annotation that switches a pod's access log on (`"true"`).
pub const ACCESS_LOG: &str = "strait.dev/access-log";
/// The annotations that set a sidecar's limits and its threads (docs/operations.md), each the
/// flag of the same name: `strait.dev/max-header-bytes: "16384"` gives `--max-header-bytes 16384`.
pub const LIMIT_ANNOTATIONS: [&str; 7] = [
    "strait.dev/threads",
    "strait.dev/max-inbound-connections",
    "strait.dev/max-outbound-connections",
    "strait.dev/max-admin-connections",
    "strait.dev/max-header-bytes",
    "strait.dev/max-replay-body-bytes",
    "strait.dev/max-mirrors-in-flight",
];
/// The annotation that declares the services a pod's workload calls, the sidecar's `--watch`:
/// `strait.dev/watch: "shop,pay/ledger"` (namespaces, or namespace/service), comma-separated.
pub const WATCH: &str = "strait.dev/watch";
/// The uid the sidecar runs as; the pod's rules let its traffic pass.
pub const PROXY_UID: i64 = 2102;
/// The sidecar's ports, which the app's may not use.
pub const OUTBOUND_PORT: u16 = 15001;
pub const INBOUND_PORT: u16 = 15006;
pub const ADMIN_PORT: u16 = 15020;
/// Where the projected token is mounted in the sidecar.
const TOKEN_DIR: &str = "/var/run/strait/token";
/// The ConfigMap (key `bundle.pem`, in the pod's namespace) an injected sidecar reads the trust
/// bundle from when the injection was not given one.
pub const BUNDLE_CONFIG_MAP: &str = "strait-trust-bundle";
/// The audience of the projected token, as the gateway's TokenReview expects it.
pub const AUDIENCE: &str = "strait";

/// What an injected sidecar is given.
#[derive(Debug, Clone, PartialEq)]
pub struct Injection {
    /// The strait image.
    pub image: String,
    /// The gateway's workload API, as the pod dials it (`host:port`).
    pub gateway: String,
    /// The trust bundle (PEM), given to the sidecar in its environment; `None`: the sidecar
    /// reads it from ConfigMap [`BUNDLE_CONFIG_MAP`] in the pod's namespace.
    pub bundle: Option<String>,
}

/// What happened to one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Injected,
    /// Left as it was, and why.
    Skipped(String),
}

/// A pod the sidecar cannot be added to, with the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InjectError {
    pub field: String,
    pub message: String,
}

fn error(field: impl Into<String>, message: impl Into<String>) -> InjectError {
    InjectError {
        field: field.into(),
        message: message.into(),
    }
}

/// Where the pod template of an object of `kind` is, as JSON pointers to its metadata and spec;
/// `None` for kinds that hold no pod.
fn template(kind: &str) -> Option<(&'static str, &'static str)> {
    match kind {
        "Pod" => Some(("/metadata", "/spec")),
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "Job"
        | "ReplicationController" => Some(("/spec/template/metadata", "/spec/template/spec")),
        "CronJob" => Some((
            "/spec/jobTemplate/spec/template/metadata",
            "/spec/jobTemplate/spec/template/spec",
        )),
        _ => None,
    }
}

/// Adds the sidecar to every pod `object` holds (a `List`'s items one by one); kinds without
/// pods are left alone. One outcome per pod, in order.
pub fn inject_object(
    object: &mut Value,
    injection: &Injection,
) -> Result<Vec<Outcome>, InjectError> {
    let kind = object["kind"].as_str().unwrap_or_default().to_owned();
    if kind.ends_with("List") {
        let mut outcomes = Vec::new();
        if let Some(items) = object["items"].as_array_mut() {
            for (i, item) in items.iter_mut().enumerate() {
                outcomes.extend(
                    inject_object(item, injection)
                        .map_err(|e| error(format!("items[{i}].{}", e.field), e.message))?,
                );
            }
        }
        return Ok(outcomes);
    }
    let Some((metadata, spec)) = template(&kind) else {
        return Ok(Vec::new());
    };
    let annotations = object
        .pointer(metadata)
        .and_then(|m| m.get("annotations"))
        .cloned()
        .unwrap_or(Value::Null);
    annotation_flags(&annotations).map_err(|e| {
        let at = metadata.trim_start_matches('/').replace('/', ".");
        error(format!("{at}.{}", e.field), e.message)
    })?;
    let workload = workload_name(
        &kind,
        object["metadata"]["name"].as_str().unwrap_or_default(),
    );
    let prefix = spec.trim_start_matches('/').replace('/', ".");
    let spec = object
        .pointer_mut(spec)
        .ok_or_else(|| error(prefix.clone(), "missing: no pod spec to add the sidecar to"))?;
    let outcome = inject_pod(&annotations, spec, injection, workload.as_deref())
        .map_err(|e| error(format!("{prefix}.{}", e.field), e.message))?;
    if outcome == Outcome::Injected
        && let Some(metadata) = object.pointer_mut(metadata)
        && let Some(metadata) = metadata.as_object_mut()
    {
        let annotations = metadata.entry("annotations").or_insert_with(|| json!({}));
        if let Some(annotations) = annotations.as_object_mut() {
            annotations.insert(INJECT.into(), "enabled".into());
        }
    }
    Ok(vec![outcome])
}

/// How `strait stat deploy` names the workload of an object: `deploy/web`, `statefulset/db`.
fn workload_name(kind: &str, name: &str) -> Option<String> {
    let short = match kind {
        "Deployment" => "deploy",
        "StatefulSet" => "statefulset",
        "DaemonSet" => "daemonset",
        "ReplicaSet" => "replicaset",
        "ReplicationController" => "rc",
        "Job" => "job",
        "CronJob" => "cronjob",
        "Pod" => "pod",
        _ => return None,
    };
    (!name.is_empty()).then(|| format!("{short}/{name}"))
}

/// The workload a pod being created belongs to, from its controller: a ReplicaSet made by a
/// Deployment (its name is the Deployment's plus the pod template's hash) is the Deployment.
pub fn workload_of_pod(pod: &Value) -> Option<String> {
    let metadata = &pod["metadata"];
    let owner = metadata["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|o| o["controller"] == true);
    let Some(owner) = owner else {
        let name = metadata["name"]
            .as_str()
            .filter(|n| !n.is_empty())
            .or_else(|| metadata["generateName"].as_str())?;
        return workload_name("Pod", name.trim_end_matches('-'));
    };
    let kind = owner["kind"].as_str()?;
    let name = owner["name"].as_str()?;
    let hash = metadata["labels"]["pod-template-hash"].as_str();
    match (kind, hash.and_then(|h| name.strip_suffix(&format!("-{h}")))) {
        ("ReplicaSet", Some(deployment)) => workload_name("Deployment", deployment),
        _ => workload_name(kind, name),
    }
}

/// The app protocol of a container port, from its name as Kubernetes users name them
/// (`http`, `http-web`, `grpc`, `http2`, `h2c`); anything else is opaque TCP.
fn protocol_of(name: &str) -> &'static str {
    let head = name.split('-').next().unwrap_or_default();
    match head {
        "http" => "http",
        "http2" | "h2c" => "http2",
        "grpc" => "grpc",
        _ => "tcp",
    }
}

/// The probes the kubelet sends to the app, by field and by the name the sidecar serves them at.
const PROBES: [(&str, &str); 3] = [
    ("readinessProbe", "readiness"),
    ("livenessProbe", "liveness"),
    ("startupProbe", "startup"),
];

/// Moves the app containers' HTTP and TCP probes to the sidecar's admin port
/// (`/app-health/<container>/<kind>`), which runs them on the pod's loopback: the kubelet's
/// plain connections then never meet the inbound redirect, and the app's ports all go through
/// the sidecar. Returns the sidecar's `--app-probe` values and the ports of probes it could not
/// move (gRPC, HTTPS, another host), which the redirect must then leave alone.
fn move_probes(containers: &mut [Value]) -> (Vec<String>, Vec<u16>) {
    let mut moved = Vec::new();
    let mut left = Vec::new();
    for container in containers.iter_mut() {
        let name = container["name"].as_str().unwrap_or_default().to_owned();
        let ports = container["ports"].clone();
        let named = |port: &Value| -> Option<u16> {
            let number = port.as_u64().or_else(|| {
                ports
                    .as_array()?
                    .iter()
                    .find(|p| p["name"] == *port)
                    .and_then(|p| p["containerPort"].as_u64())
            })?;
            u16::try_from(number).ok()
        };
        for (field, kind) in PROBES {
            let probe = &mut container[field];
            if !probe.is_object() {
                continue;
            }
            let http = &probe["httpGet"];
            let target = if http.is_object() {
                let plain = http["scheme"]
                    .as_str()
                    .is_none_or(|s| s.eq_ignore_ascii_case("HTTP"))
                    && http["host"].is_null();
                named(&http["port"]).map(|port| {
                    let path = http["path"].as_str().unwrap_or("/");
                    let path = path.strip_prefix('/').unwrap_or(path);
                    (port, plain.then(|| format!("http:{port}/{path}")))
                })
            } else if probe["tcpSocket"].is_object() {
                let tcp = &probe["tcpSocket"];
                named(&tcp["port"])
                    .map(|port| (port, tcp["host"].is_null().then(|| format!("tcp:{port}"))))
            } else {
                named(&probe["grpc"]["port"]).map(|port| (port, None))
            };
            match target {
                Some((_, Some(spec))) if !name.is_empty() => {
                    if let Some(handler) = probe.as_object_mut() {
                        handler.remove("httpGet");
                        handler.remove("tcpSocket");
                        handler.insert(
                            "httpGet".into(),
                            json!({"path": format!("/app-health/{name}/{kind}"), "port": ADMIN_PORT}),
                        );
                    }
                    moved.push(format!("{name}/{kind}={spec}"));
                }
                Some((port, _)) => left.push(port),
                None => {}
            }
        }
    }
    (moved, left)
}

/// The sidecar flags the limit and watch annotations ask for. Checked before the pod is
/// admitted, so that a bad value refuses the pod by its name rather than crash-loop its
/// sidecar; the error's field is `annotations[KEY]`.
fn annotation_flags(annotations: &Value) -> Result<Vec<String>, InjectError> {
    let mut flags = Vec::new();
    if let Some(value) = annotations.get(WATCH) {
        let bad = |message: String| error(format!("annotations[{WATCH}]"), message);
        let text = value
            .as_str()
            .ok_or_else(|| bad(format!("{value} is not a string")))?;
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (namespace, service) = match part.split_once('/') {
                Some((namespace, service)) => (namespace, Some(service)),
                None => (part, None),
            };
            let checked = strait_federation::identity::Namespace::new(namespace)
                .map(|_| ())
                .and_then(|()| {
                    service.map_or(Ok(()), |s| {
                        strait_federation::identity::ServiceName::new(s).map(|_| ())
                    })
                });
            checked.map_err(|e| {
                bad(format!(
                    "{part:?}: expected NAMESPACE or NAMESPACE/SERVICE ({e})"
                ))
            })?;
            flags.extend(["--watch".to_owned(), part.to_owned()]);
        }
    }
    for key in LIMIT_ANNOTATIONS {
        let Some(value) = annotations.get(key) else {
            continue;
        };
        let number = value
            .as_str()
            .and_then(|text| text.parse::<u32>().ok())
            .ok_or_else(|| {
                error(
                    format!("annotations[{key}]"),
                    format!("{value} is not a whole number (0 to 4294967295)"),
                )
            })?;
        let flag = key.trim_start_matches("strait.dev/");
        flags.extend([format!("--{flag}"), number.to_string()]);
    }
    Ok(flags)
}

/// Adds the sidecar to one pod spec, unless its annotations refuse it, it shares the node's
/// network, or it has one already.
pub fn inject_pod(
    annotations: &Value,
    spec: &mut Value,
    injection: &Injection,
    workload: Option<&str>,
) -> Result<Outcome, InjectError> {
    if annotations[INJECT] == "disabled" {
        return Ok(Outcome::Skipped(format!("annotated {INJECT}: disabled")));
    }
    if spec["hostNetwork"] == true {
        return Ok(Outcome::Skipped(
            "hostNetwork: the pod shares the node's network".into(),
        ));
    }
    let containers = spec["containers"]
        .as_array()
        .ok_or_else(|| error("containers", "missing or not a list"))?;
    if containers.iter().any(|c| c["name"] == PROXY) {
        return Ok(Outcome::Skipped("already injected".into()));
    }
    let (app_probes, mut probes) = match spec["containers"].as_array_mut() {
        Some(containers) => move_probes(containers),
        None => (Vec::new(), Vec::new()),
    };
    let containers = spec["containers"]
        .as_array()
        .ok_or_else(|| error("containers", "missing or not a list"))?;
    let mut app_ports: Vec<(u16, &'static str)> = Vec::new();
    for (i, container) in containers.iter().enumerate() {
        for (j, port) in container["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let field = format!("containers[{i}].ports[{j}]");
            if port["protocol"].as_str().is_some_and(|p| p != "TCP") {
                continue;
            }
            let number = port["containerPort"]
                .as_u64()
                .and_then(|n| u16::try_from(n).ok())
                .filter(|n| *n != 0)
                .ok_or_else(|| {
                    error(
                        format!("{field}.containerPort"),
                        "missing or not a port (1-65535)",
                    )
                })?;
            if [OUTBOUND_PORT, INBOUND_PORT, ADMIN_PORT].contains(&number) {
                return Err(error(
                    format!("{field}.containerPort"),
                    format!(
                        "{number} is one of the sidecar's ports ({OUTBOUND_PORT}, {INBOUND_PORT}, {ADMIN_PORT}): move the app, or annotate the pod {INJECT}: disabled"
                    ),
                ));
            }
            if !app_ports.iter().any(|(p, _)| *p == number) {
                app_ports.push((
                    number,
                    protocol_of(port["name"].as_str().unwrap_or_default()),
                ));
            }
        }
    }
    probes.sort_unstable();
    probes.dedup();
    let mut skip_inbound = vec![ADMIN_PORT];
    skip_inbound.extend(probes.iter().copied());
    let list = |ports: &[u16]| {
        ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    let inbound: Vec<u16> = app_ports
        .iter()
        .map(|(p, _)| *p)
        .filter(|p| !probes.contains(p))
        .collect();
    let mut init_args = vec![
        "sidecar".to_owned(),
        "init".into(),
        "--proxy-uid".into(),
        PROXY_UID.to_string(),
        "--outbound-port".into(),
        OUTBOUND_PORT.to_string(),
        "--inbound-port".into(),
        INBOUND_PORT.to_string(),
        "--skip-inbound-ports".into(),
        list(&skip_inbound),
    ];
    if !inbound.is_empty() {
        init_args.extend(["--inbound-ports".into(), list(&inbound)]);
    } else {
        // Nothing declared to serve: nothing inbound goes to the sidecar.
        init_args.extend(["--inbound-ports".into(), "none".into()]);
    }
    let init = json!({
        "name": INIT,
        "image": injection.image,
        "args": init_args,
        "securityContext": {
            "runAsUser": 0,
            "runAsNonRoot": false,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
        },
        "resources": {"requests": {"cpu": "10m", "memory": "10Mi"}, "limits": {"memory": "32Mi"}},
    });
    let mut proxy_args = vec![
        "sidecar".to_owned(),
        "run".into(),
        "--gateway".into(),
        injection.gateway.clone(),
        "--token-file".into(),
        format!("{TOKEN_DIR}/token"),
        "--inbound-addr".into(),
        format!("0.0.0.0:{INBOUND_PORT}"),
        "--transparent-addr".into(),
        format!("127.0.0.1:{OUTBOUND_PORT}"),
        "--admin-addr".into(),
        format!("0.0.0.0:{ADMIN_PORT}"),
    ];
    for (port, protocol) in &app_ports {
        proxy_args.extend(["--app-port".into(), format!("{port}/{protocol}")]);
    }
    for probe in app_probes {
        proxy_args.extend(["--app-probe".into(), probe]);
    }
    if let Some(workload) = workload {
        proxy_args.extend(["--workload".into(), workload.to_owned()]);
    }
    if annotations[ACCESS_LOG] == "true" {
        proxy_args.push("--access-log".into());
    }
    proxy_args.extend(
        annotation_flags(annotations)
            .map_err(|e| error(format!("metadata.{}", e.field), e.message))?,
    );
    let proxy = json!({
        "name": PROXY,
        "image": injection.image,
        "args": proxy_args,
        "env": [match &injection.bundle {
            Some(pem) => json!({"name": "STRAIT_TRUST_BUNDLE", "value": pem}),
            None => json!({"name": "STRAIT_TRUST_BUNDLE", "valueFrom": {"configMapKeyRef": {
                "name": BUNDLE_CONFIG_MAP, "key": "bundle.pem",
            }}}),
        }],
        "ports": [{"name": "strait-admin", "containerPort": ADMIN_PORT, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": ADMIN_PORT}, "periodSeconds": 5},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": ADMIN_PORT}, "periodSeconds": 10},
        "resources": {"requests": {"cpu": "10m", "memory": "20Mi"}, "limits": {"memory": "128Mi"}},
        "securityContext": {
            "runAsUser": PROXY_UID,
            "runAsNonRoot": true,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "strait-token", "mountPath": TOKEN_DIR, "readOnly": true}],
    });
    let token = json!({
        "name": "strait-token",
        "projected": {"sources": [{"serviceAccountToken": {
            "audience": AUDIENCE, "expirationSeconds": 3600, "path": "token",
        }}]},
    });
    let spec = spec
        .as_object_mut()
        .ok_or_else(|| error("", "not an object"))?;
    // The sidecar first, so the app starts once it is there (Kubernetes starts containers in
    // order); the init container last, after the app's own.
    push(spec, "containers", proxy, true)?;
    push(spec, "initContainers", init, false)?;
    push(spec, "volumes", token, false)?;
    Ok(Outcome::Injected)
}

/// Adds `item` to the list `field` of `spec` (made when absent), first or last.
fn push(
    spec: &mut serde_json::Map<String, Value>,
    field: &str,
    item: Value,
    first: bool,
) -> Result<(), InjectError> {
    let list = spec
        .entry(field)
        .or_insert_with(|| Value::Array(Vec::new()));
    if list.is_null() {
        *list = Value::Array(Vec::new());
    }
    let list = list
        .as_array_mut()
        .ok_or_else(|| error(field, "not a list"))?;
    if first {
        list.insert(0, item);
    } else {
        list.push(item);
    }
    Ok(())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// What the tests inject with (the webhook's too).
    pub(in crate::kubernetes) fn injection() -> Injection {
        Injection {
            image: "strait:0.1.0".into(),
            gateway: "strait-gateway.strait-system.svc:4434".into(),
            bundle: Some("-----BEGIN CERTIFICATE-----\n...\n".into()),
        }
    }

    fn deployment() -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "api", "namespace": "shop"},
            "spec": {"replicas": 2, "template": {
                "metadata": {"labels": {"app": "api"}},
                "spec": {"containers": [{
                    "name": "api", "image": "api:1",
                    "ports": [{"name": "http", "containerPort": 8080},
                              {"name": "grpc-admin", "containerPort": 9090},
                              {"name": "metrics", "containerPort": 9100},
                              {"containerPort": 53, "protocol": "UDP"}],
                    "readinessProbe": {"httpGet": {"path": "/ready", "port": "metrics"}},
                }]},
            }},
        })
    }

    fn container<'a>(object: &'a Value, name: &str) -> &'a Value {
        let spec = &object["spec"]["template"]["spec"];
        ["containers", "initContainers"]
            .iter()
            .flat_map(|list| spec[*list].as_array().into_iter().flatten())
            .find(|c| c["name"] == name)
            .unwrap()
    }

    fn args(container: &Value) -> String {
        container["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn a_deployment_gets_the_proxy_its_init_container_and_the_projected_token() {
        let mut object = deployment();
        let outcomes = inject_object(&mut object, &injection()).unwrap();
        assert_eq!(outcomes, [Outcome::Injected]);
        let proxy = container(&object, PROXY);
        assert_eq!(
            args(proxy),
            "sidecar run --gateway strait-gateway.strait-system.svc:4434 --token-file /var/run/strait/token/token --inbound-addr 0.0.0.0:15006 --transparent-addr 127.0.0.1:15001 --admin-addr 0.0.0.0:15020 --app-port 8080/http --app-port 9090/grpc --app-port 9100/tcp --app-probe api/readiness=http:9100/ready --workload deploy/api"
        );
        // The app's probe goes to the sidecar, which runs it on the pod's loopback.
        assert_eq!(
            container(&object, "api")["readinessProbe"]["httpGet"],
            json!({"path": "/app-health/api/readiness", "port": ADMIN_PORT})
        );
        assert_eq!(proxy["securityContext"]["runAsUser"], PROXY_UID);
        assert_eq!(proxy["env"][0]["name"], "STRAIT_TRUST_BUNDLE");
        // Every TCP port of the app goes through the sidecar; UDP is not the sidecar's.
        assert_eq!(
            args(container(&object, INIT)),
            "sidecar init --proxy-uid 2102 --outbound-port 15001 --inbound-port 15006 --skip-inbound-ports 15020 --inbound-ports 8080,9090,9100"
        );
        let spec = &object["spec"]["template"]["spec"];
        assert_eq!(
            spec["containers"][0]["name"], PROXY,
            "the proxy starts first"
        );
        assert_eq!(
            spec["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"]["audience"],
            AUDIENCE
        );
        assert_eq!(
            object["spec"]["template"]["metadata"]["annotations"][INJECT],
            "enabled"
        );
        // Everything it did not touch is as it was.
        assert_eq!(object["spec"]["replicas"], 2);
        assert_eq!(spec["containers"][1]["image"], "api:1");
    }

    #[test]
    fn a_pod_is_named_by_its_controller_and_an_annotation_switches_its_access_log_on() {
        let pod = |owner: Value, hash: Option<&str>| {
            json!({"metadata": {"name": "web-5d9c7f8b4c-x2x9z", "ownerReferences": [owner],
                "labels": {"pod-template-hash": hash}}})
        };
        let replica_set =
            json!({"kind": "ReplicaSet", "name": "web-5d9c7f8b4c", "controller": true});
        assert_eq!(
            workload_of_pod(&pod(replica_set.clone(), Some("5d9c7f8b4c"))).as_deref(),
            Some("deploy/web")
        );
        // A ReplicaSet of its own (no template hash in its name) is itself.
        assert_eq!(
            workload_of_pod(&pod(replica_set, None)).as_deref(),
            Some("replicaset/web-5d9c7f8b4c")
        );
        let stateful = json!({"kind": "StatefulSet", "name": "db", "controller": true});
        assert_eq!(
            workload_of_pod(&pod(stateful, None)).as_deref(),
            Some("statefulset/db")
        );
        let bare = json!({"metadata": {"generateName": "job-"}});
        assert_eq!(workload_of_pod(&bare).as_deref(), Some("pod/job"));

        let mut object = deployment();
        object["spec"]["template"]["metadata"]["annotations"][ACCESS_LOG] = "true".into();
        inject_object(&mut object, &injection()).unwrap();
        assert!(args(container(&object, PROXY)).ends_with("--workload deploy/api --access-log"));
    }

    #[test]
    fn limit_annotations_become_the_sidecars_flags_and_a_bad_one_refuses_the_pod_by_name() {
        let mut object = deployment();
        let annotations = &mut object["spec"]["template"]["metadata"]["annotations"];
        annotations["strait.dev/max-header-bytes"] = "16384".into();
        annotations["strait.dev/max-outbound-connections"] = "500".into();
        inject_object(&mut object, &injection()).unwrap();
        assert!(
            args(container(&object, PROXY))
                .ends_with("--max-outbound-connections 500 --max-header-bytes 16384"),
            "{}",
            args(container(&object, PROXY))
        );
        let mut object = deployment();
        object["spec"]["template"]["metadata"]["annotations"]["strait.dev/max-header-bytes"] =
            "64k".into();
        let refused = inject_object(&mut object, &injection()).unwrap_err();
        assert_eq!(
            refused.to_string(),
            r#"spec.template.metadata.annotations[strait.dev/max-header-bytes]: "64k" is not a whole number (0 to 4294967295)"#
        );
    }

    #[test]
    fn a_watch_annotation_declares_the_sidecars_services_and_a_bad_name_refuses_the_pod() {
        let mut object = deployment();
        object["spec"]["template"]["metadata"]["annotations"][WATCH] = "shop, pay/ledger".into();
        inject_object(&mut object, &injection()).unwrap();
        assert!(
            args(container(&object, PROXY)).ends_with("--watch shop --watch pay/ledger"),
            "{}",
            args(container(&object, PROXY))
        );
        let mut object = deployment();
        object["spec"]["template"]["metadata"]["annotations"][WATCH] = "shop/Ledger".into();
        let refused = inject_object(&mut object, &injection())
            .unwrap_err()
            .to_string();
        assert!(
            refused.starts_with(
                r#"spec.template.metadata.annotations[strait.dev/watch]: "shop/Ledger": expected NAMESPACE or NAMESPACE/SERVICE"#
            ),
            "{refused}"
        );
    }

    #[test]
    fn tcp_probes_move_to_the_sidecar_and_probes_it_cannot_run_keep_their_port_out_of_the_redirect()
    {
        let mut pod = json!({"kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{
            "name": "app", "image": "app:1",
            "ports": [{"name": "http", "containerPort": 8080}, {"name": "grpc", "containerPort": 9090},
                      {"name": "tls", "containerPort": 8443}],
            "livenessProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 7},
            "readinessProbe": {"grpc": {"port": 9090}},
            "startupProbe": {"httpGet": {"port": 8443, "scheme": "HTTPS", "path": "/up"}},
        }]}});
        inject_object(&mut pod, &injection()).unwrap();
        let app = &pod["spec"]["containers"][1];
        assert_eq!(
            app["livenessProbe"],
            json!({"httpGet": {"path": "/app-health/app/liveness", "port": ADMIN_PORT}, "periodSeconds": 7})
        );
        assert_eq!(app["readinessProbe"], json!({"grpc": {"port": 9090}}));
        assert_eq!(app["startupProbe"]["httpGet"]["scheme"], "HTTPS");
        let proxy = args(&pod["spec"]["containers"][0]);
        assert!(
            proxy.ends_with("--app-probe app/liveness=tcp:8080 --workload pod/p"),
            "{proxy}"
        );
        let init = args(&pod["spec"]["initContainers"][0]);
        assert!(
            init.ends_with("--skip-inbound-ports 15020,8443,9090 --inbound-ports 8080"),
            "{init}"
        );
    }

    #[test]
    fn without_a_bundle_the_sidecar_reads_it_from_the_namespaces_config_map() {
        let mut object = deployment();
        let injection = Injection {
            bundle: None,
            ..injection()
        };
        inject_object(&mut object, &injection).unwrap();
        let env = &container(&object, PROXY)["env"][0];
        assert_eq!(env["name"], "STRAIT_TRUST_BUNDLE");
        assert_eq!(
            env["valueFrom"]["configMapKeyRef"]["name"],
            BUNDLE_CONFIG_MAP
        );
        assert_eq!(env["valueFrom"]["configMapKeyRef"]["key"], "bundle.pem");
        assert!(env["value"].is_null());
    }

    #[test]
    fn pods_that_refuse_share_the_node_or_have_one_already_are_left_alone() {
        let mut disabled = json!({"kind": "Pod", "metadata": {"annotations": {INJECT: "disabled"}},
                                  "spec": {"containers": [{"name": "a"}]}});
        let before = disabled.clone();
        let outcomes = inject_object(&mut disabled, &injection()).unwrap();
        assert!(matches!(&outcomes[..], [Outcome::Skipped(why)] if why.contains("disabled")));
        assert_eq!(disabled, before);
        let mut host =
            json!({"kind": "Pod", "spec": {"hostNetwork": true, "containers": [{"name": "a"}]}});
        assert!(
            matches!(&inject_object(&mut host, &injection()).unwrap()[..],
            [Outcome::Skipped(why)] if why.contains("hostNetwork"))
        );
        let mut twice = json!({"kind": "Pod", "spec": {"containers": [{"name": "a"}]}});
        inject_object(&mut twice, &injection()).unwrap();
        let once = twice.clone();
        assert!(
            matches!(&inject_object(&mut twice, &injection()).unwrap()[..],
            [Outcome::Skipped(why)] if why == "already injected")
        );
        assert_eq!(twice, once);
        // Kinds without pods pass through untouched.
        let mut service = json!({"kind": "Service", "spec": {"ports": [{"port": 80}]}});
        assert!(
            inject_object(&mut service, &injection())
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn a_port_the_sidecar_needs_or_a_broken_spec_is_refused_naming_the_field() {
        let mut clash = json!({"kind": "Deployment", "spec": {"template": {"spec": {"containers": [
            {"name": "a", "ports": [{"containerPort": 80}]},
            {"name": "b", "ports": [{"containerPort": 15006}]}]}}}});
        let e = inject_object(&mut clash, &injection()).unwrap_err();
        assert_eq!(
            e.field,
            "spec.template.spec.containers[1].ports[0].containerPort"
        );
        assert!(
            e.message.contains("15006 is one of the sidecar's ports"),
            "{e}"
        );
        let mut broken = json!({"kind": "List", "items": [
            {"kind": "Pod", "spec": {"containers": [{"name": "a"}]}},
            {"kind": "Pod", "spec": {"containers": "nope"}}]});
        let e = inject_object(&mut broken, &injection()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "items[1].spec.containers: missing or not a list"
        );
    }
}
