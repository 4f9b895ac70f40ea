//! `strait install`: the manifests of the Helm chart `deploy/helm/strait`, rendered from the
//! chart itself (built into the binary) with the same values and in the same order and layout
//! as `helm template strait deploy/helm/strait --namespace NS --include-crds`, so that
//! `strait install | kubectl apply -f -` and a Helm release install the same objects. The chart
//! stays the one source: this module knows no object of it.

mod functions;
mod render;
mod template;
mod value;
mod yaml;

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context as _, Result, anyhow, bail};
use clap::Args;

use render::{Engine, Value};

/// The chart's files, by their path in the chart (`build.rs` lists them).
static CHART: &[(&str, &str)] = include!(concat!(env!("OUT_DIR"), "/chart_files.rs"));

/// The release name the manifests carry (`app.kubernetes.io/instance`), as in the docs'
/// `helm install strait ...`.
const RELEASE: &str = "strait";

#[derive(Args)]
pub struct InstallArgs {
    /// This cluster's name in the mesh (the chart's `cluster` value).
    #[arg(long)]
    cluster: Option<String>,
    /// The mesh's trust domain (`trustDomain`); default: the current context's.
    #[arg(long)]
    trust_domain: Option<String>,
    /// The namespace strait is installed in.
    #[arg(short, long, default_value = "strait-system")]
    namespace: String,
    /// A values file, as `helm install -f` takes it; may be repeated (later files win).
    #[arg(short = 'f', long = "values")]
    values: Vec<PathBuf>,
    /// One value, as `helm install --set` takes it (`gateway.replicas=3`, `a=x,b=y`); may be
    /// repeated. Wins over files, --cluster and --trust-domain.
    #[arg(long = "set")]
    set: Vec<String>,
    /// Leave the CustomResourceDefinitions out (they are installed already).
    #[arg(long)]
    skip_crds: bool,
}

/// Runs `strait install`: the manifests on standard output.
pub fn run(context: Option<&str>, args: InstallArgs) -> Result<()> {
    let mut values = chart_values()?;
    for path in &args.values {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the values file {}", path.display()))?;
        let more =
            parse_values(&text).with_context(|| format!("values file {}", path.display()))?;
        merge(&mut values, &more);
    }
    let trust_domain = args.trust_domain.clone().or_else(|| {
        crate::context::load()
            .ok()
            .and_then(|(path, contexts)| contexts.select(context, &path).ok())
            .map(|c| c.trust_domain.to_string())
    });
    if let Some(cluster) = &args.cluster {
        set_path(&mut values, "cluster", Value::string(cluster))?;
    }
    if let Some(domain) = trust_domain {
        set_path(&mut values, "trustDomain", Value::string(domain))?;
    }
    for assignment in &args.set {
        apply_set(&mut values, assignment).with_context(|| format!("--set {assignment}"))?;
    }
    let out = render_chart(&values, &args.namespace, !args.skip_crds)?;
    print!("{out}");
    Ok(())
}

/// The chart's own `values.yaml`.
fn chart_values() -> Result<Value> {
    parse_values(chart_file("values.yaml")?).context("the chart's values.yaml")
}

fn chart_file(path: &str) -> Result<&'static str> {
    CHART
        .iter()
        .find(|(p, _)| *p == path)
        .map(|(_, text)| *text)
        .ok_or_else(|| anyhow!("the chart built into strait has no {path}"))
}

fn parse_values(text: &str) -> Result<Value> {
    let json: serde_json::Value = if text.trim().is_empty() {
        serde_json::Value::Object(Default::default())
    } else {
        serde_saphyr::from_str(text)?
    };
    if !json.is_object() {
        bail!("values must be a map of names to values");
    }
    Ok(Value::from_json(&json))
}

/// Helm's merge of values: maps merge key by key, anything else replaces.
fn merge(base: &mut Value, over: &Value) {
    let (Value::Map(base), Value::Map(over)) = (&*base, over) else {
        *base = over.clone();
        return;
    };
    for (key, value) in over.borrow().iter() {
        let mut entries = base.borrow_mut();
        match entries.get_mut(key) {
            Some(existing @ Value::Map(_)) if matches!(value, Value::Map(_)) => {
                merge(existing, value)
            }
            _ => {
                entries.insert(key.clone(), value.clone());
            }
        }
    }
}

