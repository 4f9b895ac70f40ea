//! What a gateway may do in its cluster's API, and nothing more: a ClusterRole for what it
//! reads and writes across namespaces, a Role for what it keeps in its own namespace, bound
//! to its service account. `deploy/rbac.yaml` is what [`manifests`] gives for the default
//! namespace, and the Helm chart's RBAC templates are [`helm_templates`]; a test fails when
//! either differs, and another runs a gateway with exactly these rights against a real API
//! server. docs/kubernetes.md explains each rule.

use serde_json::{Value, json};
use strait_federation::policy::PolicyKind;

use super::crd::{POLICY_GROUP, policy_plural};

/// The name of the roles, their bindings and the gateway's service account.
pub const NAME: &str = "strait-gateway";

/// The rules of the ClusterRole: the catalog, the MCS API, the policy resources, workload
/// identity.
pub fn cluster_rules() -> Value {
    let policies: Vec<&str> = PolicyKind::ALL.into_iter().map(policy_plural).collect();
    let policy_status: Vec<String> = policies.iter().map(|p| format!("{p}/status")).collect();
    json!([
        {"apiGroups": [""], "resources": ["services"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
         "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
        {"apiGroups": ["multicluster.x-k8s.io"], "resources": ["serviceexports"],
         "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["multicluster.x-k8s.io"], "resources": ["serviceexports/status"],
         "verbs": ["patch"]},
        {"apiGroups": ["multicluster.x-k8s.io"], "resources": ["serviceimports"],
         "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
        {"apiGroups": ["multicluster.x-k8s.io"], "resources": ["serviceimports/status"],
         "verbs": ["patch"]},
        {"apiGroups": [POLICY_GROUP], "resources": policies,
         "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
        {"apiGroups": [POLICY_GROUP], "resources": policy_status, "verbs": ["patch"]},
        {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"],
         "verbs": ["create"]},
    ])
}

/// The rules of the Role in the gateway's namespace: Links and their Secrets, the durable
/// state, the Lease and each replica's own, and the label on the leading replica's pod.
pub fn namespace_rules() -> Value {
    json!([
        {"apiGroups": ["strait.dev"], "resources": ["links"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["strait.dev"], "resources": ["links/status"], "verbs": ["patch"]},
        {"apiGroups": [""], "resources": ["secrets"],
         "verbs": ["get", "list", "watch", "create", "patch"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
         "verbs": ["get", "list", "create", "update", "patch", "delete"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "patch"]},
    ])
}

/// One right the roles grant: `verb` on `resource` of API group `group`, cluster-wide or in
/// the gateway's namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Right {
    pub group: String,
    pub resource: String,
    pub verb: String,
    /// Granted by the Role, in the gateway's namespace; else by the ClusterRole.
    pub namespaced: bool,
}

impl std::fmt::Display for Right {
    /// As kubectl names it: `list services`, `patch links.strait.dev/status`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (resource, sub) = self
            .resource
            .split_once('/')
            .map_or((self.resource.as_str(), None), |(r, s)| (r, Some(s)));
        write!(f, "{} {resource}", self.verb)?;
        if !self.group.is_empty() {
            write!(f, ".{}", self.group)?;
        }
        if let Some(sub) = sub {
            write!(f, "/{sub}")?;
        }
        Ok(())
    }
}

/// Every right of [`cluster_rules`] and [`namespace_rules`], one per verb and resource.
pub fn rights() -> Vec<Right> {
    let mut rights = Vec::new();
    for (rules, namespaced) in [(cluster_rules(), false), (namespace_rules(), true)] {
        for rule in rules.as_array().into_iter().flatten() {
            let list = |key: &str| -> Vec<String> {
                rule[key]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            };
            for group in list("apiGroups") {
                for resource in list("resources") {
                    for verb in list("verbs") {
                        rights.push(Right {
                            group: group.clone(),
                            resource: resource.clone(),
                            verb,
                            namespaced,
                        });
                    }
                }
            }
        }
    }
    rights
}

/// The service account, the two roles and their bindings, for a gateway in `namespace`.
pub fn manifests(namespace: &str) -> Vec<Value> {
    let labels =
        json!({"app.kubernetes.io/name": "strait", "app.kubernetes.io/component": "gateway"});
    let subject = json!([{"kind": "ServiceAccount", "name": NAME, "namespace": namespace}]);
    vec![
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
               "metadata": {"name": NAME, "namespace": namespace, "labels": labels}}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
               "metadata": {"name": NAME, "labels": labels}, "rules": cluster_rules()}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": {"name": NAME, "labels": labels},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": NAME},
               "subjects": subject}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
               "metadata": {"name": NAME, "namespace": namespace, "labels": labels},
               "rules": namespace_rules()}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": NAME, "namespace": namespace, "labels": labels},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": NAME},
               "subjects": subject}),
    ]
}

