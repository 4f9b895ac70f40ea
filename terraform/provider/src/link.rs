//! `strait_link`: two clusters peered, as `strait link` and `strait apply` do it by hand. Create
//! asks the acceptor's gateway for a Link document (holding a join token) and applies it on the
//! dialer's gateway, which dials; the token lives only in memory, for that one use. Read asks
//! both gateways, so a link removed outside Terraform is a change to make. Delete unlinks both
//! sides.

use std::time::Duration;

use strait_federation::duration::parse_duration;
use strait_federation::proto::operator::LinkView;

use crate::diagnostic::{Diagnostic, from_error};
use crate::gateways::{Gateway, Gateways};
use crate::value::Value;

/// How long a join token waits for its first use when `token_ttl` is not set: long enough for
/// the apply that mints it, short enough to be worthless soon after.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(10 * 60);

/// The link a configuration or state names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkConfig {
    pub dialer: String,
    pub acceptor: String,
    pub address: Option<String>,
    pub token_ttl: Duration,
}

impl LinkConfig {
    /// Reads a (known) configuration or state, checking what can be checked offline.
    pub fn read(value: &Value) -> Result<LinkConfig, Diagnostic> {
        let text = |name: &'static str| -> Result<String, Diagnostic> {
            match value.get(name) {
                Value::String(text) if !text.trim().is_empty() => Ok(text.clone()),
                _ => Err(Diagnostic::error(
                    format!("{name} is empty"),
                    format!("{name} names a context of the strait contexts file"),
                )
                .at(name)),
            }
        };
        let dialer = text("dialer")?;
        let acceptor = text("acceptor")?;
        if dialer == acceptor {
            return Err(Diagnostic::error(
                "a cluster cannot link to itself",
                format!("dialer and acceptor are both {dialer:?}"),
            )
            .at("acceptor"));
        }
        let address = value.get("address").as_str().map(str::to_owned);
        if let Some(address) = &address {
            check_address(address)?;
        }
        let token_ttl = match value.get("token_ttl").as_str() {
            None => DEFAULT_TOKEN_TTL,
            Some(text) => parse_duration(text)
                .map_err(|e| Diagnostic::error("bad token_ttl", e.to_string()).at("token_ttl"))?,
        };
        Ok(LinkConfig {
            dialer,
            acceptor,
            address,
            token_ttl,
        })
    }

    /// `DIALER/ACCEPTOR`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.dialer, self.acceptor)
    }
}

/// A gateway address must be `host:port`, as `strait link --address` takes it.
fn check_address(address: &str) -> Result<(), Diagnostic> {
    let bad = |why: &str| {
        Err(Diagnostic::error(
            "bad address",
            format!(
                "{address:?}: {why}; expected host:port, such as a gateway module's gateway_address"
            ),
        )
        .at("address"))
    };
    let Some((host, port)) = address.rsplit_once(':') else {
        return bad("no port");
    };
    if host.is_empty() {
        return bad("no host");
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => bad("the port is not a number from 1 to 65535"),
        Ok(_) => Ok(()),
    }
}

/// Checks a configuration at `terraform validate` (parts known only later are skipped).
pub fn validate(config: &Value) -> Vec<Diagnostic> {
    if !config.is_known() {
        return Vec::new();
    }
    LinkConfig::read(config).err().into_iter().collect()
}

/// The configuration with a cleared `id` for an import of `DIALER/ACCEPTOR`.
pub fn import(id: &str) -> Result<Value, Diagnostic> {
    let parts = id.split_once('/').filter(|(dialer, acceptor)| {
        !dialer.is_empty() && !acceptor.is_empty() && !acceptor.contains('/')
    });
    let Some((dialer, acceptor)) = parts else {
        return Err(Diagnostic::error(
            "bad import id",
            format!("{id:?}: a strait_link is imported as DIALER/ACCEPTOR (two context names)"),
        ));
    };
    Ok(Value::object([
        ("dialer", Value::string(dialer)),
        ("acceptor", Value::string(acceptor)),
        ("id", Value::string(id)),
    ]))
}

/// The changes that replace a link beyond the schema's (dialer, acceptor): another `address`.
/// A link whose address is not known (one imported) takes the configured one without being
/// made again.
pub fn replacing(prior: &Value, proposed: &Value) -> Vec<&'static str> {
    match prior.get("address") {
        Value::String(_) if prior.get("address") != proposed.get("address") => vec!["address"],
        _ => Vec::new(),
    }
}

/// A gateway's peering with `cluster` in `role` ("dialer": it dials the cluster; "acceptor":
/// the cluster dials it). A peering the other way round is another link.
fn peering_with<'a>(links: &'a [LinkView], role: &str, cluster: &Gateway) -> Option<&'a LinkView> {
    links
        .iter()
        .find(|l| l.role == role && l.cluster == cluster.context.cluster.as_str())
}