/// Sets the value at a dotted path, making the maps on the way.
fn set_path(values: &mut Value, path: &str, value: Value) -> Result<()> {
    let mut names: Vec<&str> = path.split('.').collect();
    let last = names
        .pop()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| anyhow!("no name"))?;
    let mut over = Value::map([(last.to_owned(), value)]);
    for name in names.iter().rev() {
        if name.is_empty() {
            bail!("an empty name in {path:?}");
        }
        over = Value::map([((*name).to_owned(), over)]);
    }
    merge(values, &over);
    Ok(())
}

/// `--set a.b=1,c=x`: Helm's typing (true/false, null, integers, `{a,b}` lists, else strings).
fn apply_set(values: &mut Value, assignment: &str) -> Result<()> {
    for part in split_top_level(assignment) {
        let (path, text) = part
            .split_once('=')
            .ok_or_else(|| anyhow!("{part:?} is not name=value"))?;
        let value = if let Some(list) = text.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
            Value::List(std::rc::Rc::new(
                list.split(',')
                    .filter(|t| !t.is_empty())
                    .map(typed)
                    .collect(),
            ))
        } else {
            typed(text)
        };
        set_path(values, path, value)?;
    }
    Ok(())
}

/// Splits on commas outside `{...}`.
fn split_top_level(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

fn typed(text: &str) -> Value {
    match text {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        "null" => Value::Nil,
        "0" => Value::Integer(0),
        t if !t.starts_with('0') => t.parse().map_or_else(|_| Value::string(t), Value::Integer),
        t => Value::string(t),
    }
}

/// Where Helm puts each kind, first to last (its install order); other kinds go after these,
/// by kind.
const KIND_ORDER: &[&str] = &[
    "Namespace",
    "NetworkPolicy",
    "ResourceQuota",
    "LimitRange",
    "PodSecurityPolicy",
    "PodDisruptionBudget",
    "ServiceAccount",
    "Secret",
    "SecretList",
    "ConfigMap",
    "StorageClass",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleList",
    "ClusterRoleBinding",
    "ClusterRoleBindingList",
    "Role",
    "RoleList",
    "RoleBinding",
    "RoleBindingList",
    "Service",
    "DaemonSet",
    "Pod",
    "ReplicationController",
    "ReplicaSet",
    "Deployment",
    "HorizontalPodAutoscaler",
    "StatefulSet",
    "Job",
    "CronJob",
    "IngressClass",
    "Ingress",
    "APIService",
];

/// One document of the output: the template it came from, its kind and its text.
struct Manifest {
    source: String,
    kind: String,
    content: String,
}

/// The chart's manifests for these values, as `helm template --include-crds` prints them.
fn render_chart(values: &Value, namespace: &str, crds: bool) -> Result<String> {
    let chart: serde_json::Value =
        serde_saphyr::from_str(chart_file("Chart.yaml")?).context("the chart's Chart.yaml")?;
    let name = chart["name"].as_str().unwrap_or("strait").to_owned();
    let meta = |key: &str| Value::string(chart[key].as_str().unwrap_or_default());
    let mut engine = Engine::default();
    let mut templates = Vec::new();
    for (path, text) in CHART {
        if let Some(file) = path.strip_prefix("templates/") {
            let full = format!("{name}/{path}");
            engine.add(&full, text)?;
            if !file.starts_with('_') && !file.ends_with(".txt") {
                templates.push(full);
            }
        } else if !path.starts_with("crds/") {
            engine.files.insert((*path).to_owned(), (*text).to_owned());
        }
    }
    templates.sort();
    let base: BTreeMap<String, Value> = BTreeMap::from([
        ("Values".to_owned(), values.clone()),
        (
            "Release".to_owned(),
            Value::map([
                ("Name".to_owned(), Value::string(RELEASE)),
                ("Namespace".to_owned(), Value::string(namespace)),
                ("Service".to_owned(), Value::string("Helm")),
                ("IsInstall".to_owned(), Value::Bool(true)),
                ("IsUpgrade".to_owned(), Value::Bool(false)),
                ("Revision".to_owned(), Value::Integer(1)),
            ]),
        ),
        (
            "Chart".to_owned(),
            Value::map([
                ("Name".to_owned(), Value::string(&name)),
                ("Version".to_owned(), meta("version")),
                ("AppVersion".to_owned(), meta("appVersion")),
                ("Description".to_owned(), meta("description")),
            ]),
        ),
    ]);
    let mut manifests = Vec::new();
    for source in &templates {
        let data = Value::map(base.clone().into_iter().chain([(
            "Template".to_owned(),
            Value::map([
                ("Name".to_owned(), Value::string(source)),
                (
                    "BasePath".to_owned(),
                    Value::string(format!("{name}/templates")),
                ),
            ]),
        )]));
        let text = engine.render(source, &data).map_err(|e| anyhow!("{e}"))?;
        for content in split_documents(&text) {
            let head: serde_json::Value = serde_saphyr::from_str(&content)
                .with_context(|| format!("{source} rendered YAML that does not parse"))?;
            let kind = head["kind"].as_str().unwrap_or_default().to_owned();
            manifests.push(Manifest {
                source: source.clone(),
                kind,
                content,
            });
        }
    }
    let rank = |kind: &str| {
        KIND_ORDER
            .iter()
            .position(|k| *k == kind)
            .map_or((1, kind.to_owned()), |i| (0, format!("{i:03}")))
    };
    manifests.sort_by_cached_key(|m| rank(&m.kind));
    let mut out = String::new();
    if crds {
        let mut files: BTreeMap<&str, &str> = BTreeMap::new();
        for (path, text) in CHART {
            if path.starts_with("crds/") {
                files.insert(path, text);
            }
        }
        for (path, text) in files {
            out.push_str(&format!("---\n# Source: {path}\n{text}\n"));
        }
    }
    for manifest in manifests {
        out.push_str(&format!(
            "---\n# Source: {}\n{}\n",
            manifest.source, manifest.content
        ));
    }
    Ok(out)
}

/// A rendered file's YAML documents, each trimmed, the empty ones left out (Helm's split).
fn split_documents(text: &str) -> Vec<String> {
    let mut documents = Vec::new();
    let mut current = String::new();
    for line in text.trim().lines() {
        if line.trim_end() == "---" || line.starts_with("--- ") {
            documents.push(std::mem::take(&mut current));
            continue;
        }
        current.push_str(line);
        current.push('\n');
    }
    documents.push(current);
    documents
        .into_iter()
        .map(|d| d.trim().to_owned())
        .filter(|d| !d.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(sets: &[&str]) -> Value {
        let mut values = chart_values().unwrap();
        for set in sets {
            apply_set(&mut values, set).unwrap();
        }
        values
    }

    #[test]
    fn the_chart_renders_with_a_cluster_and_a_trust_domain() {
        let out = render_chart(
            &values(&["cluster=west,trustDomain=mesh.example"]),
            "strait-system",
            true,
        )
        .unwrap();
        assert!(out.starts_with("---\n# Source: crds/"), "{}", &out[..200]);
        assert!(out.contains("    cluster: west\n    trustDomain: mesh.example\n"));
        assert!(out.contains("kind: MutatingWebhookConfiguration"));
        // The webhook's caBundle is the CA of the Secret's certificate: one render, one CA.
        let ca = |key: &str| {
            out.lines()
                .find_map(|l| l.trim().strip_prefix(key).map(str::to_owned))
                .unwrap()
        };
        assert_eq!(ca("ca.crt: "), ca("caBundle: "));
    }

    #[test]
    fn a_missing_or_bad_value_fails_with_the_charts_message() {
        let error = render_chart(&values(&[]), "strait-system", false)
            .err()
            .unwrap();
        assert!(
            error.to_string().contains("values: cluster is required"),
            "{error}"
        );
        let error = render_chart(
            &values(&["cluster=West_1,trustDomain=m"]),
            "strait-system",
            false,
        )
        .err()
        .unwrap();
        assert!(error.to_string().contains("is not a DNS label"), "{error}");
    }

    #[test]
    fn set_types_values_as_helm_does() {
        let mut v = values(&[]);
        apply_set(&mut v, "gateway.replicas=3,a.b=true,c=007,d={x,y}").unwrap();
        assert!(matches!(
            v.get("gateway").get("replicas"),
            Value::Integer(3)
        ));
        assert!(matches!(v.get("a").get("b"), Value::Bool(true)));
        assert_eq!(v.get("c").print(), "007");
        assert_eq!(v.get("d").print(), "[x y]");
        // The rest of gateway is kept.
        assert_eq!(v.get("gateway").get("ports").get("api").print(), "4434");
        assert!(apply_set(&mut v, "novalue").is_err());
    }
}
