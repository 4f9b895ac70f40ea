//! The web dashboard the gateway's admin port serves: the page and its assets (embedded, no
//! network needed) under `/dashboard/`, and `/api/v1/mesh`, the one JSON document the page
//! polls: clusters and links, the clusterset's services, golden metrics by service and by pair
//! of clusters across the whole federation, and the mesh-wide policies.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Redirect};
use axum::routing::get;
use serde_json::{Value, json};
use strait_federation::proto::operator::{StatRequest, StatRow};

use crate::api::operator::{link_views, service_views};
use crate::{Shared, lock, unix_now_ms};

const INDEX: &str = include_str!("index.html");
const SCRIPT: &str = include_str!("app.js");
const STYLE: &str = include_str!("style.css");

/// The dashboard's routes, for the admin server.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::temporary("/dashboard/") }))
        .route(
            "/dashboard",
            get(|| async { Redirect::permanent("/dashboard/") }),
        )
        .route(
            "/dashboard/",
            get(|| asset("text/html; charset=utf-8", INDEX)),
        )
        .route(
            "/dashboard/app.js",
            get(|| asset("text/javascript; charset=utf-8", SCRIPT)),
        )
        .route(
            "/dashboard/style.css",
            get(|| asset("text/css; charset=utf-8", STYLE)),
        )
        .route("/api/v1/mesh", get(mesh))
        .with_state(shared)
}

async fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; style-src 'self'; script-src 'self'; img-src 'self' data:",
            ),
        ],
        body,
    )
}

async fn mesh(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        document(&shared).to_string(),
    )
}

/// What the page shows, as JSON (docs/observability.md describes the fields).
pub fn document(shared: &Shared) -> Value {
    let stat = |by: &str| {
        crate::golden::stat(
            shared,
            &StatRequest {
                by: by.into(),
                namespace: String::new(),
                all_clusters: true,
                window_seconds: 0,
            },
        )
        .unwrap_or_default()
    };
    let by_service = stat("services");
    let by_link = stat("links");
    let local = shared.config.cluster.to_string();
    let locations = lock(&shared.locations).clone();
    let stale: std::collections::BTreeMap<String, bool> =
        crate::golden::clusters(shared).into_iter().collect();
    // Every cluster this gateway knows of: itself, its peers, and any cluster whose figures
    // reached it through them.
    let mut names: std::collections::BTreeSet<String> = stale.keys().cloned().collect();
    names.insert(local.clone());
    let link_views = link_views(shared);
    names.extend(link_views.iter().map(|l| l.cluster.clone()));
    let clusters: Vec<Value> = names
        .iter()
        .map(|name| {
            let location = if *name == local {
                Some(shared.config.location.clone())
            } else {
                locations
                    .iter()
                    .find(|(c, _)| c.as_str() == name)
                    .map(|(_, l)| l.clone())
            }
            .unwrap_or_default();
            json!({
                "name": name,
                "local": *name == local,
                "cloud": location.cloud,
                "region": location.region,
                "zone": location.zone,
                "stale": stale.get(name).copied().unwrap_or(false),
            })
        })
        .collect();
    let links: Vec<Value> = link_views
        .iter()
        .map(|l| {
            json!({
                "cluster": l.cluster,
                "role": l.role,
                "state": l.state,
                "rtt_ms": l.rtt_ms,
                "lag_versions": l.exported_version.saturating_sub(l.acked_version),
                "replicas": l.replicas,
                "last_error": l.last_error,
            })
        })
        .collect();
    let catalog: Vec<Value> = service_views(shared)
        .into_iter()
        .map(|s| {
            // Shared with other clusters: exported from here, or imported (so exported there).
            let exported = s.exported || s.clusters.iter().any(|c| *c != local);
            json!({
                "namespace": s.namespace,
                "name": s.name,
                "clusters": s.clusters,
                "ports": s.ports,
                "exported": exported,
            })
        })
        .collect();
    let policies: Vec<Value> = crate::policies::views(&lock(&shared.state))
        .into_iter()
        .map(|p| {
            json!({
                "kind": p.kind,
                "namespace": p.namespace,
                "name": p.name,
                "origin": p.origin,
                "stamp": p.stamp,
                "document": serde_json::from_str::<Value>(&p.document).unwrap_or(Value::Null),
            })
        })
        .collect();
    json!({
        "cluster": local,
        "version": env!("CARGO_PKG_VERSION"),
        "generated_unix_ms": unix_now_ms(),
        "window_seconds": by_service.window_seconds,
        "clusters": clusters,
        "links": links,
        "services": catalog,
        "traffic": by_service.rows.iter().map(|r| stat_json(r, true)).collect::<Vec<_>>(),
        "cluster_traffic": by_link.rows.iter().map(|r| stat_json(r, false)).collect::<Vec<_>>(),
        "policies": policies,
    })
}

/// A row of `stat` as `strait stat -o json` and the dashboard show it.
pub fn stat_json(row: &StatRow, with_service: bool) -> Value {
    let mut value = json!({
        "source_cluster": row.source_cluster,
        "destination_cluster": row.destination_cluster,
        "requests": row.requests,
        "success_rate": row.success_rate,
        "rps": row.rps,
        "latency_ms": row.latency_ms.as_ref().map(|l| json!({"p50": l.p50, "p95": l.p95, "p99": l.p99})),
        "tcp_connections": row.tcp_connections,
        "tcp_bytes": row.tcp_bytes,
        "stale": row.stale,
    });
    if with_service {
        value["namespace"] = json!(row.namespace);
        value["service"] = json!(row.service);
    }
    value
}