/// A gateway's peerings; `side` (dialer, acceptor) names it in the error.
async fn links(gateway: &Gateway, side: &str) -> Result<Vec<LinkView>, Diagnostic> {
    gateway
        .links()
        .await
        .map_err(|e| from_error(&format!("cannot read the {side}'s links"), &e))
}

fn state(config: &LinkConfig, dialer: &Gateway, acceptor: &Gateway, view: &LinkView) -> Value {
    Value::object([
        ("dialer", Value::string(&config.dialer)),
        ("acceptor", Value::string(&config.acceptor)),
        (
            "address",
            config.address.clone().map_or(Value::Null, Value::String),
        ),
        ("id", Value::string(config.id())),
        (
            "dialer_cluster",
            Value::string(dialer.context.cluster.as_str()),
        ),
        (
            "acceptor_cluster",
            Value::string(acceptor.context.cluster.as_str()),
        ),
        ("peer_address", Value::string(&view.address)),
        ("state", Value::string(&view.state)),
    ])
}

/// Keeps `token_ttl` as configured (it lives only in configuration).
fn with_token_ttl(mut state: Value, from: &Value) -> Value {
    state.set("token_ttl", from.get("token_ttl").clone());
    state
}

async fn both(gateways: &Gateways, config: &LinkConfig) -> Result<(Gateway, Gateway), Diagnostic> {
    let dialer = gateways
        .gateway(Some(&config.dialer))
        .await
        .map_err(|e| from_error("cannot reach the dialer's gateway", &e).at("dialer"))?;
    let acceptor = gateways
        .gateway(Some(&config.acceptor))
        .await
        .map_err(|e| from_error("cannot reach the acceptor's gateway", &e).at("acceptor"))?;
    if dialer.context.cluster == acceptor.context.cluster {
        return Err(Diagnostic::error(
            "a cluster cannot link to itself",
            format!(
                "contexts {} and {} are both cluster {}",
                config.dialer, config.acceptor, dialer.context.cluster
            ),
        )
        .at("acceptor"));
    }
    Ok((dialer, acceptor))
}

/// Makes the link: a join token from the acceptor, the Link applied on the dialer (which
/// waits for the first connection). The new state, or the state so far with the error (then
/// Terraform keeps the resource as tainted, to be made again).
pub async fn create(gateways: &Gateways, planned: &Value) -> Result<Value, (Value, Diagnostic)> {
    let config = LinkConfig::read(planned).map_err(|d| (Value::Null, d))?;
    let (dialer, acceptor) = both(gateways, &config)
        .await
        .map_err(|d| (Value::Null, d))?;
    wait_for_reversed_link(&dialer, &acceptor)
        .await
        .map_err(|d| (Value::Null, d))?;
    let document = acceptor
        .create_link(config.token_ttl, config.address.as_deref().unwrap_or(""))
        .await
        .map_err(|e| {
            (
                Value::Null,
                from_error("the acceptor's gateway did not mint a join token", &e),
            )
        })?;
    let source = format!("strait_link {}", config.id());
    dialer
        .apply(&source, &document)
        .await
        .map_err(|e| (Value::Null, from_error("the dialer refused the Link", &e)))?;
    // The dialer waited for the first connection; a link not up on both sides by now fails
    // the apply (the dialer keeps retrying, and the next apply makes it again).
    let not_up = |state: Value, why: String| {
        Err((
            with_token_ttl(state, planned),
            Diagnostic::error(
                format!(
                    "cluster {} could not link to cluster {}",
                    dialer.context.cluster, acceptor.context.cluster
                ),
                why,
            ),
        ))
    };
    match read_with(&config, &dialer, &acceptor).await {
        Ok(Some(state)) if state.get("state").as_str() == Some("connected") => {
            Ok(with_token_ttl(state, planned))
        }
        Ok(Some(state)) => {
            let why = format!(
                "the dialer's gateway (context {}) says the link is {}",
                config.dialer,
                state.get("state").as_str().unwrap_or("down")
            );
            not_up(state, why)
        }
        Ok(None) => {
            let pending = LinkView {
                cluster: acceptor.context.cluster.to_string(),
                state: "connecting".into(),
                ..Default::default()
            };
            let why = format!(
                "cluster {} applied the Link, but the link is not listed on both sides",
                dialer.context.cluster
            );
            not_up(state(&config, &dialer, &acceptor, &pending), why)
        }
        Err(d) => Err((Value::Null, d)),
    }
}

/// How long a create waits for the same two clusters' link the other way round to go.
const REVERSED_LINK_WAIT: Duration = Duration::from_secs(30);

