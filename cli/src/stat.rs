//! `strait stat` and `strait top`: the golden metrics (success rate, requests per second,
//! latency p50/p95/p99) that the gateways sum from their sidecars and share with each other,
//! by service, by workload or by pair of clusters; from this cluster's sidecars, or with
//! `--all-clusters` from every cluster of the federation, asked of one gateway.

use std::io::{IsTerminal, Write as _};
use std::time::Duration;

use anyhow::Result;
use clap::{Args, ValueEnum};
use serde_json::json;
use strait_federation::proto::operator::{StatRequest, StatResponse, StatRow};

use crate::context;
use crate::output::table;

/// What `stat` groups by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatResource {
    /// Requests each service served, by caller cluster (as the services' sidecars saw them).
    #[value(alias = "service", alias = "svc")]
    Services,
    /// Requests between clusters (as the callers' sidecars sent them, failures included).
    #[value(alias = "link")]
    Links,
    /// Requests each workload served (Kubernetes: deploy/NAME, statefulset/NAME, ...).
    #[value(alias = "deployments", alias = "workloads", alias = "deployment")]
    Deploy,
}

impl StatResource {
    fn by(self) -> &'static str {
        match self {
            StatResource::Services => "services",
            StatResource::Links => "links",
            StatResource::Deploy => "workloads",
        }
    }
}

/// Options both `stat` and `top` take.
#[derive(Args)]
pub struct Scope {
    /// Only this namespace.
    #[arg(short, long)]
    namespace: Option<String>,
    /// Every cluster's figures, as the gateways share them, not only this cluster's sidecars'.
    #[arg(long)]
    all_clusters: bool,
    /// How far back the figures go, up to a minute (the gateways keep 60 s); rounded up to
    /// whole intervals (5 s by default).
    #[arg(long, default_value = "30s", value_parser = strait_federation::duration::parse_duration)]
    window: Duration,
}

impl Scope {
    fn request(&self, by: &str) -> StatRequest {
        StatRequest {
            by: by.into(),
            namespace: self.namespace.clone().unwrap_or_default(),
            all_clusters: self.all_clusters,
            window_seconds: self.window.as_secs().max(1) as u32,
        }
    }
}

/// Options of `strait stat`.
#[derive(Args)]
pub struct StatArgs {
    /// What to show: services, links or deploy (workloads).
    resource: StatResource,
    #[command(flatten)]
    scope: Scope,
    /// Output format: table, or json (`{"items": [...]}`).
    #[arg(short, long, default_value = "table", value_parser = ["table", "json"])]
    output: String,
}

/// Options of `strait top`.
#[derive(Args)]
pub struct TopArgs {
    /// Only this: a service's name, or a workload as deploy/NAME.
    target: Option<String>,
    #[command(flatten)]
    scope: Scope,
    /// How often the view refreshes.
    #[arg(long, default_value = "2s", value_parser = strait_federation::duration::parse_duration)]
    interval: Duration,
    /// Stop after this many refreshes (0: until Ctrl-C).
    #[arg(long, default_value_t = 0)]
    iterations: u64,
    /// The busiest rows shown.
    #[arg(long, default_value_t = 20)]
    rows: usize,
}

async fn ask(client: &mut context::Client, request: StatRequest) -> Result<StatResponse> {
    Ok(client
        .stat(request)
        .await
        .map_err(crate::status)?
        .into_inner())
}

/// Runs `strait stat`.
pub async fn stat(context: Option<&str>, args: StatArgs) -> Result<()> {
    let (_, mut client) = context::connect(context).await?;
    let answer = ask(&mut client, args.scope.request(args.resource.by())).await?;
    match args.output.as_str() {
        "table" => print!("{}", render(&answer, args.resource)),
        _ => {
            let items: Vec<_> = answer.rows.iter().map(|r| item(r, args.resource)).collect();
            println!(
                "{}",
                serde_json::to_string_pretty(
                    &json!({"items": items, "window_seconds": answer.window_seconds})
                )?
            );
        }
    }
    Ok(())
}

/// One row as `-o json` prints it.
fn item(row: &StatRow, resource: StatResource) -> serde_json::Value {
    let mut value = strait_gateway::dashboard::stat_json(row, resource == StatResource::Services);
    if resource == StatResource::Deploy {
        value["namespace"] = json!(row.namespace);
        value["workload"] = json!(row.workload);
    }
    value
}

fn percent(rate: Option<f64>) -> String {
    rate.map_or_else(|| "-".into(), |r| format!("{:.2}%", r * 100.0))
}

fn millis(value: Option<f64>) -> String {
    value.map_or_else(
        || "-".into(),
        |ms| {
            if ms < 10.0 {
                format!("{ms:.2}ms")
            } else {
                format!("{ms:.0}ms")
            }
        },
    )
}

