//! Issuers' key sets that RequestAuthentications fetch from URLs served inside the mesh
//! (`jwksUri`): fetched through this sidecar's own outbound path (so over the mesh's mutual
//! TLS, from whichever cluster serves the keys), kept, refreshed every few minutes, and fetched
//! again early when a token names a key the set lacks, as an issuer's key rotation looks. A set
//! that cannot be fetched again is kept (fail static).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::{Request, StatusCode, header};
use strait_federation::policy::authentication::{self, JwkSet, MAX_JWKS_BYTES};

use crate::connect::BoxError;
use crate::{Shared, connect, outbound};

/// How often a key set in use is fetched again.
pub const REFRESH: Duration = Duration::from_secs(300);
/// The least time between two fetches of one URL (a token naming an unknown key, or a failed
/// fetch, does not make every request fetch).
pub const MIN_REFETCH: Duration = Duration::from_secs(10);
/// How long one fetch may take, body included.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(3);

/// What is known of one URL.
#[derive(Default)]
struct State {
    keys: Option<Arc<JwkSet>>,
    /// When the last fetch started.
    attempted: Option<Instant>,
    /// When the keys were last fetched successfully.
    fetched: Option<Instant>,
}

/// One URL's keys and the lock that lets one fetch run at a time.
#[derive(Default)]
struct Entry {
    state: Mutex<State>,
    fetching: tokio::sync::Mutex<()>,
}

impl Entry {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The key sets of every `jwksUri` this sidecar's policies name.
#[derive(Default)]
pub struct KeySets {
    entries: Mutex<HashMap<String, Arc<Entry>>>,
}

impl KeySets {
    fn entry(&self, uri: &str) -> Arc<Entry> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.entry(uri.to_owned()).or_default().clone()
    }

    /// The keys of `uri` for a token naming key `kid`: the kept set, or one fetched now when
    /// none is kept or the kept one lacks `kid` (at most once per [`MIN_REFETCH`]). A fetch
    /// already under way is waited for.
    pub async fn keys(
        &self,
        shared: &Arc<Shared>,
        uri: &str,
        kid: Option<&str>,
    ) -> Option<Arc<JwkSet>> {
        let entry = self.entry(uri);
        let fresh_enough = |state: &State| {
            let recent = state.attempted.is_some_and(|at| at.elapsed() < MIN_REFETCH);
            match &state.keys {
                Some(keys) => recent || kid.is_none_or(|kid| has_key(keys, kid)),
                None => recent,
            }
        };
        {
            let state = entry.state();
            if state.keys.is_some() && fresh_enough(&state) {
                return state.keys.clone();
            }
        }
        let _fetching = entry.fetching.lock().await;
        // Another request may have fetched while this one waited.
        if !fresh_enough(&entry.state()) {
            fetch_into(shared.clone(), uri.to_owned(), entry.clone()).await;
        }
        entry.state().keys.clone()
    }

    /// Forgets the URLs no policy names any more.
    fn retain(&self, uris: &[String]) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.retain(|uri, _| uris.contains(uri));
    }
}

fn has_key(keys: &JwkSet, kid: &str) -> bool {
    keys.keys
        .iter()
        .any(|k| k.common.key_id.as_deref() == Some(kid))
}

/// Fetches `uri` and keeps what came, or keeps the old set. The fetch runs in a task of its
/// own, so that it completes (and is kept) even when the request waiting for it goes away, and
/// so that the inbound path's future does not contain the outbound path's.
async fn fetch_into(shared: Arc<Shared>, uri: String, entry: Arc<Entry>) {
    entry.state().attempted = Some(Instant::now());
    let _ = tokio::spawn(fetch_and_keep(shared, uri, entry)).await;
}

async fn fetch_and_keep(shared: Arc<Shared>, uri: String, entry: Arc<Entry>) {
    let fetched = tokio::time::timeout(FETCH_TIMEOUT, fetch(shared.clone(), uri.clone()))
        .await
        .unwrap_or(Err(FetchError::TimedOut));
    let mut state = entry.state();
    match fetched {
        Ok(keys) => {
            let old = state
                .keys
                .as_deref()
                .and_then(|k| serde_json::to_value(k).ok());
            if old != serde_json::to_value(&keys).ok() {
                tracing::info!(uri = %uri, keys = keys.keys.len(), "fetched an issuer's key set");
            }
            shared.metrics.key_set_fetch("ok");
            state.keys = Some(Arc::new(keys));
            state.fetched = Some(Instant::now());
        }
        Err(error) => {
            shared.metrics.key_set_fetch("error");
            tracing::warn!(uri = %uri, error = %error, kept = state.keys.is_some(), "cannot fetch an issuer's key set");
        }
    }
}

