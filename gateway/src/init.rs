//! Laying out trust and gateway folders on disk: `strait trust init`, `strait trust issue` and
//! `strait gateway init`.
//!
//! A trust folder holds `trust.yaml` (the trust domain), `root.crt`, `root.key` (keep offline)
//! and `bundle.pem` (the roots clusters trust). `strait trust issue` writes a cluster's
//! credentials: `bundle.pem`, `issuer.crt`/`issuer.key` (the cluster's intermediate), `link.key`
//! (signs join tokens) and `trust.yaml`. A gateway folder holds `gateway.yaml`, those
//! credentials, `operator.crt`/`operator.key` (a credential for the operator API) and
//! `state.json`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use std::time::SystemTime;
use strait_federation::identity::{AccountName, ClusterName, SpiffeId, TrustDomain};
use strait_federation::link::LinkKey;

use strait_federation::pki::{self, ISSUER_LIFETIME, Root, TrustBundle};
use strait_io::files::{read_file, write_file};
use strait_io::pki as stored;

use crate::GatewayError;
use crate::config::{DnsConfig, GatewayConfig, KubernetesConfig, PeeringConfig, WorkloadConfig};

/// How long operator credentials made by `gateway init` live.
const OPERATOR_LIFETIME: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 3600);

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TrustFile {
    trust_domain: TrustDomain,
}

/// A trust folder made by `strait trust init`.
pub struct TrustDir {
    pub dir: PathBuf,
    pub trust_domain: TrustDomain,
}

impl TrustDir {
    /// Makes a new root in an empty (or new) folder.
    pub fn create(dir: &Path, trust_domain: TrustDomain) -> Result<Self, GatewayError> {
        if dir.join("root.key").exists() || dir.join("trust.yaml").exists() {
            return Err(GatewayError::Exists(dir.to_owned()));
        }
        let root = Root::generate(&trust_domain, pki::ROOT_LIFETIME, SystemTime::now())?;
        stored::save_root(&root, dir)?;
        write_file(&dir.join("bundle.pem"), &root.cert_pem, false)?;
        let file = TrustFile {
            trust_domain: trust_domain.clone(),
        };
        write_file(&dir.join("trust.yaml"), &to_yaml(&file)?, false)?;
        Ok(Self {
            dir: dir.to_owned(),
            trust_domain,
        })
    }

    /// Opens a trust folder.
    pub fn open(dir: &Path) -> Result<Self, GatewayError> {
        let path = dir.join("trust.yaml");
        let text = read_file(&path)?;
        let file: TrustFile = serde_saphyr::from_str(&text).map_err(|e| GatewayError::Config {
            path: path.clone(),
            message: e.to_string(),
        })?;
        Ok(Self {
            dir: dir.to_owned(),
            trust_domain: file.trust_domain,
        })
    }

    /// The trust bundle (`bundle.pem`).
    pub fn bundle(&self) -> Result<TrustBundle, GatewayError> {
        Ok(stored::read_bundle(
            &self.dir.join("bundle.pem"),
            self.trust_domain.clone(),
        )?)
    }

    /// The root (needs `root.key`).
    pub fn root(&self) -> Result<Root, GatewayError> {
        Ok(stored::load_root(&self.dir, self.trust_domain.clone())?)
    }

    /// Signs a cluster issuer and writes it, with the bundle and trust domain, into `out`:
    /// what a cluster needs when the root stays elsewhere.
    pub fn issue_cluster(&self, cluster: &ClusterName, out: &Path) -> Result<(), GatewayError> {
        if out.join("issuer.key").exists() {
            return Err(GatewayError::Exists(out.join("issuer.key")));
        }
        let issuer = self
            .root()?
            .issue_cluster(cluster, ISSUER_LIFETIME, SystemTime::now())?;
        stored::save_issuer(&issuer, out)?;
        write_file(&out.join("bundle.pem"), self.bundle()?.to_pem(), false)?;
        // The key that signs the cluster's join tokens: every replica of its gateway needs the
        // same one, so it travels with the issuer.
        write_file(&out.join("link.key"), LinkKey::generate()?.to_pem(), true)?;
        let file = TrustFile {
            trust_domain: self.trust_domain.clone(),
        };
        write_file(&out.join("trust.yaml"), &to_yaml(&file)?, false)?;
        Ok(())
    }
}

fn to_yaml<T: Serialize>(value: &T) -> Result<String, GatewayError> {
    Ok(serde_saphyr::to_string(value)?)
}

