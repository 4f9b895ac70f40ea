//! The Grafana dashboards of `deploy/grafana`: each is a Grafana model that names only metrics
//! strait registers, through the `${datasource}` variable, and every query in them returns data
//! from a real Prometheus scraping `strait demo`, in which the test makes happen what the demo
//! alone does not (refusals, retries, mirrors, relayed flows that end, a peering undone).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde_json::Value;
use strait_tests::{Mesh, Process, free_port, http_get, http_get_host, wait_for};

/// Queries that no demo can make return data, by the metric they read, with the reason. Their
/// panels say the same in their descriptions.
const WITHOUT_DATA: &[(&str, &str)] = &[(
    "strait_kubernetes_writes_total",
    "only a gateway in Kubernetes mode writes to a Kubernetes API; the demo's gateways run in universal mode",
)];

/// What Grafana puts for its own variables when the test asks Prometheus: `$__rate_interval`
/// as Grafana computes it for a 15 s scrape interval.
const BUILT_INS: [(&str, &str); 3] = [
    ("__rate_interval", "1m"),
    ("__interval", "15s"),
    ("__range", "5m"),
];

/// The panel types the dashboards use.
const PANEL_TYPES: [&str; 3] = ["timeseries", "stat", "table"];

/// The workspace root.
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives in the workspace")
        .to_owned()
}

/// One dashboard file, parsed.
struct Dashboard {
    file: String,
    model: Value,
}

/// The JSON files of a folder, parsed, in name order.
fn dashboards_in(folder: &Path) -> Result<Vec<Dashboard>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(folder)
        .with_context(|| format!("reading {}", folder.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path)?;
            let model = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", path.display()))?;
            Ok(Dashboard {
                file: path
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                model,
            })
        })
        .collect()
}

/// The dashboards of `deploy/grafana`.
fn dashboards() -> Result<Vec<Dashboard>> {
    let all = dashboards_in(&workspace().join("deploy/grafana"))?;
    ensure!(!all.is_empty(), "no dashboard in deploy/grafana");
    Ok(all)
}

/// A PromQL query of a dashboard: a panel's target, or a template variable's values.
struct Query {
    /// The dashboard's file.
    file: String,
    /// `panel "Success rate" (A)`, or `variable "cluster"`.
    place: String,
    expr: String,
    /// The panel's legend, when it names labels (`{{service}}`).
    legend: Option<String>,
}

impl Query {
    /// The dashboard and the place in it, for messages.
    fn name(&self) -> String {
        format!("{}: {}", self.file, self.place)
    }
}

impl Dashboard {
    /// Every panel, those inside collapsed rows included.
    fn panels(&self) -> Vec<&Value> {
        let mut panels = Vec::new();
        for panel in self.model["panels"].as_array().into_iter().flatten() {
            panels.push(panel);
            panels.extend(panel["panels"].as_array().into_iter().flatten());
        }
        panels
    }