/// Why a key set could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URL does not make a request.
    #[error(transparent)]
    Request(hyper::http::Error),
    #[error("the key set's body: {0}")]
    Body(#[source] BoxError),
    #[error("the key set is over {} bytes", MAX_JWKS_BYTES)]
    TooLarge,
    /// Any status but 200, with the start of what was said.
    #[error("answered {status}: {said}")]
    Answered { status: StatusCode, said: String },
    #[error("not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    /// JSON, but not a set of public keys: where in the document, and what is wrong there.
    #[error("jwks{at}: {problem}")]
    NotKeys { at: String, problem: String },
    #[error("no key set within {:?}", FETCH_TIMEOUT)]
    TimedOut,
}

/// One GET of a key set through the mesh: 200, at most [`MAX_JWKS_BYTES`], public keys only.
async fn fetch(shared: Arc<Shared>, uri: String) -> Result<JwkSet, FetchError> {
    let request = Request::get(uri.as_str())
        .header(header::ACCEPT, "application/json")
        .body(connect::full(Bytes::new()))
        .map_err(FetchError::Request)?;
    let response = outbound::proxy_http(shared, request, None).await;
    let status = response.status();
    let mut body = response.into_body();
    let mut received = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(FetchError::Body)?;
        if let Ok(data) = frame.into_data() {
            if received.len() + data.len() > MAX_JWKS_BYTES {
                return Err(FetchError::TooLarge);
            }
            received.extend_from_slice(&data);
        }
    }
    if status != StatusCode::OK {
        let said = String::from_utf8_lossy(&received[..received.len().min(200)]);
        return Err(FetchError::Answered {
            status,
            said: said.trim().to_owned(),
        });
    }
    let value: serde_json::Value =
        serde_json::from_slice(&received).map_err(FetchError::NotJson)?;
    authentication::public_keys(&value).map_err(|(at, problem)| FetchError::NotKeys { at, problem })
}

/// Keeps the key sets of the sidecar's policies fetched: each new URL at once, each one in use
/// every [`REFRESH`]; forgets those no policy names any more.
pub async fn refresh(shared: Arc<Shared>) {
    let mut views = shared.directory.subscribe();
    let mut tick = tokio::time::interval(MIN_REFETCH);
    loop {
        let uris: Vec<String> = match shared.own_service.as_ref() {
            Some(own) => {
                let directory = views.borrow_and_update().clone();
                let policies = directory
                    .policies
                    .authentications(&own.namespace, &own.name);
                let mut uris: Vec<String> = authentication::key_uris(policies)
                    .map(str::to_owned)
                    .collect();
                uris.sort();
                uris.dedup();
                uris
            }
            None => Vec::new(),
        };
        shared.key_sets.retain(&uris);
        for uri in uris {
            let entry = shared.key_sets.entry(&uri);
            let due = {
                let state = entry.state();
                match (state.fetched, state.attempted) {
                    (Some(fetched), _) => fetched.elapsed() >= REFRESH,
                    (None, attempted) => attempted.is_none_or(|at| at.elapsed() >= MIN_REFETCH),
                }
            };
            // A fetch already running (a request's) is enough.
            if due && let Ok(_fetching) = entry.fetching.try_lock() {
                fetch_into(shared.clone(), uri, entry.clone()).await;
            }
        }
        tokio::select! {
            changed = views.changed() => if changed.is_err() { return },
            _ = tick.tick() => {}
            () = shared.shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_fetch_says_why_as_it_always_has() {
        assert_eq!(
            FetchError::TooLarge.to_string(),
            format!("the key set is over {MAX_JWKS_BYTES} bytes")
        );
        assert_eq!(FetchError::TimedOut.to_string(), "no key set within 3s");
        let answered = FetchError::Answered {
            status: StatusCode::NOT_FOUND,
            said: "no such page".into(),
        };
        assert_eq!(answered.to_string(), "answered 404 Not Found: no such page");
        let not_keys = FetchError::NotKeys {
            at: ".keys[0]".into(),
            problem: "not a public key".into(),
        };
        assert_eq!(not_keys.to_string(), "jwks.keys[0]: not a public key");
    }
}
