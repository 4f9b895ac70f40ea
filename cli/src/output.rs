//! How `strait get` prints: a table by default, or `-o json` / `-o yaml` as kubectl does
//! (a `List` object with `items`).

use std::fmt::Write as _;

use anyhow::{Result, anyhow};
use serde::Serialize;
use strait_federation::proto::operator::{LinkView, PolicyView, ServiceView};

/// An output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct List<T> {
    api_version: &'static str,
    kind: &'static str,
    items: Vec<T>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Backend {
    cluster: String,
    endpoints: u32,
    ready_endpoints: u32,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ServiceItem {
    namespace: String,
    name: String,
    /// Whether this cluster runs an instance of its own.
    local: bool,
    /// Whether this cluster exports its own instance.
    exported: bool,
    /// The clusters serving the service, this one first.
    clusters: Vec<String>,
    backends: Vec<Backend>,
    ports: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LinkItem {
    cluster: String,
    state: String,
    role: String,
    address: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    last_error: String,
    rtt_ms: f64,
    imported_services: u64,
    imported_version: u64,
    exported_version: u64,
    acked_version: u64,
    replicas: u32,
    since: String,
}

fn render<T: Serialize>(kind: &'static str, items: Vec<T>, format: Format) -> Result<String> {
    let list = List {
        api_version: strait_federation::document::API_VERSION,
        kind,
        items,
    };
    match format {
        Format::Json => Ok(serde_json::to_string_pretty(&list)? + "\n"),
        Format::Yaml => serde_saphyr::to_string(&list).map_err(|e| anyhow!("{e}")),
        Format::Table => unreachable!("tables are rendered by their callers"),
    }
}

pub(crate) fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let last = cells.len() - 1;
        for (i, cell) in cells.iter().enumerate() {
            if i == last {
                let _ = write!(out, "{cell}");
            } else {
                let _ = write!(out, "{cell:<width$}   ", width = widths[i]);
            }
        }
        out.push('\n');
    };
    line(header.to_vec());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// Prints services.
pub fn services(services: &[ServiceView], format: Format) -> Result<String> {
    if format == Format::Table {
        if services.is_empty() {
            return Ok("No services.\n".into());
        }
        let rows = services
            .iter()
            .map(|s| {
                vec![
                    s.namespace.clone(),
                    s.name.clone(),
                    s.clusters.join(","),
                    match (s.local, s.exported) {
                        (false, _) => "-".into(),
                        (true, true) => "yes".into(),
                        (true, false) => "no".into(),
                    },
                    s.backends
                        .iter()
                        .map(|b| format!("{}/{}", b.ready_endpoints, b.endpoints))
                        .collect::<Vec<_>>()
                        .join(","),
                    s.ports.join(","),
                ]
            })
            .collect();
        return Ok(table(
            &[
                "NAMESPACE",
                "NAME",
                "CLUSTERS",
                "EXPORTED",
                "READY",
                "PORTS",
            ],
            rows,
        ));
    }
    let items = services
        .iter()
        .map(|s| ServiceItem {
            namespace: s.namespace.clone(),
            name: s.name.clone(),
            local: s.local,
            exported: s.exported,
            clusters: s.clusters.clone(),
            backends: s
                .backends
                .iter()
                .map(|b| Backend {
                    cluster: b.cluster.clone(),
                    endpoints: b.endpoints,
                    ready_endpoints: b.ready_endpoints,
                })
                .collect(),
            ports: s.ports.clone(),
        })
        .collect();
    render("ServiceList", items, format)
}

fn age(since_unix: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let seconds = now.saturating_sub(since_unix);
    match seconds {
        0..120 => format!("{seconds}s"),
        120..7200 => format!("{}m", seconds / 60),
        7200..172_800 => format!("{}h", seconds / 3600),
        _ => format!("{}d", seconds / 86400),
    }
}

/// Prints links.
pub fn links(links: &[LinkView], format: Format) -> Result<String> {
    if format == Format::Table {
        if links.is_empty() {
            return Ok("No links.\n".into());
        }
        let rows = links
            .iter()
            .map(|l| {
                vec![
                    l.cluster.clone(),
                    l.role.clone(),
                    l.state.clone(),
                    l.address.clone(),
                    if l.state == "connected" {
                        format!("{:.1}ms", l.rtt_ms)
                    } else {
                        "-".into()
                    },
                    l.replicas.to_string(),
                    l.imported_services.to_string(),
                    age(l.since_unix),
                    l.last_error.chars().filter(|c| !c.is_control()).collect(),
                ]
            })
            .collect();
        return Ok(table(
            &[
                "CLUSTER",
                "ROLE",
                "STATE",
                "ADDRESS",
                "RTT",
                "REPLICAS",
                "IMPORTED",
                "SINCE",
                "LAST ERROR",
            ],
            rows,
        ));
    }
    let items = links
        .iter()
        .map(|l| LinkItem {
            cluster: l.cluster.clone(),
            state: l.state.clone(),
            role: l.role.clone(),
            address: l.address.clone(),
            last_error: l.last_error.clone(),
            rtt_ms: l.rtt_ms,
            imported_services: l.imported_services,
            imported_version: l.imported_version,
            exported_version: l.exported_version,
            acked_version: l.acked_version,
            replicas: l.replicas,
            since: strait_federation::link::rfc3339(l.since_unix),
        })
        .collect();
    render("LinkList", items, format)
}

/// When a policy version was stamped (Unix seconds): its clock keeps milliseconds above a
/// 16-bit counter.
fn stamped_at(stamp: u64) -> u64 {
    (stamp >> 16) / 1000
}

/// Prints policies: each as its document, with a `status` saying its version and the cluster
/// where it was applied.
pub fn policies(policies: &[PolicyView], format: Format) -> Result<String> {
    if format == Format::Table {
        if policies.is_empty() {
            return Ok("No policies.\n".into());
        }
        let rows = policies
            .iter()
            .map(|p| {
                vec![
                    p.kind.clone(),
                    p.namespace.clone(),
                    p.name.clone(),
                    p.origin.clone(),
                    p.stamp.to_string(),
                    age(stamped_at(p.stamp)),
                ]
            })
            .collect();
        return Ok(table(
            &["KIND", "NAMESPACE", "NAME", "ORIGIN", "VERSION", "AGE"],
            rows,
        ));
    }
    let items = policies
        .iter()
        .map(|p| {
            let mut item: serde_json::Value = serde_json::from_str(&p.document)
                .map_err(|e| anyhow!("the gateway sent an unreadable policy {}: {e}", p.name))?;
            if let Some(object) = item.as_object_mut() {
                object.insert(
                    "status".into(),
                    serde_json::json!({
                        // A string, as Kubernetes writes resourceVersion: the stamp does not
                        // fit the integers of JSON readers that use doubles.
                        "version": p.stamp.to_string(),
                        "origin": p.origin,
                        "appliedAt": strait_federation::link::rfc3339(stamped_at(p.stamp)),
                    }),
                );
            }
            Ok(item)
        })
        .collect::<Result<Vec<_>>>()?;
    render("PolicyList", items, format)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api() -> ServiceView {
        ServiceView {
            namespace: "shop".into(),
            name: "api".into(),
            exported: true,
            local: true,
            clusters: vec!["east".into(), "west".into()],
            backends: vec![],
            ports: vec!["8080/http".into()],
        }
    }

    #[test]
    fn json_lists_each_service_with_its_clusters() {
        let text = services(&[api()], Format::Json).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["kind"], "ServiceList");
        assert_eq!(value["items"][0]["name"], "api");
        assert_eq!(value["items"][0]["namespace"], "shop");
        assert_eq!(
            value["items"][0]["clusters"],
            serde_json::json!(["east", "west"])
        );
    }

    #[test]
    fn tables_align_their_columns() {
        let text = services(&[api()], Format::Table).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].find(" NAME ").map(|i| i + 1), lines[1].find("api"));
    }
}