    /// The template variables.
    fn variables(&self) -> Vec<&Value> {
        self.model["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
            .collect()
    }

    /// Every query: the panels' targets, then the query variables' `label_values` as PromQL.
    fn queries(&self) -> Vec<Query> {
        let mut queries = Vec::new();
        for panel in self.panels().into_iter().filter(|p| p["type"] != "row") {
            for target in panel["targets"].as_array().into_iter().flatten() {
                let legend = target["legendFormat"]
                    .as_str()
                    .filter(|l| l.contains("{{") && target["format"] != "table");
                queries.push(Query {
                    file: self.file.clone(),
                    place: format!(
                        "panel {} ({})",
                        panel["title"],
                        target["refId"].as_str().unwrap_or("?")
                    ),
                    expr: target["expr"].as_str().unwrap_or_default().to_owned(),
                    legend: legend.map(str::to_owned),
                });
            }
        }
        for variable in self.variables() {
            if variable["type"] != "query" {
                continue;
            }
            let definition = variable["query"].as_str().unwrap_or_default();
            queries.push(Query {
                file: self.file.clone(),
                place: format!("variable {}", variable["name"]),
                expr: label_values_as_promql(definition).unwrap_or_default(),
                legend: None,
            });
        }
        queries
    }
}

/// `label_values(SELECTOR, LABEL)` as the PromQL that has a series per value.
fn label_values_as_promql(definition: &str) -> Option<String> {
    let inner = definition
        .trim()
        .strip_prefix("label_values(")?
        .strip_suffix(')')?;
    let (selector, label) = inner.rsplit_once(',')?;
    Some(format!("count by ({}) ({})", label.trim(), selector.trim()))
}

/// The metric names strait registers, read from the sources that register them (with the
/// registry's `strait_` prefix).
fn registered_metrics() -> Result<BTreeSet<String>> {
    let mut names = BTreeSet::new();
    for file in [
        "sidecar/src/metrics.rs",
        "gateway/src/metrics.rs",
        "io/src/limit.rs",
    ] {
        let text = std::fs::read_to_string(workspace().join(file))?;
        // The unit tests at the end make metrics of their own.
        let text = text.split("#[cfg(test)]").next().unwrap_or_default();
        // Every metric is made by `…::new("name"`, or by the `gauge("name"` and
        // `counter("name"` helpers of the gateway.
        for call in ["new(", "gauge(", "counter("] {
            for (at, _) in text.match_indices(call) {
                let rest = text[at + call.len()..].trim_start();
                let Some(name) = rest
                    .strip_prefix('"')
                    .and_then(|r| r.split_once('"'))
                    .map(|(name, _)| name)
                else {
                    continue;
                };
                if !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                {
                    names.insert(format!("strait_{name}"));
                }
            }
        }
    }
    for known in ["strait_requests_total", "strait_peer_state"] {
        ensure!(
            names.contains(known),
            "reading the metric names from the sources found no {known}: {names:?}"
        );
    }
    Ok(names)
}

/// The metric a series name belongs to: a histogram's `_bucket`, `_sum` and `_count` are its
/// own.
fn metric_of<'a>(series: &'a str, registered: &BTreeSet<String>) -> &'a str {
    if registered.contains(series) {
        return series;
    }
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|suffix| series.strip_suffix(suffix))
        .filter(|base| registered.contains(*base))
        .unwrap_or(series)
}

/// The `strait_…` names an expression reads.
fn metric_names(expr: &str) -> Vec<&str> {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = expr.as_bytes();
    let mut names = Vec::new();
    for (at, _) in expr.match_indices("strait_") {
        if at > 0 && word(bytes[at - 1]) {
            continue;
        }
        let end = expr[at..]
            .bytes()
            .position(|b| !word(b))
            .map_or(expr.len(), |n| at + n);
        names.push(&expr[at..end]);
    }
    names
}

/// The variables an expression uses (`$cluster`, `${cluster}`): name and byte offset.
fn variables_used(expr: &str) -> Vec<(&str, usize)> {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut used = Vec::new();
    for (at, _) in expr.match_indices('$') {
        let rest = &expr[at + 1..];
        let name = match rest.strip_prefix('{') {
            Some(braced) => braced.split('}').next().unwrap_or_default(),
            None => rest.split(|c: char| !word(c)).next().unwrap_or_default(),
        };
        used.push((name, at));
    }
    used
}

/// The expression as Prometheus gets it from Grafana with every variable at "All" (`.*`).
fn with_variables_at_all(expr: &str) -> String {
    let mut out = String::new();
    let mut rest = expr;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, tail) = match after.strip_prefix('{') {
            Some(braced) => braced.split_once('}').unwrap_or((braced, "")),
            None => {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                after.split_at(end)
            }
        };
        let value = BUILT_INS
            .iter()
            .find(|(built_in, _)| *built_in == name)
            .map_or(".*", |(_, value)| value);
        out.push_str(value);
        rest = tail;
    }
    out.push_str(rest);
    out
}

