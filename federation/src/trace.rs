//! Distributed tracing as strait does it: the W3C trace context (`traceparent`) a request
//! carries, the spans sidecars and gateways record for their hop, and the OTLP export request
//! that carries spans to a collector. Sans-IO: ids and times are handed in.

use crate::policy::path::hex as hex_digit;
use crate::proto::otlp;

/// The header of the W3C trace context.
pub const TRACEPARENT: &str = "traceparent";
/// The length of a version-00 `traceparent`.
pub const TRACEPARENT_LEN: usize = 55;
/// The header of vendors' trace state, passed on untouched.
pub const TRACESTATE: &str = "tracestate";

/// A trace's id.
pub type TraceId = [u8; 16];
/// A span's id.
pub type SpanId = [u8; 8];

/// Where a request stands in its trace: the trace, the span it comes from, and whether the
/// trace is sampled (recorded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: TraceId,
    pub parent_id: SpanId,
    pub sampled: bool,
}

fn hex_bytes<const N: usize>(digits: &[u8]) -> Option<[u8; N]> {
    if digits.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = (hex_digit(pair[0])? << 4) | hex_digit(pair[1])?;
    }
    Some(out)
}

impl TraceContext {
    /// Parses a `traceparent` header: `00-<32 hex>-<16 hex>-<2 hex flags>`; a later version
    /// may add fields after these. `None` for anything else (then a new trace starts).
    /// Read as bytes: checking the header's value as text first cost more than the parse.
    pub fn parse(header: impl AsRef<[u8]>) -> Option<Self> {
        let header = header.as_ref().trim_ascii();
        // Version 00, as nearly every request carries it, read in place: splitting it first
        // was half of what a serving sidecar spent on the trace.
        if header.len() == TRACEPARENT_LEN
            && header.starts_with(b"00-")
            && header[35] == b'-'
            && header[52] == b'-'
        {
            return Self::from_fields(&header[3..35], &header[36..52], &header[53..]);
        }
        let mut parts = header.split(|&byte| byte == b'-');
        let version = parts.next()?;
        let trace = parts.next()?;
        let parent = parts.next()?;
        let flags = parts.next()?;
        let version: [u8; 1] = hex_bytes(version)?;
        // Version ff is invalid; version 00 has exactly four fields.
        if version[0] == 0xff || (version[0] == 0 && parts.next().is_some()) {
            return None;
        }
        if version[0] != 0 && flags.len() != 2 {
            return None;
        }
        Self::from_fields(trace, parent, flags)
    }

    /// The context of a `traceparent`'s trace id, parent id and flags, each in hex.
    fn from_fields(trace: &[u8], parent: &[u8], flags: &[u8]) -> Option<Self> {
        let trace_id: TraceId = hex_bytes(trace)?;
        let parent_id: SpanId = hex_bytes(parent)?;
        let flags: [u8; 1] = hex_bytes(flags)?;
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            parent_id,
            sampled: flags[0] & 1 == 1,
        })
    }

    /// A new trace, sampled at `rate` (0 to 1) by `draw` (a random number).
    pub fn start(trace_id: TraceId, parent_id: SpanId, rate: f64, draw: u64) -> Self {
        Self {
            trace_id,
            parent_id,
            sampled: sampled(rate, draw),
        }
    }

    /// The `traceparent` header of a request sent from span `span` of this trace, as the bytes
    /// of its value.
    pub fn header_from(&self, span: SpanId) -> [u8; TRACEPARENT_LEN] {
        // Written into place: every request makes one. `format!` per byte cost a sixth of a
        // sidecar's instructions per request; a `String` pushed a character at a time, then
        // checked again as a header value, a third of what a sidecar spent on the trace.
        let mut header = [b'-'; TRACEPARENT_LEN];
        header[..2].copy_from_slice(b"00");
        write_hex(&mut header[3..35], &self.trace_id);
        write_hex(&mut header[36..52], &span);
        header[53..].copy_from_slice(if self.sampled { b"01" } else { b"00" });
        header
    }

    /// The trace id as the 32 hex digits logs show.
    pub fn trace_hex(&self) -> String {
        hex(&self.trace_id)
    }
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    let mut text = vec![0; 2 * bytes.len()];
    write_hex(&mut text, bytes);
    String::from_utf8(text).unwrap_or_default()
}

/// Writes the lower-case hex of `bytes` into `out`, two digits a byte (as far as `out` holds).
fn write_hex(out: &mut [u8], bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0x0f)];
    }
}

