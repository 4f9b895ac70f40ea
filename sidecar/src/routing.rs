//! HTTPRoute on the outbound path: the rule a request matches, the backend its weights pick
//! (another service of the namespace, or one cluster of a service), and the header edits the
//! rule makes. Routes apply to a service's names (`<svc>.<ns>.svc.clusterset.local`, and this
//! cluster's own names for it); a name of one endpoint, or of another cluster, is taken as
//! the caller wrote it.

use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use strait_federation::catalog::ServiceKey;
use strait_federation::policy::route::{Backend, HeaderEdits, Route, RouteRule};

use crate::directory::{Destination, Directory};

/// What a route decided for one request.
pub struct Routed<'d> {
    pub route: &'d Route,
    /// The rule's position in its route (retry budgets are kept per rule).
    pub index: usize,
    pub rule: &'d RouteRule,
    pub backend: &'d Backend,
}

impl Routed<'_> {
    /// Where the request goes: the backend's service (and cluster, when it names one).
    pub fn destination(&self, original: &Destination) -> Destination {
        Destination {
            service: ServiceKey {
                namespace: original.service.namespace.clone(),
                name: self.backend.service.clone(),
            },
            cluster: self.backend.cluster.clone().or(original.cluster.clone()),
            hostname: None,
            port: original.port,
        }
    }

    /// The key of the rule's retry budget.
    pub fn budget_key(&self) -> String {
        format!(
            "{}/{}#{}",
            self.route.namespace, self.route.name, self.index
        )
    }
}

/// The route rule for a request to `dest`, if a route of its service has one that matches.
pub fn select<'d>(
    directory: &'d Directory,
    dest: &Destination,
    method: &str,
    path: &str,
    headers: &HeaderMap,
    random: u64,
) -> Option<Routed<'d>> {
    let this_cluster = dest.cluster.is_none() || dest.cluster == directory.cluster;
    if dest.hostname.is_some() || !this_cluster {
        return None;
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    directory
        .policies
        .routes(&dest.service)
        .iter()
        .find_map(|route| {
            let (rule, backend) = route.select(method, path, header, random)?;
            let index = route.rules.iter().position(|r| std::ptr::eq(r, rule))?;
            Some(Routed {
                route,
                index,
                rule,
                backend,
            })
        })
}

/// Makes a rule's header edits: removals, then replacements, then additions. The names and
/// values were checked when the route was applied; one that still does not convert is skipped.
pub fn edit(headers: &mut HeaderMap, edits: &HeaderEdits) {
    for name in &edits.remove {
        headers.remove(name.as_str());
    }
    let convert = |(name, value): &(String, String)| {
        Some((
            HeaderName::from_bytes(name.as_bytes()).ok()?,
            HeaderValue::from_str(value).ok()?,
        ))
    };
    for (name, value) in edits.set.iter().filter_map(convert) {
        headers.insert(name, value);
    }
    for (name, value) in edits.add.iter().filter_map(convert) {
        headers.append(name, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_edits_remove_then_set_then_add() {
        let mut headers = HeaderMap::new();
        headers.insert("x-debug", HeaderValue::from_static("1"));
        headers.insert("x-route", HeaderValue::from_static("old"));
        headers.insert("x-tag", HeaderValue::from_static("a"));
        let edits = HeaderEdits {
            set: vec![("x-route".into(), "v2".into())],
            add: vec![("x-tag".into(), "b".into())],
            remove: vec!["x-debug".into()],
        };
        edit(&mut headers, &edits);
        assert!(headers.get("x-debug").is_none());
        assert_eq!(headers.get("x-route").unwrap(), "v2");
        let tags: Vec<_> = headers.get_all("x-tag").iter().collect();
        assert_eq!(tags, ["a", "b"]);
    }
}
