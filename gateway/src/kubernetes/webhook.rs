//! The admission webhook that gives pods their sidecar as they are created: the API server sends
//! each new pod (`admission.k8s.io/v1` AdmissionReview, over HTTPS) and the gateway answers with
//! the JSON patch of [`inject`](super::inject), the same mutation `strait inject` prints. A pod is
//! injected when its namespace is labelled `strait.dev/inject: enabled` or the pod is annotated
//! or labelled so, and not annotated or labelled `disabled`. A pod the sidecar cannot be added to is refused with the
//! field at fault: never a pod that starts without its traffic.
//!
//! [`review`] decides (no IO); [`serve`] is the HTTPS server.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use k8s_openapi::ByteString;
use kube::runtime::reflector::{ObjectRef, Store};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use super::inject::{INJECT, Injection, Outcome, inject_pod};
use crate::Shared;

/// The largest AdmissionReview read (the API server's own limit on an object is 1.5 MiB).
const MAX_REVIEW: usize = 3 << 20;
/// How long one review may take to arrive.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The answer to one AdmissionReview request (`review`: the whole review the API server sent),
/// given the labels of the pod's namespace.
pub fn review(review: &Value, namespace_labels: &Value, injection: &Injection) -> Value {
    let request = &review["request"];
    let uid = request["uid"].clone();
    let answer = |response: Value| {
        let mut response = response;
        response["uid"] = uid.clone();
        json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "response": response,
        })
    };
    let allowed = || answer(json!({"allowed": true}));
    if request["kind"]["kind"] != "Pod" || request["operation"] != "CREATE" {
        return allowed();
    }
    let pod = &request["object"];
    // The pod's own word (an annotation, or a label: webhooks select pods by labels only)
    // before its namespace's.
    let annotation = &pod["metadata"]["annotations"][INJECT];
    let label = &pod["metadata"]["labels"][INJECT];
    let own = if annotation.is_null() {
        label
    } else {
        annotation
    };
    let wanted = own == "enabled" || (own.is_null() && namespace_labels[INJECT] == "enabled");
    if !wanted {
        return allowed();
    }
    let mut spec = pod["spec"].clone();
    let workload = super::inject::workload_of_pod(pod);
    match inject_pod(
        &pod["metadata"]["annotations"],
        &mut spec,
        injection,
        workload.as_deref(),
    ) {
        Ok(Outcome::Skipped(_)) => allowed(),
        Ok(Outcome::Injected) => {
            let mut annotations = pod["metadata"]["annotations"].clone();
            if !annotations.is_object() {
                annotations = json!({});
            }
            annotations[INJECT] = "enabled".into();
            let patch = json!([
                {"op": "replace", "path": "/spec", "value": spec},
                {"op": "add", "path": "/metadata/annotations", "value": annotations},
            ]);
            let bytes = serde_json::to_vec(&patch).unwrap_or_default();
            answer(json!({
                "allowed": true,
                "patchType": "JSONPatch",
                "patch": serde_json::to_value(ByteString(bytes)).unwrap_or_default(),
            }))
        }
        Err(e) => answer(json!({
            "allowed": false,
            "status": {
                "code": 422,
                "message": format!("strait cannot add its sidecar: spec.{e}"),
            },
        })),
    }
}