/// Whether a new trace is sampled at `rate`, given a uniformly random `draw`.
pub fn sampled(rate: f64, draw: u64) -> bool {
    if rate >= 1.0 {
        return true;
    }
    if rate.is_nan() || rate <= 0.0 {
        return false;
    }
    (draw as f64) < rate * (u64::MAX as f64)
}

/// Which side of a call a span records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    /// A hop that passes the call on (a gateway).
    Internal = 1,
    /// The side that serves the call (the server's sidecar).
    Server = 2,
    /// The side that makes the call (the caller's sidecar).
    Client = 3,
}

/// An attribute's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Text(String),
    Int(i64),
}

/// One hop of a trace, finished.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent_id: Option<SpanId>,
    pub name: String,
    pub kind: SpanKind,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    pub attributes: Vec<(&'static str, Value)>,
    /// Why the hop failed, if it did.
    pub error: Option<String>,
}

fn key_value(key: &str, value: &Value) -> otlp::KeyValue {
    otlp::KeyValue {
        key: key.to_owned(),
        value: Some(otlp::AnyValue {
            value: Some(match value {
                Value::Text(text) => otlp::any_value::Value::StringValue(text.clone()),
                Value::Int(n) => otlp::any_value::Value::IntValue(*n),
            }),
        }),
    }
}

