//! A network namespace joined to the test's own by a veth pair (a /30 of `10.<net>.<n>.0`),
//! removed on drop: a process started in it (`ip netns exec`) has a network of its own, which
//! a test can cut (iptables inside the namespace) and heal.

use anyhow::Result;

use crate::pods::run;

/// A network namespace and the veth pair that joins it to this one.
pub struct Namespace {
    pub name: String,
    /// The host side of the veth pair.
    pub host_veth: String,
    /// The address of the host side.
    pub host_ip: String,
    /// The address of the namespace's side.
    pub inner_ip: String,
}

impl Namespace {
    /// Makes a namespace named after `tag` (two letters) and this process, with addresses in
    /// `10.<net>.0.0/16`.
    pub fn create(tag: &str, net: u8) -> Result<Self> {
        let id = std::process::id() % 10_000;
        let subnet = 1 + id % 250;
        let ns = Self {
            name: format!("strait-{tag}-{id}"),
            host_veth: format!("s{tag}{id}h"),
            host_ip: format!("10.{net}.{subnet}.1"),
            inner_ip: format!("10.{net}.{subnet}.2"),
        };
        let inner_veth = format!("s{tag}{id}n");
        // A namespace left by an earlier, killed run goes first.
        let _ = run("ip", &["netns", "del", &ns.name]);
        let _ = run("ip", &["link", "del", &ns.host_veth]);
        run("ip", &["netns", "add", &ns.name])?;
        run(
            "ip",
            &[
                "link",
                "add",
                &ns.host_veth,
                "type",
                "veth",
                "peer",
                "name",
                &inner_veth,
            ],
        )?;
        run("ip", &["link", "set", &inner_veth, "netns", &ns.name])?;
        run(
            "ip",
            &[
                "addr",
                "add",
                &format!("{}/30", ns.host_ip),
                "dev",
                &ns.host_veth,
            ],
        )?;
        run("ip", &["link", "set", &ns.host_veth, "up"])?;
        ns.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{}/30", ns.inner_ip),
            "dev",
            &inner_veth,
        ])?;
        ns.exec(&["ip", "link", "set", &inner_veth, "up"])?;
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        // Virtual addresses need a route, or connect fails before iptables sees it.
        ns.exec(&["ip", "route", "add", "default", "via", &ns.host_ip])?;
        Ok(ns)
    }

    /// Makes the namespace's system resolver ask `nameserver` (port 53), through files that
    /// `ip netns exec` mounts over /etc; `.local` names must not go to multicast DNS.
    pub fn set_resolver(&self, nameserver: &str) -> Result<()> {
        let dir = self.etc();
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join("resolv.conf"),
            format!("nameserver {nameserver}\n"),
        )?;
        std::fs::write(dir.join("nsswitch.conf"), "hosts: files dns\n")?;
        Ok(())
    }

    fn etc(&self) -> std::path::PathBuf {
        std::path::Path::new("/etc/netns").join(&self.name)
    }

    /// Runs a command inside the namespace; its standard output.
    pub fn exec(&self, command: &[&str]) -> Result<String> {
        let mut args = vec!["netns", "exec", &self.name];
        args.extend_from_slice(command);
        run("ip", &args)
    }

    /// The prefix that runs a command inside the namespace.
    pub fn prefix(&self) -> Vec<String> {
        ["ip", "netns", "exec", &self.name]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.etc());
        let _ = run("ip", &["netns", "del", &self.name]);
        let _ = run("ip", &["link", "del", &self.host_veth]);
    }
}