/// Serves the webhook on `listener` with the TLS of `config` until the gateway stops.
pub async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    namespaces: Store<k8s_openapi::api::core::v1::Namespace>,
    injection: Arc<Injection>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shared.shutdown.cancelled() => return,
        };
        let (acceptor, namespaces, injection) =
            (acceptor.clone(), namespaces.clone(), injection.clone());
        tokio::spawn(async move {
            let Ok(Ok(tls)) = tokio::time::timeout(READ_TIMEOUT, acceptor.accept(tcp)).await else {
                tracing::info!(remote = %remote, "webhook: TLS handshake failed");
                return;
            };
            let service = hyper::service::service_fn(move |request| {
                let (namespaces, injection) = (namespaces.clone(), injection.clone());
                async move {
                    Ok::<_, std::convert::Infallible>(
                        handle(request, &namespaces, &injection).await,
                    )
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(READ_TIMEOUT)
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}

fn plain(status: StatusCode, text: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = status;
    response
}

async fn handle(
    request: Request<hyper::body::Incoming>,
    namespaces: &Store<k8s_openapi::api::core::v1::Namespace>,
    injection: &Injection,
) -> Response<Full<Bytes>> {
    if request.method() != Method::POST || request.uri().path() != "/mutate" {
        return plain(StatusCode::NOT_FOUND, "POST /mutate\n".into());
    }
    let body = Limited::new(request.into_body(), MAX_REVIEW).collect();
    let body = match tokio::time::timeout(READ_TIMEOUT, body).await {
        Ok(Ok(body)) => body.to_bytes(),
        Ok(Err(e)) => {
            return plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("reading the review: {e}\n"),
            );
        }
        Err(_) => {
            return plain(
                StatusCode::REQUEST_TIMEOUT,
                "the review took too long\n".into(),
            );
        }
    };
    let Ok(review_json) = serde_json::from_slice::<Value>(&body) else {
        return plain(
            StatusCode::BAD_REQUEST,
            "not an AdmissionReview (JSON)\n".into(),
        );
    };
    let namespace = review_json["request"]["namespace"]
        .as_str()
        .unwrap_or_default();
    let labels = namespaces
        .get(&ObjectRef::new(namespace))
        .and_then(|n| serde_json::to_value(&n.metadata.labels).ok())
        .unwrap_or(Value::Null);
    let answer = review(&review_json, &labels, injection);
    let mut response = Response::new(Full::new(Bytes::from(
        serde_json::to_vec(&answer).unwrap_or_default(),
    )));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::super::inject::tests::injection;

    fn pod_review(annotations: Value, port: u16) -> Value {
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
            "uid": "u-1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "operation": "CREATE", "namespace": "shop",
            "object": {"metadata": {"name": "web", "annotations": annotations},
                       "spec": {"containers": [{"name": "web", "ports": [{"containerPort": port}]}]}},
        }})
    }

    fn patch(answer: &Value) -> Value {
        let bytes: ByteString =
            serde_json::from_value(answer["response"]["patch"].clone()).unwrap();
        serde_json::from_slice(&bytes.0).unwrap()
    }

    #[test]
    fn a_pod_of_a_labelled_namespace_is_patched_with_what_strait_inject_adds() {
        let enabled = json!({INJECT: "enabled"});
        let answer = review(&pod_review(Value::Null, 8080), &enabled, &injection());
        assert_eq!(answer["response"]["uid"], "u-1");
        assert_eq!(answer["response"]["allowed"], true);
        let ops = patch(&answer);
        let mut expected = pod_review(Value::Null, 8080)["request"]["object"]["spec"].clone();
        inject_pod(&Value::Null, &mut expected, &injection(), Some("pod/web")).unwrap();
        assert_eq!(ops[0]["value"], expected);
        assert_eq!(ops[1]["value"][INJECT], "enabled");
    }

    #[test]
    fn the_annotation_decides_over_the_namespace_and_other_objects_pass() {
        let none = Value::Null;
        let enabled = json!({INJECT: "enabled"});
        let by_annotation = review(&pod_review(enabled.clone(), 8080), &none, &injection());
        assert!(by_annotation["response"]["patch"].is_string());
        let refused = review(
            &pod_review(json!({INJECT: "disabled"}), 8080),
            &enabled,
            &injection(),
        );
        assert!(refused["response"]["patch"].is_null());
        assert_eq!(refused["response"]["allowed"], true);
        let unlabelled = review(&pod_review(Value::Null, 8080), &none, &injection());
        assert!(unlabelled["response"]["patch"].is_null());
        let mut labelled = pod_review(Value::Null, 8080);
        labelled["request"]["object"]["metadata"]["labels"] = json!({INJECT: "enabled"});
        assert!(review(&labelled, &none, &injection())["response"]["patch"].is_string());
    }

    #[test]
    fn a_pod_the_sidecar_cannot_join_is_refused_naming_the_field() {
        let answer = review(
            &pod_review(Value::Null, 15006),
            &json!({INJECT: "enabled"}),
            &injection(),
        );
        assert_eq!(answer["response"]["allowed"], false);
        let message = answer["response"]["status"]["message"].as_str().unwrap();
        assert!(
            message.starts_with(
                "strait cannot add its sidecar: spec.containers[0].ports[0].containerPort: 15006"
            ),
            "{message}"
        );
    }
}
