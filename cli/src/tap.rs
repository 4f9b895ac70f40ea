//! `strait tap`: the live requests of a namespace (or one service of it), as this cluster's
//! sidecars carry them, streamed through the gateway at a bounded rate.

use std::time::Duration;

use anyhow::Result;
use clap::Args;
use serde_json::json;
use strait_federation::proto::operator::TapRequest;
use strait_federation::proto::tap::TapEvent;

use crate::context;

/// Options of `strait tap`.
#[derive(Args)]
pub struct TapArgs {
    /// Only requests to or from this service of the namespace.
    service: Option<String>,
    /// The namespace tapped.
    #[arg(short, long, default_value = "default")]
    namespace: String,
    /// Requests a second at most (the gateway drops the rest).
    #[arg(long, default_value_t = 100)]
    max_rps: u32,
    /// Stop after this long (e.g. 30s); without it, run until Ctrl-C.
    #[arg(long, value_parser = strait_federation::duration::parse_duration)]
    duration: Option<Duration>,
    /// Output: one line per request for people, or one JSON object per line.
    #[arg(short, long, default_value = "table", value_parser = ["table", "json"])]
    output: String,
}

/// Runs `strait tap`.
pub async fn run(context: Option<&str>, args: TapArgs) -> Result<()> {
    let (_, mut client) = context::connect(context).await?;
    let mut stream = client
        .tap(TapRequest {
            namespace: args.namespace.clone(),
            service: args.service.clone().unwrap_or_default(),
            max_rps: args.max_rps,
        })
        .await
        .map_err(crate::status)?
        .into_inner();
    let json = args.output == "json";
    let stop = async {
        match args.duration {
            Some(duration) => tokio::time::sleep(duration).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(stop);
    loop {
        let event = tokio::select! {
            event = stream.message() => event.map_err(crate::status)?,
            () = &mut stop => return Ok(()),
            () = crate::shutdown_signal() => return Ok(()),
        };
        let Some(event) = event else {
            return Ok(());
        };
        println!("{}", if json { as_json(&event) } else { line(&event) });
    }
}

fn as_json(event: &TapEvent) -> String {
    json!({
        "time_unix_ms": event.time_unix_ms,
        "direction": event.direction,
        "protocol": event.protocol,
        "caller": event.caller,
        "namespace": event.namespace,
        "service": event.service,
        "source_cluster": event.source_cluster,
        "destination_cluster": event.destination_cluster,
        "method": event.method,
        "path": event.path,
        "status": event.status,
        "latency_ms": event.latency_ms,
        "trace_id": event.trace_id,
        "bytes": event.bytes,
    })
    .to_string()
}

/// One event as `linkerd tap` prints them, on one line.
fn line(event: &TapEvent) -> String {
    let time =
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(event.time_unix_ms) * 1_000_000)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default();
    let what = if event.protocol == "http" {
        format!(
            ":method={} :path={} :status={}",
            event.method, event.path, event.status
        )
    } else {
        format!("tcp bytes={}", event.bytes)
    };
    format!(
        "{time} {} {}/{} {}->{} {what} latency={:.2}ms caller={}{}",
        if event.direction == "inbound" {
            "in "
        } else {
            "out"
        },
        event.namespace,
        event.service,
        event.source_cluster,
        event.destination_cluster,
        event.latency_ms,
        event.caller,
        if event.trace_id.is_empty() {
            String::new()
        } else {
            format!(" trace={}", event.trace_id)
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_prints_on_one_line_with_what_happened() {
        let event = TapEvent {
            time_unix_ms: 1_765_000_000_000,
            direction: "outbound".into(),
            protocol: "http".into(),
            caller: "spiffe://example.mesh/cluster/east/ns/shop/sa/web".into(),
            namespace: "shop".into(),
            service: "api".into(),
            source_cluster: "east".into(),
            destination_cluster: "west".into(),
            method: "GET".into(),
            path: "/items".into(),
            status: 200,
            latency_ms: 1.234,
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            ..Default::default()
        };
        let text = line(&event);
        assert!(
            text.contains("out shop/api east->west :method=GET :path=/items :status=200"),
            "{text}"
        );
        assert!(
            text.contains("latency=1.23ms")
                && text.ends_with("trace=4bf92f3577b34da6a3ce929d0e0e4736"),
            "{text}"
        );
        let value: serde_json::Value = serde_json::from_str(&as_json(&event)).unwrap();
        assert_eq!(value["status"], 200);
    }
}