/// What is wrong with a dashboard's model, one line a problem.
fn problems(dashboard: &Dashboard, registered: &BTreeSet<String>) -> Vec<String> {
    let mut problems = Vec::new();
    let mut problem = |text: String| problems.push(format!("{}: {text}", dashboard.file));
    let model = &dashboard.model;
    let text = model.to_string();
    if text.contains("${DS_") {
        problem("a `${DS_…}` input: the datasource is the `${datasource}` variable".into());
    }
    if model["schemaVersion"].as_u64().is_none_or(|v| v < 36) {
        problem(format!(
            "schemaVersion {} (expected 36 or newer)",
            model["schemaVersion"]
        ));
    }
    if !model["tags"]
        .as_array()
        .is_some_and(|tags| tags.iter().any(|t| t == "strait"))
    {
        problem("no tag \"strait\"".into());
    }

    // The variables: a Prometheus datasource, and query variables with "All" as `.*`.
    let mut defined: BTreeSet<&str> = BTreeSet::new();
    for variable in dashboard.variables() {
        let name = variable["name"].as_str().unwrap_or_default();
        defined.insert(name);
        match variable["type"].as_str() {
            Some("datasource") if variable["query"] == "prometheus" => {}
            Some("query") => {
                if variable["datasource"]["uid"] != "${datasource}" {
                    problem(format!("variable {name} does not use ${{datasource}}"));
                }
                if variable["includeAll"] != true || variable["allValue"] != ".*" {
                    problem(format!("variable {name} has no \"All\" that means `.*`"));
                }
                let definition = variable["query"].as_str().unwrap_or_default();
                if label_values_as_promql(definition).is_none() {
                    problem(format!(
                        "variable {name}: {definition:?} is not label_values(SELECTOR, LABEL)"
                    ));
                }
            }
            other => problem(format!("variable {name} of type {other:?}")),
        }
    }
    if !dashboard
        .variables()
        .iter()
        .any(|v| v["name"] == "datasource" && v["type"] == "datasource")
    {
        problem("no `datasource` variable of type datasource".into());
    }

    // The panels: types, places, the datasource and the targets.
    let mut ids = BTreeSet::new();
    for panel in dashboard.panels() {
        let title = &panel["title"];
        if !panel["id"].as_u64().is_some_and(|id| ids.insert(id)) {
            problem(format!(
                "panel {title}: missing or repeated id {}",
                panel["id"]
            ));
        }
        let place = &panel["gridPos"];
        let (x, w) = (place["x"].as_u64(), place["w"].as_u64());
        if !matches!((x, w), (Some(x), Some(w)) if w > 0 && x + w <= 24)
            || place["h"].as_u64().is_none()
        {
            problem(format!(
                "panel {title}: gridPos {place} is not within 24 columns"
            ));
        }
        let kind = panel["type"].as_str().unwrap_or_default();
        if kind == "row" {
            continue;
        }
        if !PANEL_TYPES.contains(&kind) {
            problem(format!("panel {title}: type {kind:?}"));
        }
        if panel["datasource"]["uid"] != "${datasource}" {
            problem(format!("panel {title} does not use ${{datasource}}"));
        }
        if kind != "table" && !panel["fieldConfig"]["defaults"]["unit"].is_string() {
            problem(format!("panel {title} has no unit"));
        }
        if panel["description"].as_str().is_none_or(str::is_empty) {
            problem(format!("panel {title} has no description"));
        }
        let targets = panel["targets"].as_array().cloned().unwrap_or_default();
        if targets.is_empty() {
            problem(format!("panel {title} has no targets"));
        }
        let mut references = BTreeSet::new();
        for target in &targets {
            if !target["refId"]
                .as_str()
                .is_some_and(|r| references.insert(r.to_owned()))
            {
                problem(format!(
                    "panel {title}: missing or repeated refId {}",
                    target["refId"]
                ));
            }
            if target["datasource"]["uid"] != "${datasource}" {
                problem(format!(
                    "panel {title}: a target does not use ${{datasource}}"
                ));
            }
            if !target["legendFormat"].is_string() {
                problem(format!("panel {title}: a target has no legendFormat"));
            }
            if target["expr"].as_str().is_none_or(|e| e.trim().is_empty()) {
                problem(format!("panel {title}: a target has no expr"));
            }
        }
    }

    // The queries: known metrics, known variables, and "All" (`.*`) only under `=~`.
    for query in dashboard.queries() {
        let names = metric_names(&query.expr);
        if names.is_empty() {
            problem(format!(
                "{} reads no strait metric: {:?}",
                query.place, query.expr
            ));
        }
        for name in names {
            if !registered.contains(metric_of(name, registered)) {
                problem(format!(
                    "{} reads {name}, which strait does not register",
                    query.place
                ));
            }
        }
        for (name, at) in variables_used(&query.expr) {
            if BUILT_INS.iter().any(|(built_in, _)| *built_in == name) {
                continue;
            }
            if !defined.contains(name) {
                problem(format!(
                    "{} uses ${name}, which is not a variable",
                    query.place
                ));
            } else if !query.expr[..at].ends_with("=~\"") {
                problem(format!(
                    "{} uses ${name} outside a `=~\"…\"` matcher: \"All\" and several values are regular expressions",
                    query.place
                ));
            }
        }
    }
    problems
}