/// What `strait gateway init` is given.
pub struct InitOptions {
    pub cluster: ClusterName,
    pub trust_dir: PathBuf,
    pub dir: PathBuf,
    pub quic_addr: SocketAddr,
    pub api_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub advertise_addr: Option<String>,
    pub relay_addr: Option<SocketAddr>,
    /// Where the DNS server for the clusterset zone answers (UDP and TCP); none when unset.
    pub dns_addr: Option<SocketAddr>,
    /// Where the cluster runs (cloud, region, zone), when known.
    pub location: strait_federation::location::Location,
    pub operator: AccountName,
    /// Kubernetes mode: the kubeconfig of the cluster the gateway watches.
    pub kubeconfig: Option<PathBuf>,
}

/// Signs an operator credential with a cluster's issuer and writes it as `<file>.crt` and
/// `<file>.key` (owner-only) into `dir`.
fn write_operator(
    issuer: &pki::ClusterIssuer,
    operator: AccountName,
    dir: &Path,
    file: &str,
) -> Result<(), GatewayError> {
    let identity = SpiffeId::Operator {
        trust_domain: issuer.trust_domain.clone(),
        cluster: issuer.cluster.clone(),
        name: operator,
    };
    let credential = issuer.issue(&identity, OPERATOR_LIFETIME, SystemTime::now())?;
    stored::write_credential(&credential, dir, file)?;
    Ok(())
}