/// The table of an answer.
fn render(answer: &StatResponse, resource: StatResource) -> String {
    if answer.rows.is_empty() {
        return format!("No traffic in the last {} s.\n", answer.window_seconds);
    }
    let mut header: Vec<&str> = match resource {
        StatResource::Services => vec!["NAMESPACE", "SERVICE"],
        StatResource::Deploy => vec!["NAMESPACE", "WORKLOAD"],
        StatResource::Links => vec![],
    };
    header.extend([
        "FROM",
        "TO",
        "SUCCESS",
        "RPS",
        "LATENCY_P50",
        "LATENCY_P95",
        "LATENCY_P99",
        "TCP_CONN",
    ]);
    let any_stale = answer.rows.iter().any(|r| r.stale);
    if any_stale {
        header.push("");
    }
    let rows = answer
        .rows
        .iter()
        .map(|row| {
            let mut cells = match resource {
                StatResource::Services => vec![row.namespace.clone(), row.service.clone()],
                StatResource::Deploy => vec![
                    row.namespace.clone(),
                    if row.workload.is_empty() {
                        "-".into()
                    } else {
                        row.workload.clone()
                    },
                ],
                StatResource::Links => vec![],
            };
            let latency = row.latency_ms.as_ref();
            cells.extend([
                row.source_cluster.clone(),
                row.destination_cluster.clone(),
                percent(row.success_rate),
                format!("{:.1}rps", row.rps),
                millis(latency.map(|l| l.p50)),
                millis(latency.map(|l| l.p95)),
                millis(latency.map(|l| l.p99)),
                row.tcp_connections.to_string(),
            ]);
            if any_stale {
                cells.push(if row.stale {
                    "(stale)".into()
                } else {
                    String::new()
                });
            }
            cells
        })
        .collect();
    table(&header, rows)
}

/// Runs `strait top`: the busiest services and cluster pairs, refreshed in place.
pub async fn top(context: Option<&str>, args: TopArgs) -> Result<()> {
    let (_, mut client) = context::connect(context).await?;
    let terminal = std::io::stdout().is_terminal();
    let (by, resource, filter) = match args.target.as_deref() {
        Some(target) if target.contains('/') => ("workloads", StatResource::Deploy, target),
        Some(target) => ("services", StatResource::Services, target),
        None => ("services", StatResource::Services, ""),
    };
    let mut done = 0u64;
    loop {
        let mut services = ask(&mut client, args.scope.request(by)).await?;
        services.rows.retain(|r| {
            filter.is_empty()
                || match resource {
                    StatResource::Deploy => r.workload == filter,
                    _ => r.service == filter,
                }
        });
        busiest(&mut services.rows, args.rows);
        let mut links = ask(&mut client, args.scope.request("links")).await?;
        busiest(&mut links.rows, args.rows);
        let mut screen = String::new();
        if terminal {
            // Clear and home: the view refreshes in place.
            screen.push_str("\x1b[2J\x1b[H");
        }
        screen.push_str(&format!(
            "strait top: {} over {} s, refreshed every {:?} (Ctrl-C quits)\n\n",
            if args.scope.all_clusters {
                "every cluster"
            } else {
                "this cluster's sidecars"
            },
            services.window_seconds,
            args.interval
        ));
        screen.push_str(&render(&services, resource));
        screen.push('\n');
        screen.push_str(&render(&links, StatResource::Links));
        let mut out = std::io::stdout().lock();
        out.write_all(screen.as_bytes())?;
        out.flush()?;
        done += 1;
        if args.iterations != 0 && done >= args.iterations {
            return Ok(());
        }
        tokio::select! {
            () = tokio::time::sleep(args.interval) => {}
            () = crate::shutdown_signal() => return Ok(()),
        }
    }
}

/// The busiest `keep` rows, busiest first.
fn busiest(rows: &mut Vec<StatRow>, keep: usize) {
    rows.sort_by(|a, b| b.rps.total_cmp(&a.rps));
    rows.truncate(keep);
}

#[cfg(test)]
mod tests {
    use super::*;
    use strait_federation::proto::operator::Latency;

    fn row(service: &str, rps: f64, stale: bool) -> StatRow {
        StatRow {
            namespace: "shop".into(),
            service: service.into(),
            source_cluster: "east".into(),
            destination_cluster: "west".into(),
            requests: (rps * 30.0) as u64,
            success_rate: Some(0.995),
            rps,
            latency_ms: Some(Latency {
                p50: 0.8,
                p95: 2.5,
                p99: 12.0,
            }),
            stale,
            seconds: 30.0,
            ..Default::default()
        }
    }

    #[test]
    fn a_table_shows_rates_latencies_and_stale_rows() {
        let answer = StatResponse {
            rows: vec![row("api", 4.0, false), row("orders", 1.0, true)],
            window_seconds: 30,
        };
        let text = render(&answer, StatResource::Services);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("NAMESPACE   SERVICE   FROM   TO"),
            "{text}"
        );
        assert!(
            lines[1].contains("99.50%") && lines[1].contains("4.0rps"),
            "{text}"
        );
        assert!(
            lines[1].contains("0.80ms") && lines[1].contains("12ms"),
            "{text}"
        );
        assert!(
            !lines[1].contains("(stale)") && lines[2].ends_with("(stale)"),
            "{text}"
        );
        let empty = StatResponse::default();
        assert_eq!(
            render(&empty, StatResource::Links),
            "No traffic in the last 0 s.\n"
        );
    }

    #[test]
    fn json_items_have_the_documented_fields() {
        let value = item(&row("api", 4.0, false), StatResource::Services);
        for field in [
            "namespace",
            "service",
            "source_cluster",
            "destination_cluster",
            "requests",
            "success_rate",
            "rps",
            "latency_ms",
            "stale",
        ] {
            assert!(value.get(field).is_some(), "{field} missing from {value}");
        }
        assert_eq!(value["latency_ms"]["p99"], 12.0);
        let link = item(&row("api", 4.0, false), StatResource::Links);
        assert!(link.get("service").is_none(), "{link}");
    }

    #[test]
    fn top_keeps_the_busiest_rows_first() {
        let mut rows = vec![
            row("a", 1.0, false),
            row("b", 9.0, false),
            row("c", 5.0, false),
        ];
        busiest(&mut rows, 2);
        let names: Vec<&str> = rows.iter().map(|r| r.service.as_str()).collect();
        assert_eq!(names, ["b", "c"]);
    }
}