/// The manifests as one YAML stream for `kubectl apply -f`.
pub fn to_yaml(namespace: &str) -> Result<String, serde_saphyr::SerializeError> {
    let mut out = String::from(
        "# Generated from gateway/src/kubernetes/rbac.rs: do not edit by hand\n# (STRAIT_WRITE_CRDS=1 cargo test -p strait-gateway rbac rewrites it).\n",
    );
    for (i, manifest) in manifests(namespace).iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&serde_saphyr::to_string(manifest)?);
    }
    Ok(out)
}

/// The chart's templates for these objects, one kind a file: the same objects and rules, in the
/// release's namespace, with the chart's labels.
pub fn helm_templates() -> Result<Vec<(&'static str, String)>, serde_saphyr::SerializeError> {
    let metadata = |namespaced: bool| {
        let namespace = if namespaced {
            "\n  namespace: {{ .Release.Namespace }}"
        } else {
            ""
        };
        format!(
            "metadata:\n  name: {NAME}{namespace}\n  labels:\n    {{{{- include \"strait.labels\" . | nindent 4 }}}}"
        )
    };
    let subjects = format!(
        "subjects:\n- kind: ServiceAccount\n  name: {NAME}\n  namespace: {{{{ .Release.Namespace }}}}"
    );
    let role_ref = |kind: &str| {
        format!("roleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: {kind}\n  name: {NAME}")
    };
    let cluster_rules = serde_saphyr::to_string(&cluster_rules())?;
    let namespace_rules = serde_saphyr::to_string(&namespace_rules())?;
    let header = "# Generated from gateway/src/kubernetes/rbac.rs: do not edit by hand\n# (STRAIT_WRITE_CRDS=1 cargo test -p strait-gateway rbac rewrites it).\n";
    let objects = [
        (
            "serviceaccount.yaml",
            format!("apiVersion: v1\nkind: ServiceAccount\n{}\n", metadata(true)),
        ),
        (
            "clusterrole.yaml",
            format!(
                "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\n{}\nrules:\n{cluster_rules}",
                metadata(false)
            ),
        ),
        (
            "clusterrolebinding.yaml",
            format!(
                "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\n{}\n{}\n{subjects}\n",
                metadata(false),
                role_ref("ClusterRole")
            ),
        ),
        (
            "role.yaml",
            format!(
                "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\n{}\nrules:\n{namespace_rules}",
                metadata(true)
            ),
        ),
        (
            "rolebinding.yaml",
            format!(
                "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\n{}\n{}\n{subjects}\n",
                metadata(true),
                role_ref("Role")
            ),
        ),
    ];
    Ok(objects
        .into_iter()
        .map(|(file, text)| (file, format!("{header}{text}")))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rights_are_named_as_kubectl_names_them_one_per_verb() {
        let rights = rights();
        let named: Vec<String> = rights.iter().map(ToString::to_string).collect();
        for wanted in [
            "list services",
            "patch serviceimports.multicluster.x-k8s.io/status",
            "create tokenreviews.authentication.k8s.io",
            "patch links.strait.dev/status",
        ] {
            assert!(named.iter().any(|n| n == wanted), "{wanted} in {named:?}");
        }
        assert!(
            rights
                .iter()
                .any(|r| r.namespaced && r.resource == "leases")
        );
        assert!(
            !rights
                .iter()
                .any(|r| r.namespaced && r.resource == "services")
        );
    }

    #[test]
    fn the_charts_rbac_is_the_one_the_rules_generate() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/helm/strait/templates");
        for (file, wanted) in helm_templates().unwrap() {
            let path = dir.join(file);
            if std::env::var_os("STRAIT_WRITE_CRDS").is_some() {
                std::fs::write(&path, &wanted).unwrap();
            }
            assert_eq!(
                std::fs::read_to_string(&path).ok().as_deref(),
                Some(wanted.as_str()),
                "the chart's templates/{file} differs from the rules: run STRAIT_WRITE_CRDS=1 cargo test -p strait-gateway rbac"
            );
        }
    }

    #[test]
    fn deploy_rbac_is_the_one_the_rules_generate() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/rbac.yaml");
        let wanted = to_yaml("strait-system").unwrap();
        if std::env::var_os("STRAIT_WRITE_CRDS").is_some() {
            std::fs::write(&path, &wanted).unwrap();
        }
        assert_eq!(
            std::fs::read_to_string(&path).ok().as_deref(),
            Some(wanted.as_str()),
            "deploy/rbac.yaml differs from the rules: run STRAIT_WRITE_CRDS=1 cargo test -p strait-gateway rbac"
        );
    }
}