/// An operator credential made from a cluster's credentials folder.
pub struct OperatorCredential {
    pub cluster: ClusterName,
    pub trust_domain: TrustDomain,
    pub bundle: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Signs a credential for operator `operator` of the cluster whose credentials `dir` holds (as
/// `strait trust issue` wrote them: `issuer.crt`, `issuer.key`, `bundle.pem`), for a gateway
/// that was not set up here (a Helm install), and writes it as `operator-<name>.crt`/`.key`.
pub fn issue_operator(
    dir: &Path,
    operator: AccountName,
) -> Result<OperatorCredential, GatewayError> {
    let dir = absolute(dir)?;
    let cert_path = dir.join("issuer.crt");
    let (trust_domain, cluster) = pki::issuer_cluster(&read_file(&cert_path)?, &cert_path)?;
    let issuer = stored::load_issuer(&dir, trust_domain.clone(), cluster.clone())?;
    let bundle = dir.join("bundle.pem");
    stored::read_bundle(&bundle, trust_domain.clone())?;
    let file = format!("operator-{operator}");
    write_operator(&issuer, operator, &dir, &file)?;
    Ok(OperatorCredential {
        cluster,
        trust_domain,
        bundle,
        cert: dir.join(format!("{file}.crt")),
        key: dir.join(format!("{file}.key")),
    })
}

/// What `strait gateway init` made.
pub struct Initialized {
    pub config_path: PathBuf,
    pub config: GatewayConfig,
    /// The operator credential, for the CLI context.
    pub operator_cert: PathBuf,
    pub operator_key: PathBuf,
    pub bundle: PathBuf,
}

/// Lays out a gateway folder. Uses the cluster issuer already in `dir` (from `strait trust
/// issue`) when there is one, otherwise signs one with the root in the trust folder.
pub fn init_gateway(options: InitOptions) -> Result<Initialized, GatewayError> {
    let dir = absolute(&options.dir)?;
    let config_path = dir.join("gateway.yaml");
    if config_path.exists() {
        return Err(GatewayError::Exists(config_path));
    }
    let trust = TrustDir::open(&options.trust_dir)?;
    let issuer = if dir.join("issuer.key").exists() {
        stored::load_issuer(&dir, trust.trust_domain.clone(), options.cluster.clone())?
    } else {
        let issuer =
            trust
                .root()?
                .issue_cluster(&options.cluster, ISSUER_LIFETIME, SystemTime::now())?;
        stored::save_issuer(&issuer, &dir)?;
        issuer
    };
    write_file(&dir.join("bundle.pem"), trust.bundle()?.to_pem(), false)?;
    // Kept when `strait trust issue` made it with the issuer.
    if !dir.join("link.key").exists() {
        write_file(&dir.join("link.key"), LinkKey::generate()?.to_pem(), true)?;
    }
    write_operator(&issuer, options.operator, &dir, "operator")?;
    let config = GatewayConfig {
        cluster: options.cluster,
        trust_domain: trust.trust_domain,
        quic_addr: options.quic_addr,
        advertise_addr: options.advertise_addr,
        api_addr: options.api_addr,
        admin_addr: options.admin_addr,
        relay_addr: options.relay_addr,
        state_dir: PathBuf::from("."),
        credentials_dir: None,
        peering: PeeringConfig::default(),
        workloads: WorkloadConfig::default(),
        metrics: Default::default(),
        telemetry: Default::default(),
        dns: options.dns_addr.map(DnsConfig::at),
        location: options.location,
        kubernetes: options
            .kubeconfig
            .map(|kubeconfig| -> Result<_, GatewayError> {
                Ok(KubernetesConfig {
                    kubeconfig: Some(absolute(&kubeconfig)?),
                    namespace: "strait-system".into(),
                    lease_duration_seconds: 15,
                    injector: None,
                    relay_service: None,
                    drain_seconds: 0,
                    credentials_secret: None,
                })
            })
            .transpose()?,
        limits: Default::default(),
    };
    write_file(&config_path, &to_yaml(&config)?, false)?;
    let config = GatewayConfig::load(&config_path)?;
    Ok(Initialized {
        config_path,
        config,
        operator_cert: dir.join("operator.crt"),
        operator_key: dir.join("operator.key"),
        bundle: dir.join("bundle.pem"),
    })
}

/// A path made absolute against the working directory (contexts outlive the shell's folder).
pub fn absolute(path: &Path) -> Result<PathBuf, GatewayError> {
    std::path::absolute(path).map_err(|e| GatewayError::Config {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `gateway init` of `cluster` into `dir`, with the trust folder `trust`.
    fn options(cluster: &str, trust: &Path, dir: &Path) -> InitOptions {
        InitOptions {
            cluster: ClusterName::new(cluster).unwrap(),
            trust_dir: trust.to_owned(),
            dir: dir.to_owned(),
            quic_addr: "127.0.0.1:1".parse().unwrap(),
            api_addr: "127.0.0.1:2".parse().unwrap(),
            admin_addr: "127.0.0.1:3".parse().unwrap(),
            advertise_addr: None,
            relay_addr: None,
            dns_addr: None,
            location: Default::default(),
            operator: AccountName::new("admin").unwrap(),
            kubeconfig: None,
        }
    }

    #[test]
    fn a_gateway_folder_is_laid_out_from_a_trust_folder_and_refuses_a_second_init() {
        let dir = tempfile::tempdir().unwrap();
        let trust = dir.path().join("trust");
        TrustDir::create(&trust, TrustDomain::new("example.mesh").unwrap()).unwrap();
        assert!(TrustDir::create(&trust, TrustDomain::new("example.mesh").unwrap()).is_err());
        let options = || options("west", &trust, &dir.path().join("west"));
        let made = init_gateway(options()).unwrap();
        assert_eq!(made.config.cluster.as_str(), "west");
        for file in [
            "gateway.yaml",
            "bundle.pem",
            "issuer.crt",
            "issuer.key",
            "link.key",
            "operator.crt",
        ] {
            assert!(dir.path().join("west").join(file).exists(), "{file}");
        }
        let err = init_gateway(options()).err().unwrap().to_string();
        assert!(err.contains("already exists"), "{err}");
    }

    #[test]
    fn an_issued_cluster_carries_its_link_key_which_init_keeps_and_credentials_dir_reads() {
        let dir = tempfile::tempdir().unwrap();
        let trust = dir.path().join("trust");
        let trust_dir =
            TrustDir::create(&trust, TrustDomain::new("example.mesh").unwrap()).unwrap();
        let issued = dir.path().join("east");
        trust_dir
            .issue_cluster(&ClusterName::new("east").unwrap(), &issued)
            .unwrap();
        let key = std::fs::read_to_string(issued.join("link.key")).unwrap();
        assert!(key.contains("PRIVATE KEY"), "{key}");
        init_gateway(options("east", &trust, &issued)).unwrap();
        assert_eq!(
            std::fs::read_to_string(issued.join("link.key")).unwrap(),
            key
        );
        // A config elsewhere that reads the credentials from that folder (a mounted Secret).
        let config = dir.path().join("pod").join("gateway.yaml");
        std::fs::create_dir_all(config.parent().unwrap()).unwrap();
        let text = std::fs::read_to_string(issued.join("gateway.yaml")).unwrap()
            + "credentialsDir: ../east\n";
        std::fs::write(&config, text).unwrap();
        let loaded = GatewayConfig::load(&config).unwrap();
        assert_eq!(loaded.credentials(), dir.path().join("pod").join("../east"));
        assert_eq!(
            loaded.file("state.json"),
            dir.path().join("pod").join("./state.json")
        );
    }
}