#[test]
fn every_dashboard_is_a_valid_grafana_model() -> Result<()> {
    let registered = registered_metrics()?;
    let ours = dashboards()?;
    // The chart's dashboard is loaded beside these by the same Grafana: no uid or title twice.
    let chart_folder = workspace().join("deploy/helm/strait/dashboards");
    let chart = if chart_folder.is_dir() {
        dashboards_in(&chart_folder)?
    } else {
        Vec::new()
    };
    let mut problems = Vec::new();
    let mut uids: BTreeMap<String, String> = BTreeMap::new();
    let mut titles: BTreeMap<String, String> = BTreeMap::new();
    for dashboard in ours.iter().chain(&chart) {
        for (key, seen) in [("uid", &mut uids), ("title", &mut titles)] {
            match dashboard.model[key].as_str().filter(|v| !v.is_empty()) {
                None => problems.push(format!("{}: no {key}", dashboard.file)),
                Some(value) => {
                    if let Some(other) = seen.insert(value.to_owned(), dashboard.file.clone()) {
                        problems.push(format!(
                            "{}: {key} {value:?} is also {other}'s",
                            dashboard.file
                        ));
                    }
                }
            }
        }
    }
    for dashboard in &ours {
        problems.extend(self::problems(dashboard, &registered));
    }

    // Every metric strait registers is on a dashboard, and every exception is still needed.
    let shown: BTreeSet<&str> = ours
        .iter()
        .flat_map(Dashboard::queries)
        .flat_map(|q| {
            metric_names(&q.expr)
                .into_iter()
                .map(|n| metric_of(n, &registered).to_owned())
                .collect::<Vec<_>>()
        })
        .filter_map(|n| registered.get(&n).map(String::as_str))
        .collect();
    for name in &registered {
        if !shown.contains(name.as_str()) {
            problems.push(format!("{name} is registered but no dashboard shows it"));
        }
    }
    for (name, _) in WITHOUT_DATA {
        if !shown.contains(name) {
            problems.push(format!(
                "{name} is excused from returning data but no panel reads it"
            ));
        }
    }
    ensure!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
    Ok(())
}

/// A program on PATH.
fn on_path(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
}

/// A Prometheus server scraping some targets every second, on a loopback port; killed when
/// dropped.
struct Prometheus {
    addr: SocketAddr,
    child: Child,
    log: PathBuf,
}

