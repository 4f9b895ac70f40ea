//! The link key the token targets verify with: fixed, so that tokens written into a seed
//! corpus or a test stay valid from one run to the next. It signs nothing outside tests.

use std::path::Path;
use std::sync::LazyLock;

use strait_federation::identity::{ClusterName, TrustDomain};
use strait_federation::link::LinkKey;

/// A P-256 key in PKCS#8 PEM, made for these tests.
pub const PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgVP8qRRBN/ozQ98jF
+w0KkVpQ3Ejh/iIUr4DSSdLxGBOhRANCAAS7cFu6BYkA6G5YtZC/jGkhP/RlJY6J
CoKWxrLH+qRixgSRbFCZlaCpI9JJMwEcBkb2JDYDu9o5kjGYN1X2ke2I
-----END PRIVATE KEY-----
";

/// The cluster whose gateway holds the key.
pub const CLUSTER: &str = "west";
/// The trust domain of the mesh.
pub const TRUST_DOMAIN: &str = "example.mesh";
/// The time tokens are checked at (unix seconds); tokens made for the seeds are issued at it.
pub const NOW: u64 = 1_800_000_000;

static KEY: LazyLock<LinkKey> = LazyLock::new(|| {
    LinkKey::from_pem(PEM, Path::new("test-link.key")).expect("the test key loads")
});

/// The fixed key, loaded once.
pub fn key() -> &'static LinkKey {
    &KEY
}

/// The key's cluster.
pub fn cluster() -> ClusterName {
    ClusterName::new(CLUSTER).expect("a cluster name")
}

/// The mesh's trust domain.
pub fn trust_domain() -> TrustDomain {
    TrustDomain::new(TRUST_DOMAIN).expect("a trust domain")
}

/// The three parts of a compact JWS, each decoded from unpadded base64url; `None` when the
/// text is not that shape.
pub fn jws_parts(token: &str) -> Option<[Vec<u8>; 3]> {
    use base64::Engine as _;
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut parts = token.split('.');
    let mut next = || engine.decode(parts.next()?).ok();
    let decoded = [next()?, next()?, next()?];
    parts.next().is_none().then_some(decoded)
}
