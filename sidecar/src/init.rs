//! The packet redirection behind `strait sidecar init`: in a pod's network namespace, the app's
//! outbound TCP goes to the sidecar's transparent port and TCP arriving for the app goes to the
//! sidecar's inbound port, while the sidecar's own traffic (by its uid) passes untouched.
//!
//! [`restore_input`] decides (no IO): from what `iptables-save -t nat` shows now, the input for
//! `iptables-restore --noflush` that makes the rules so. Strait's two chains are declared, so a
//! second run rebuilds them rather than adding to them, and the jumps into them are written only
//! when absent: running it twice leaves the table as once. [`apply`] runs the two commands.

use std::io::Write as _;
use std::net::IpAddr;
use std::process::{Command, Stdio};

/// The chain that inbound TCP (nat PREROUTING) goes through.
pub const INBOUND_CHAIN: &str = "STRAIT_INBOUND";
/// The chain that the pod's outbound TCP (nat OUTPUT) goes through.
pub const OUTPUT_CHAIN: &str = "STRAIT_OUTPUT";

/// Which inbound ports go to the sidecar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboundPorts {
    /// Every port but the skipped ones.
    All,
    /// These ports only (the pod's container ports).
    Only(Vec<u16>),
}

/// A destination range that outbound connections reach directly, not through the sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub address: IpAddr,
    pub prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (address, prefix) = text
            .split_once('/')
            .ok_or_else(|| format!("{text:?} is not a CIDR range (ADDRESS/PREFIX)"))?;
        let address: IpAddr = address
            .parse()
            .map_err(|_| format!("{text:?}: {address:?} is not an IP address"))?;
        let most = if address.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= most)
            .ok_or_else(|| format!("{text:?}: the prefix must be 0 to {most}"))?;
        Ok(Self { address, prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

/// What `strait sidecar init` sets up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    /// The uid the sidecar runs as: its connections are never redirected.
    pub proxy_uid: u32,
    /// The sidecar's transparent listener (`--transparent-addr`).
    pub outbound_port: u16,
    /// The sidecar's inbound listener (`--inbound-addr`).
    pub inbound_port: u16,
    pub inbound_ports: InboundPorts,
    /// Inbound ports that reach the app directly (the sidecar's admin port, probes).
    pub skip_inbound_ports: Vec<u16>,
    /// Outbound destination ports reached directly.
    pub skip_outbound_ports: Vec<u16>,
    /// Outbound destinations reached directly.
    pub skip_outbound_cidrs: Vec<Cidr>,
}

/// Which table family: `iptables` or `ip6tables`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn save(self) -> &'static str {
        match self {
            Family::V4 => "iptables-save",
            Family::V6 => "ip6tables-save",
        }
    }

    fn restore(self) -> &'static str {
        match self {
            Family::V4 => "iptables-restore",
            Family::V6 => "ip6tables-restore",
        }
    }

    fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.0/8",
            Family::V6 => "::1/128",
        }
    }

    fn holds(self, address: IpAddr) -> bool {
        address.is_ipv4() == (self == Family::V4)
    }
}

/// The jump from a built-in chain into one of ours, as `iptables-save` prints it.
fn jump(from: &str, to: &str) -> String {
    format!("-A {from} -p tcp -j {to}")
}

/// The `iptables-restore --noflush` input that makes the nat table of `family` redirect as
/// `redirect` says, given what `iptables-save -t nat` printed (`saved`; empty for a fresh
/// namespace). Strait's chains are declared, which empties them before they are filled again;
/// the jumps into them are added only when `saved` lacks them.
pub fn restore_input(redirect: &Redirect, family: Family, saved: &str) -> String {
    let mut out = vec!["*nat".to_owned()];
    out.push(format!(":{INBOUND_CHAIN} - [0:0]"));
    out.push(format!(":{OUTPUT_CHAIN} - [0:0]"));
    for (from, to) in [("PREROUTING", INBOUND_CHAIN), ("OUTPUT", OUTPUT_CHAIN)] {
        let rule = jump(from, to);
        if !saved.lines().any(|line| line.trim() == rule) {
            out.push(rule);
        }
    }
    let inbound = |rest: String| format!("-A {INBOUND_CHAIN} -p tcp {rest}");
    let to_inbound = format!("-j REDIRECT --to-ports {}", redirect.inbound_port);
    // Connections already addressed to the sidecar, and the ports that must reach the app.
    out.push(inbound(format!(
        "--dport {} -j RETURN",
        redirect.inbound_port
    )));
    for port in &redirect.skip_inbound_ports {
        out.push(inbound(format!("--dport {port} -j RETURN")));
    }
    match &redirect.inbound_ports {
        InboundPorts::All => out.push(inbound(to_inbound)),
        InboundPorts::Only(ports) => {
            for port in ports {
                out.push(inbound(format!("--dport {port} {to_inbound}")));
            }
        }
    }
    let output = |rest: String| format!("-A {OUTPUT_CHAIN} {rest}");
    out.push(output(format!(
        "-m owner --uid-owner {} -j RETURN",
        redirect.proxy_uid
    )));
    out.push(output(format!("-d {} -j RETURN", family.loopback())));
    for port in &redirect.skip_outbound_ports {
        out.push(output(format!("-p tcp --dport {port} -j RETURN")));
    }
    for cidr in redirect
        .skip_outbound_cidrs
        .iter()
        .filter(|c| family.holds(c.address))
    {
        out.push(output(format!("-d {cidr} -j RETURN")));
    }
    out.push(output(format!(
        "-p tcp -j REDIRECT --to-ports {}",
        redirect.outbound_port
    )));
    out.push("COMMIT".to_owned());
    out.join("\n") + "\n"
}