impl Prometheus {
    /// Starts it with its configuration and storage in `dir`, and waits until it is ready.
    fn start(program: &Path, dir: &Path, targets: &[SocketAddr]) -> Result<Self> {
        let config = dir.join("prometheus.yml");
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: strait\n    honor_labels: true\n    static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            ),
        )?;
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port(false)).parse()?;
        let log = dir.join("prometheus.log");
        let child = Command::new(program)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("prometheus").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .args(["--log.level=warn", "--storage.tsdb.retention.time=1h"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting prometheus")?;
        let prometheus = Self { addr, child, log };
        wait_for(Duration::from_secs(30), "Prometheus ready", || {
            Ok(http_get(addr, "/-/ready")
                .ok()
                .filter(|(status, _)| *status == 200)
                .map(|_| ()))
        })
        .with_context(|| prometheus.log_tail())?;
        Ok(prometheus)
    }

    /// The samples of an instant query now: each series' labels and value.
    fn query(&self, expr: &str) -> Result<Vec<(serde_json::Map<String, Value>, f64)>> {
        let (status, body) = http_get(
            self.addr,
            &format!("/api/v1/query?query={}", percent_encoded(expr)),
        )?;
        let answer: Value = serde_json::from_str(&body)
            .with_context(|| format!("Prometheus answered {status}: {body}"))?;
        if answer["status"] != "success" {
            bail!("{}: {}", answer["errorType"], answer["error"]);
        }
        Ok(answer["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|sample| {
                let labels = sample["metric"].as_object().cloned().unwrap_or_default();
                let value = sample["value"][1]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(f64::NAN);
                (labels, value)
            })
            .collect())
    }

    /// The end of its log, for failure messages.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        if text.trim().is_empty() {
            return "(nothing in the Prometheus log)".into();
        }
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "--- last lines of the Prometheus log ---\n{}",
            lines[lines.len().saturating_sub(20)..].join("\n")
        )
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A query parameter, percent-encoded.
fn percent_encoded(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Whether a query has data a panel can show: a series, with a value, whose labels fill the
/// panel's legend. `None` when it has; otherwise what it got.
fn lacks_data(prometheus: &Prometheus, query: &Query) -> Result<Option<String>> {
    let expr = with_variables_at_all(&query.expr);
    let samples = prometheus.query(&expr)?;
    if samples.is_empty() {
        return Ok(Some("no series".into()));
    }
    if samples.iter().all(|(_, value)| value.is_nan()) {
        return Ok(Some(format!("{} series, every value NaN", samples.len())));
    }
    if let Some(legend) = &query.legend {
        for label in legend
            .split("{{")
            .skip(1)
            .filter_map(|l| l.split_once("}}"))
        {
            let label = label.0.trim();
            if let Some((labels, _)) = samples.iter().find(|(l, _)| !l.contains_key(label)) {
                return Ok(Some(format!(
                    "the legend's {{{{{label}}}}} is not a label of {labels:?}"
                )));
            }
        }
    }
    Ok(None)
}

/// The policies that make the inbound sidecars refuse, limit, consult an authorizer and fetch
/// keys, and a route that retries and mirrors; applied in east, they reach west too.
/// `nobody` is a loopback port nothing listens on (the authorizer, failing open).
fn policies(nobody: u16) -> String {
    format!(
        "{deny}---
apiVersion: policy.strait.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: api-tickets, namespace: shop}}
spec:
  targetRef: {{kind: Service, name: api}}
  action: external
  external: {{address: 127.0.0.1:{nobody}, timeout: 100ms, failOpen: true}}
  rules:
    - to: [{{paths: [/external-check]}}]
---
apiVersion: policy.strait.dev/v1alpha1
kind: RateLimitPolicy
metadata: {{name: orders-limit, namespace: shop}}
spec:
  targetRef: {{kind: Service, name: orders}}
  limit: {{requests: 5, per: 1s}}
---
apiVersion: policy.strait.dev/v1alpha1
kind: HTTPRoute
metadata: {{name: api-checks, namespace: shop}}
spec:
  targetRef: {{kind: Service, name: api}}
  rules:
    - matches: [{{path: {{value: /status/503}}}}]
      backendRefs: [{{name: api}}]
      retries: {{attempts: 2}}
    - matches: [{{path: {{value: /mirrored}}}}]
      backendRefs: [{{name: api}}]
      filters:
        - type: RequestMirror
          requestMirror: {{backendRef: {{name: api}}}}
---
apiVersion: policy.strait.dev/v1alpha1
kind: RequestAuthentication
metadata: {{name: api-keys, namespace: shop}}
spec:
  targetRef: {{kind: Service, name: api}}
  jwtRules:
    - issuer: https://issuer.shop.example
      jwksUri: http://api.shop.svc.cluster.local:8080/jwks.json
",
        deny = strait_tests::NO_WEST_TO_API
    )
}