/// A gateway refuses a Link to a cluster that already dials it. When a list of clusters is
/// reordered, Terraform destroys the old direction and creates the new one in either order:
/// the create waits for the destroy, and fails only if the old link stays.
async fn wait_for_reversed_link(dialer: &Gateway, acceptor: &Gateway) -> Result<(), Diagnostic> {
    let started = tokio::time::Instant::now();
    while peering_with(&links(dialer, "dialer").await?, "acceptor", acceptor).is_some() {
        if started.elapsed() > REVERSED_LINK_WAIT {
            return Err(Diagnostic::error(
                "the clusters are linked the other way round",
                format!(
                    "cluster {} dials cluster {} (waited {} s for that link to go); unlink it or destroy its strait_link first",
                    acceptor.context.cluster,
                    dialer.context.cluster,
                    REVERSED_LINK_WAIT.as_secs()
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}

/// The link as the dialer and the acceptor see it; none when either lacks it.
async fn read_with(
    config: &LinkConfig,
    dialer: &Gateway,
    acceptor: &Gateway,
) -> Result<Option<Value>, Diagnostic> {
    let dialer_links = links(dialer, "dialer").await?;
    let acceptor_links = links(acceptor, "acceptor").await?;
    let on_dialer = peering_with(&dialer_links, "dialer", acceptor);
    let on_acceptor = peering_with(&acceptor_links, "acceptor", dialer);
    Ok(on_dialer
        .zip(on_acceptor)
        .map(|(view, _)| state(config, dialer, acceptor, view)))
}

/// The link as it is now, or null when either side lacks it.
pub async fn read(gateways: &Gateways, prior: &Value) -> Result<Value, Diagnostic> {
    let config = LinkConfig::read(prior)?;
    let (dialer, acceptor) = both(gateways, &config).await?;
    Ok(read_with(&config, &dialer, &acceptor)
        .await?
        .map_or(Value::Null, |state| with_token_ttl(state, prior)))
}

/// Removes the link from both sides; a side that no longer has it is fine. Only a peering in
/// this direction is removed: a link the other way round (made by another resource) stays.
pub async fn delete(gateways: &Gateways, prior: &Value) -> Result<(), Diagnostic> {
    let config = LinkConfig::read(prior)?;
    let (dialer, acceptor) = both(gateways, &config).await?;
    if peering_with(&links(&dialer, "dialer").await?, "dialer", &acceptor).is_some() {
        // The dialer tells the acceptor.
        dialer
            .unlink(acceptor.context.cluster.as_str())
            .await
            .map_err(|e| from_error("the dialer did not unlink", &e))?;
    }
    if peering_with(&links(&acceptor, "acceptor").await?, "acceptor", &dialer).is_some() {
        acceptor
            .unlink(dialer.context.cluster.as_str())
            .await
            .map_err(|e| from_error("the acceptor did not unlink", &e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(address: Value, ttl: Value) -> Value {
        Value::object([
            ("dialer", Value::string("east")),
            ("acceptor", Value::string("west")),
            ("address", address),
            ("token_ttl", ttl),
        ])
    }

    #[test]
    fn a_configuration_reads_with_the_default_token_ttl() {
        let read = LinkConfig::read(&config(Value::Null, Value::Null)).unwrap();
        assert_eq!(read.token_ttl, DEFAULT_TOKEN_TTL);
        assert_eq!(read.id(), "east/west");
        let read = LinkConfig::read(&config(
            Value::string("gw.example.com:4433"),
            Value::string("30m"),
        ))
        .unwrap();
        assert_eq!(read.token_ttl, Duration::from_secs(1800));
        assert_eq!(read.address.as_deref(), Some("gw.example.com:4433"));
    }

    #[test]
    fn bad_configurations_name_the_attribute() {
        let cases = [
            (
                config(Value::string("gw.example.com"), Value::Null),
                "address",
            ),
            (config(Value::string(":4433"), Value::Null), "address"),
            (config(Value::string("gw:0"), Value::Null), "address"),
            (
                config(Value::Null, Value::string("ten minutes")),
                "token_ttl",
            ),
        ];
        for (value, attribute) in cases {
            let diagnostics = validate(&value);
            assert_eq!(diagnostics.len(), 1, "{value:?}");
            assert_eq!(diagnostics[0].attribute, Some(attribute), "{diagnostics:?}");
        }
        let mut itself = config(Value::Null, Value::Null);
        itself.set("acceptor", Value::string("east"));
        let diagnostics = validate(&itself);
        assert!(diagnostics[0].summary.contains("itself"), "{diagnostics:?}");
    }

    #[test]
    fn a_configuration_known_only_later_is_not_judged_yet() {
        assert!(validate(&config(Value::Unknown, Value::Null)).is_empty());
    }

    #[test]
    fn an_import_id_names_dialer_and_acceptor() {
        let value = import("east/west").unwrap();
        assert_eq!(value.get("dialer").as_str(), Some("east"));
        assert_eq!(value.get("acceptor").as_str(), Some("west"));
        for bad in ["east", "east/", "/west", "east/west/north"] {
            assert!(import(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn another_address_replaces_a_link_unless_its_address_was_unknown() {
        let prior = config(Value::string("a.example:4433"), Value::Null);
        let moved = config(Value::string("b.example:4433"), Value::Null);
        assert_eq!(replacing(&prior, &moved), vec!["address"]);
        assert!(replacing(&prior, &prior).is_empty());
        let imported = config(Value::Null, Value::Null);
        assert!(replacing(&imported, &moved).is_empty());
    }
}