/// Why the rules could not be set.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(
        "cannot run {command}: {source} (the init container needs iptables, and NET_ADMIN and NET_RAW)"
    )]
    Spawn {
        command: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{command} failed ({status}): {stderr}")]
    Failed {
        command: &'static str,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

fn run(command: &'static str, args: &[&str], input: Option<&str>) -> Result<String, InitError> {
    let spawn = |source| InitError::Spawn { command, source };
    let mut child = Command::new(command)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn)?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(input.as_bytes()).map_err(spawn)?;
    }
    let output = child.wait_with_output().map_err(spawn)?;
    if !output.status.success() {
        return Err(InitError::Failed {
            command,
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Sets the rules of `family` in this network namespace; returns what was given to
/// `iptables-restore`.
pub fn apply(redirect: &Redirect, family: Family) -> Result<String, InitError> {
    let saved = run(family.save(), &["-t", "nat"], None)?;
    let input = restore_input(redirect, family, &saved);
    run(family.restore(), &["--noflush"], Some(&input))?;
    Ok(input)
}

/// Whether this network namespace has an IPv6 address other than loopback and link-local
/// (`/proc/net/if_inet6`): a pod that has one gets the IPv6 rules too.
pub fn has_ipv6() -> bool {
    std::fs::read_to_string("/proc/net/if_inet6").is_ok_and(|text| {
        text.lines().any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // Fields: address, index, prefix length, scope, flags, name; scope 00 is global.
            fields.get(3) == Some(&"00") && fields.get(5) != Some(&"lo")
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redirect() -> Redirect {
        Redirect {
            proxy_uid: 2102,
            outbound_port: 15001,
            inbound_port: 15006,
            inbound_ports: InboundPorts::Only(vec![8080, 9090]),
            skip_inbound_ports: vec![15020],
            skip_outbound_ports: vec![443],
            skip_outbound_cidrs: vec!["10.96.0.1/32".parse().unwrap(), "fd00::/8".parse().unwrap()],
        }
    }

    #[test]
    fn a_fresh_namespace_gets_both_chains_and_their_jumps() {
        let input = restore_input(&redirect(), Family::V4, "");
        assert_eq!(
            input,
            "*nat
:STRAIT_INBOUND - [0:0]
:STRAIT_OUTPUT - [0:0]
-A PREROUTING -p tcp -j STRAIT_INBOUND
-A OUTPUT -p tcp -j STRAIT_OUTPUT
-A STRAIT_INBOUND -p tcp --dport 15006 -j RETURN
-A STRAIT_INBOUND -p tcp --dport 15020 -j RETURN
-A STRAIT_INBOUND -p tcp --dport 8080 -j REDIRECT --to-ports 15006
-A STRAIT_INBOUND -p tcp --dport 9090 -j REDIRECT --to-ports 15006
-A STRAIT_OUTPUT -m owner --uid-owner 2102 -j RETURN
-A STRAIT_OUTPUT -d 127.0.0.0/8 -j RETURN
-A STRAIT_OUTPUT -p tcp --dport 443 -j RETURN
-A STRAIT_OUTPUT -d 10.96.0.1/32 -j RETURN
-A STRAIT_OUTPUT -p tcp -j REDIRECT --to-ports 15001
COMMIT
"
        );
    }

    #[test]
    fn a_second_run_rebuilds_the_chains_without_a_second_jump() {
        let saved = "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:STRAIT_INBOUND - [0:0]\n:STRAIT_OUTPUT - [0:0]\n-A PREROUTING -p tcp -j STRAIT_INBOUND\n-A OUTPUT -p tcp -j STRAIT_OUTPUT\nCOMMIT\n";
        let input = restore_input(&redirect(), Family::V4, saved);
        assert!(!input.contains("-A PREROUTING"), "{input}");
        assert!(!input.contains("-A OUTPUT "), "{input}");
        assert!(input.contains(":STRAIT_OUTPUT - [0:0]"));
    }

    #[test]
    fn ipv6_rules_keep_loopback_and_only_ipv6_ranges_and_every_port_can_be_caught() {
        let mut all = redirect();
        all.inbound_ports = InboundPorts::All;
        let input = restore_input(&all, Family::V6, "");
        assert!(input.contains("-A STRAIT_OUTPUT -d ::1/128 -j RETURN"));
        assert!(input.contains("-A STRAIT_OUTPUT -d fd00::/8 -j RETURN"));
        assert!(!input.contains("10.96.0.1"));
        assert!(input.contains("-A STRAIT_INBOUND -p tcp -j REDIRECT --to-ports 15006\n"));
        // The skipped ports come before the catch-all.
        let skip = input.find("--dport 15020 -j RETURN").unwrap();
        let catch = input.find("-p tcp -j REDIRECT --to-ports 15006").unwrap();
        assert!(skip < catch);
    }

    #[test]
    fn a_range_that_does_not_parse_says_why() {
        assert!(
            "10.0.0.0"
                .parse::<Cidr>()
                .unwrap_err()
                .contains("ADDRESS/PREFIX")
        );
        assert!(
            "10.0.0.0/33"
                .parse::<Cidr>()
                .unwrap_err()
                .contains("0 to 32")
        );
        assert!("nope/8".parse::<Cidr>().unwrap_err().contains("not an IP"));
        assert_eq!("fd00::/8".parse::<Cidr>().unwrap().to_string(), "fd00::/8");
    }
}