/// A TCP endpoint that accepts connections and closes them at once: flows relayed to it end
/// as soon as they open. Stops when dropped.
struct Sink {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Sink {
    fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            for connection in listener.incoming() {
                drop(connection);
                if stopped.load(Ordering::Relaxed) {
                    return;
                }
            }
        });
        Ok(Self {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The Service document of an exported HTTP service whose endpoint is this sink.
    fn service(&self) -> String {
        format!(
            "kind: Service\nmetadata: {{name: sink, namespace: shop}}\nspec:\n  export: true\n  \
             ports: [{{name: http, port: 8080, protocol: http}}]\n  endpoints: [{{address: {}}}]\n",
            self.addr
        )
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accepting thread, which then sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Requests and DNS queries that the demo's traffic never makes, sent again on every round
/// so that rates over a window keep a value.
struct Exercise {
    /// East's client sidecar proxy.
    proxy: SocketAddr,
    /// The gateways' DNS servers.
    dns: Vec<SocketAddr>,
}

impl Exercise {
    fn once(&self) {
        // Retried (503s), mirrored, put to the external authorizer, and relayed to the sink:
        // what they answer does not matter, only that the sidecars and gateways count them.
        for (host, path) in [
            ("api.shop.svc.cluster.local", "/status/503"),
            ("api.shop.svc.cluster.local", "/mirrored"),
            ("api.shop.svc.cluster.local", "/external-check"),
            ("sink.shop.svc.clusterset.local:8080", "/"),
        ] {
            let _ = http_get_host(self.proxy, host, path);
        }
        for server in &self.dns {
            for name in [
                "api.shop.svc.clusterset.local",
                "missing.shop.svc.clusterset.local",
            ] {
                let _ = ask_dns(*server, name);
            }
        }
    }
}

/// Asks a DNS server for the A records of `name` over UDP; returns the rcode.
fn ask_dns(server: SocketAddr, name: &str) -> Result<u8> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    socket.set_read_timeout(Some(Duration::from_secs(1)))?;
    // Header: id, flags (recursion desired), one question.
    let mut packet = vec![0x5a, 0x17, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        packet.push(u8::try_from(label.len())?);
        packet.extend_from_slice(label.as_bytes());
    }
    // The root, type A, class IN.
    packet.extend_from_slice(&[0, 0, 1, 0, 1]);
    socket.send_to(&packet, server)?;
    let mut answer = [0u8; 512];
    let (n, _) = socket.recv_from(&mut answer)?;
    ensure!(n >= 4, "a DNS answer of {n} bytes");
    Ok(answer[3] & 0x0f)
}

/// A third gateway, north, first refused by east (its Link's token tampered with), then linked
/// with a service, then unlinked: east counts a refusal, a session ended and a withdrawal.
fn undo_a_peering(mesh: &Mesh) -> Result<()> {
    let mut north = mesh.start("north", None)?;
    let link = mesh.ctl("east", &["link"]).success()?;
    let token = link
        .find("eyJ")
        .ok_or_else(|| anyhow!("no token in the Link document:\n{link}"))?;
    let end = link[token..]
        .find(char::is_whitespace)
        .map_or(link.len(), |n| token + n);
    let forged = if link[..end].ends_with("AAAA") {
        "BBBB"
    } else {
        "AAAA"
    };
    let tampered = format!("{}{forged}{}", &link[..end - 4], &link[end..]);
    let refused = mesh.apply("north", "tampered-link.yaml", &tampered);
    ensure!(
        !refused.ok && refused.stderr.contains("refused"),
        "a tampered Link was not refused: {}{}",
        refused.stdout,
        refused.stderr
    );
    mesh.link("north", "east")?;
    mesh.apply(
        "north",
        "inventory.yaml",
        &strait_tests::service("shop", "inventory", true, 8080),
    )
    .success()?;
    mesh.wait_served(
        "east",
        "shop/inventory",
        &["north"],
        Duration::from_secs(15),
    )?;
    mesh.ctl("east", &["unlink", "north"]).success()?;
    north.stop().with_context(|| north.log_tail())
}

/// An address of the demo's ready event.
fn address(ready: &Value, pointer: &str) -> Result<SocketAddr> {
    ready
        .pointer(pointer)
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("the ready event has no {pointer}: {ready}"))?
        .parse()
        .with_context(|| format!("the ready event's {pointer}"))
}

#[test]
fn every_dashboard_query_returns_data_from_a_demo_mesh() -> Result<()> {
    let Some(program) = on_path("prometheus") else {
        println!(
            "skipped: no `prometheus` on PATH to run the dashboards' queries against (Debian: apt-get install prometheus)"
        );
        return Ok(());
    };
    let queries: Vec<Query> = dashboards()?.iter().flat_map(Dashboard::queries).collect();
    let excused = |query: &Query| {
        WITHOUT_DATA
            .iter()
            .find(|(metric, _)| metric_names(&query.expr).contains(metric))
    };

    // The demo keeps its files (its trust root, its gateways' folders) in the mesh's folder.
    let dir = tempfile::Builder::new()
        .prefix("strait-grafana-")
        .tempdir()?;
    let mesh = Mesh {
        config: dir.path().join("config"),
        trust: dir.path().join("trust"),
        dir,
    };
    let folder = mesh.dir.path().display().to_string();
    let demo = Process::start(
        &mesh,
        "demo",
        &["demo", "--duration", "120s", "-o", "json", "--dir", &folder].map(String::from),
    )?;
    let ready = &demo.started;
    ensure!(ready["event"] == "ready", "the demo's first line: {ready}");
    let targets: Vec<SocketAddr> = ready["metrics_targets"]
        .as_array()
        .ok_or_else(|| anyhow!("the ready event has no metrics_targets: {ready}"))?
        .iter()
        .map(|t| {
            t.as_str()
                .ok_or_else(|| anyhow!("a metrics target {t}"))?
                .parse()
                .map_err(anyhow::Error::from)
        })
        .collect::<Result<_>>()?;
    let exercise = Exercise {
        proxy: address(ready, "/proxies/east")?,
        dns: vec![address(ready, "/dns/east")?, address(ready, "/dns/west")?],
    };

    let prometheus = Prometheus::start(&program, mesh.dir.path(), &targets)?;
    wait_for(
        Duration::from_secs(20),
        "Prometheus scraping every metrics target",
        || {
            let up = prometheus.query("sum(up)")?;
            Ok(up
                .first()
                .filter(|(_, count)| *count as usize == targets.len())
                .map(|_| ()))
        },
    )
    .with_context(|| prometheus.log_tail())?;

    // What the demo exports is what the sources register: the model test reads them right.
    let registered = registered_metrics()?;
    let exported = prometheus.query(r#"count by (__name__) ({__name__=~"strait_.+"})"#)?;
    let unknown: Vec<&str> = exported
        .iter()
        .filter_map(|(labels, _)| labels.get("__name__").and_then(Value::as_str))
        .filter(|name| !registered.contains(metric_of(name, &registered)))
        .collect();
    ensure!(
        !exported.is_empty() && unknown.is_empty(),
        "the demo exports metrics not found in the sources: {unknown:?}"
    );

    // Every query is PromQL Prometheus takes, before any waits for data.
    let refused: Vec<String> = queries
        .iter()
        .filter_map(|q| {
            let error = prometheus.query(&with_variables_at_all(&q.expr)).err()?;
            Some(format!("{}: {error:#}\n  {}", q.name(), q.expr))
        })
        .collect();
    ensure!(
        refused.is_empty(),
        "Prometheus refused {} queries:\n{}",
        refused.len(),
        refused.join("\n")
    );

    // Happenings the demo's traffic lacks.
    let sink = Sink::start()?;
    mesh.apply("west", "sink.yaml", &sink.service()).success()?;
    mesh.apply(
        "east",
        "dashboard-policies.yaml",
        &policies(free_port(false)),
    )
    .success()?;
    undo_a_peering(&mesh)?;

    let mut waiting: Vec<&Query> = queries.iter().filter(|q| excused(q).is_none()).collect();
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    let waited = wait_for(
        Duration::from_secs(75),
        "every dashboard query returning data",
        || {
            exercise.once();
            // A query keeps waiting while it lacks data; what it got last goes in the message.
            waiting.retain(|query| {
                let lack =
                    lacks_data(&prometheus, query).unwrap_or_else(|e| Some(format!("{e:#}")));
                if let Some(got) = &lack {
                    last.insert(query.name(), got.clone());
                }
                lack.is_some()
            });
            Ok(waiting.is_empty().then_some(()))
        },
    );
    if waited.is_err() {
        let lines: Vec<String> = waiting
            .iter()
            .map(|q| {
                format!(
                    "{} ({}):\n  {}",
                    q.name(),
                    last.get(&q.name()).map_or("?", String::as_str),
                    q.expr.replace('\n', " ")
                )
            })
            .collect();
        bail!(
            "{} of {} dashboard queries returned no data:\n{}\n{}",
            lines.len(),
            queries.len(),
            lines.join("\n"),
            prometheus.log_tail()
        );
    }
    let excused: Vec<String> = queries
        .iter()
        .filter_map(|q| excused(q).map(|(_, why)| format!("{}: {why}", q.name())))
        .collect();
    println!(
        "{} of {} dashboard queries returned data; excused:\n{}",
        queries.len() - excused.len(),
        queries.len(),
        excused.join("\n")
    );
    drop(sink);
    Ok(())
}