/// The OTLP export request for spans recorded by `service_name` (`strait-sidecar`,
/// `strait-gateway`) with the resource's attributes (its cluster, its identity).
pub fn export_request(
    service_name: &str,
    resource: &[(&'static str, Value)],
    spans: &[Span],
) -> otlp::ExportTraceServiceRequest {
    let mut attributes = vec![key_value("service.name", &Value::Text(service_name.into()))];
    attributes.extend(resource.iter().map(|(k, v)| key_value(k, v)));
    let spans = spans
        .iter()
        .map(|span| otlp::Span {
            trace_id: span.trace_id.to_vec(),
            span_id: span.span_id.to_vec(),
            trace_state: String::new(),
            parent_span_id: span.parent_id.map(|p| p.to_vec()).unwrap_or_default(),
            name: span.name.clone(),
            kind: span.kind as i32,
            start_time_unix_nano: span.start_unix_nanos,
            end_time_unix_nano: span.end_unix_nanos.max(span.start_unix_nanos),
            attributes: span
                .attributes
                .iter()
                .map(|(k, v)| key_value(k, v))
                .collect(),
            status: Some(match &span.error {
                Some(message) => otlp::Status {
                    message: message.clone(),
                    code: 2,
                },
                None => otlp::Status {
                    message: String::new(),
                    code: 0,
                },
            }),
        })
        .collect();
    otlp::ExportTraceServiceRequest {
        resource_spans: vec![otlp::ResourceSpans {
            resource: Some(otlp::Resource { attributes }),
            scope_spans: vec![otlp::ScopeSpans {
                scope: Some(otlp::InstrumentationScope {
                    name: "strait".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                }),
                spans,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

/// A flow's trace as its header carries it: the trace, the previous hop's span, and the spans
/// named for the hops still ahead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowTrace {
    pub trace_id: TraceId,
    pub parent_id: SpanId,
    pub hops: Vec<SpanId>,
}

/// The most hops a flow's trace may name (a flow crosses two gateways, a sibling replica at
/// most once more).
pub const MAX_HOPS: usize = 4;

impl FlowTrace {
    /// The wire form.
    pub fn to_wire(&self) -> crate::proto::peer::FlowTrace {
        crate::proto::peer::FlowTrace {
            trace_id: self.trace_id.to_vec(),
            parent_span_id: self.parent_id.to_vec(),
            hop_span_ids: self.hops.iter().map(|h| h.to_vec()).collect(),
        }
    }

    /// Reads a header's trace; `None` when malformed (the flow goes on untraced).
    pub fn from_wire(wire: &crate::proto::peer::FlowTrace) -> Option<Self> {
        if wire.hop_span_ids.len() > MAX_HOPS {
            return None;
        }
        Some(Self {
            trace_id: wire.trace_id.as_slice().try_into().ok()?,
            parent_id: wire.parent_span_id.as_slice().try_into().ok()?,
            hops: wire
                .hop_span_ids
                .iter()
                .map(|h| h.as_slice().try_into().ok())
                .collect::<Option<_>>()?,
        })
    }

    /// This hop's span (the first named), and the trace to pass on to the next hop; `None`
    /// when no hop is named.
    pub fn take_hop(&self) -> Option<(SpanId, FlowTrace)> {
        let (mine, rest) = self.hops.split_first()?;
        Some((
            *mine,
            FlowTrace {
                trace_id: self.trace_id,
                parent_id: *mine,
                hops: rest.to_vec(),
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_round_trips_and_bad_ones_start_a_new_trace() {
        let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let context = TraceContext::parse(header).unwrap();
        assert!(context.sampled);
        assert_eq!(context.header_from(context.parent_id), header.as_bytes());
        assert_eq!(context.trace_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        // Unsampled, and a later version with more fields.
        assert!(
            !TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
                .unwrap()
                .sampled
        );
        assert!(
            TraceContext::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz")
                .is_some()
        );
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            // The usual length, with a dash or a two-byte letter out of place.
            "00-4bf92f3577b34da6-3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa-ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0-",
            "00-4bf92f3577b34da6a3ce929d0e0e47\u{e9}-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-\u{e9}",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad:?}");
        }
        // Spaces around it are not part of it.
        assert_eq!(TraceContext::parse(format!(" {header}\t")), Some(context));
    }

    #[test]
    fn hex_is_what_format_writes_and_either_case_reads_back() {
        let every: Vec<u8> = (0..=255).collect();
        let formatted: String = every.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex(&every), formatted);
        // The header, every byte value in the ids, sampled or not.
        let bytes: Vec<u8> = (0..264).map(|i| (i % 256) as u8).collect();
        for (ids, sampled) in bytes
            .chunks_exact(24)
            .zip([true, false].into_iter().cycle())
        {
            let context = TraceContext {
                trace_id: ids[..16].try_into().unwrap(),
                parent_id: [7; 8],
                sampled,
            };
            let span: SpanId = ids[16..].try_into().unwrap();
            assert_eq!(
                context.header_from(span),
                format!(
                    "00-{}-{}-0{}",
                    hex(&ids[..16]),
                    hex(&span),
                    u8::from(sampled)
                )
                .as_bytes()
            );
        }
        let upper = "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-00";
        let context = TraceContext::parse(upper).unwrap();
        assert!(!context.sampled);
        assert_eq!(
            context.header_from(context.parent_id),
            upper.to_ascii_lowercase().as_bytes()
        );
        assert_eq!(
            TraceContext::parse("00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            None
        );
    }

    #[test]
    fn sampling_follows_the_rate() {
        assert!(sampled(1.0, u64::MAX));
        assert!(!sampled(0.0, 0));
        assert!(!sampled(f64::NAN, 0));
        let kept = (0..10_000u64)
            .filter(|i| sampled(0.25, i.wrapping_mul(0x9e37_79b9_7f4a_7c15)))
            .count();
        assert!((2_000..3_000).contains(&kept), "{kept}");
    }

    #[test]
    fn each_gateway_takes_its_hop_and_passes_the_rest_on() {
        let trace = FlowTrace {
            trace_id: [1; 16],
            parent_id: [2; 8],
            hops: vec![[3; 8], [4; 8]],
        };
        let wire = trace.to_wire();
        assert_eq!(FlowTrace::from_wire(&wire), Some(trace.clone()));
        let (first, on) = trace.take_hop().unwrap();
        assert_eq!(
            (first, on.parent_id, on.hops.clone()),
            ([3; 8], [3; 8], vec![[4; 8]])
        );
        let (second, last) = on.take_hop().unwrap();
        assert_eq!((second, last.parent_id), ([4; 8], [4; 8]));
        assert!(last.take_hop().is_none());
        let mut bad = wire;
        bad.trace_id = vec![1; 3];
        assert_eq!(FlowTrace::from_wire(&bad), None);
    }

    #[test]
    fn an_export_request_carries_the_resource_and_each_span() {
        let span = Span {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent_id: Some([3; 8]),
            name: "outbound shop/api".into(),
            kind: SpanKind::Client,
            start_unix_nanos: 10,
            end_unix_nanos: 20,
            attributes: vec![("http.response.status_code", Value::Int(200))],
            error: None,
        };
        let request = export_request(
            "strait-sidecar",
            &[("strait.cluster", Value::Text("east".into()))],
            &[span],
        );
        let resource = &request.resource_spans[0];
        assert_eq!(resource.resource.as_ref().unwrap().attributes.len(), 2);
        let sent = &resource.scope_spans[0].spans[0];
        assert_eq!((sent.kind, sent.parent_span_id.clone()), (3, vec![3; 8]));
    }
}
