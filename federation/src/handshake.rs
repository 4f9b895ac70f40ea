//! The opening of a peer session, sans IO: the dialer's hello, the acceptor's decision on it
//! (the certificate against the hello, one link per pair, the join token against the ledger of
//! redemptions) and its welcome or refusal, and the resume positions both sides trade. Like
//! [`PeerSession`](crate::session::PeerSession) it never touches a socket or a clock: the
//! gateway feeds it frames and the time, and sends the frames it returns.
//!
//! # Calling contract
//!
//! Dialer, with a [`DialerHandshake`]:
//! 1. send [`DialerHandshake::hello`] as the first frame of the control stream, with the
//!    position the dialer holds of the acceptor's export;
//! 2. feed the first frame received to [`DialerHandshake::handle_welcome`]: a [`Welcome`]
//!    (then start a [`PeerSession`](crate::session::PeerSession) at `welcome.resume`), or the
//!    acceptor's refusal, or a protocol error.
//!
//! Acceptor, with an [`AcceptorHandshake`]:
//! 1. feed the first frame received to [`AcceptorHandshake::handle_hello`], with the cluster
//!    the peer's certificate names, whether this cluster dials the peer itself, the ledger and
//!    `now` (unix seconds). On [`Admission::First`] the ledger changed: persist it before going
//!    on. On an error send [`HelloRefused::refusal`]'s frame and close.
//! 2. under the lock that registers the new session, call [`AcceptorHandshake::confirm`]: a
//!    peering unlinked since the admission is refused there;
//! 3. send [`AcceptorHandshake::welcome`] with the position held of the dialer's export, then
//!    start a session at `hello.resume`.
//!
//! Time: the caller owns it; only `now` for token expiry enters here.

use crate::catalog::Position;
use crate::identity::{ClusterName, TrustDomain};
use crate::link::{Admission, LinkKey, Redemptions};
use crate::location::Location;
use crate::proto::peer::{self as wire, PeerFrame, RefusalCode, peer_frame::Body};
use crate::session::{PROTOCOL_VERSION, SessionError, frame, protocol, refusal, refused};

/// The dialer's first frame.
pub fn hello(local: &ClusterName, join_token: &str, resume: Position) -> PeerFrame {
    hello_from(local, &Location::default(), "", join_token, resume)
}

/// The dialer's first frame, saying where its cluster runs and which replica of its gateway
/// dials (empty: the only one).
pub fn hello_from(
    local: &ClusterName,
    location: &Location,
    replica: &str,
    join_token: &str,
    resume: Position,
) -> PeerFrame {
    frame(Body::Hello(wire::Hello {
        protocol: PROTOCOL_VERSION,
        cluster: local.to_string(),
        join_token: join_token.to_owned(),
        resume: Some(resume.to_wire()),
        location: Some(location_to_wire(location)),
        replica: replica.to_owned(),
    }))
}

/// The acceptor's answer to an accepted hello.
pub fn welcome(local: &ClusterName, resume: Position) -> PeerFrame {
    welcome_from(local, &Location::default(), "", resume)
}

/// The acceptor's answer, saying where its cluster runs and which replica of its gateway
/// answers (empty: the only one).
pub fn welcome_from(
    local: &ClusterName,
    location: &Location,
    replica: &str,
    resume: Position,
) -> PeerFrame {
    frame(Body::Welcome(wire::Welcome {
        protocol: PROTOCOL_VERSION,
        cluster: local.to_string(),
        resume: Some(resume.to_wire()),
        location: Some(location_to_wire(location)),
        replica: replica.to_owned(),
    }))
}

fn location_to_wire(location: &Location) -> wire::Location {
    wire::Location {
        cloud: location.cloud.clone(),
        region: location.region.clone(),
        zone: location.zone.clone(),
    }
}

/// A peer's location; one that does not parse is taken as unknown (it only orders failover).
fn location_from_wire(location: Option<&wire::Location>) -> Location {
    location
        .and_then(|l| Location::new(&l.cloud, &l.region, &l.zone).ok())
        .unwrap_or_default()
}

/// A dialer's hello, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Hello {
    pub cluster: ClusterName,
    pub join_token: String,
    pub resume: Position,
    pub location: Location,
    /// Which replica of the dialer's gateway dials (empty: the only one).
    pub replica: String,
}

/// An acceptor's welcome, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Welcome {
    pub cluster: ClusterName,
    pub resume: Position,
    pub location: Location,
    /// Which replica of the acceptor's gateway answered (empty: the only one).
    pub replica: String,
}

fn check_protocol(version: u32) -> Result<(), SessionError> {
    if version != PROTOCOL_VERSION {
        return Err(protocol(format!(
            "peer speaks protocol {version}, this gateway speaks {PROTOCOL_VERSION}"
        )));
    }
    Ok(())
}

/// The longest replica name a peer may send (a Kubernetes object name's limit).
pub const MAX_REPLICA: usize = 253;

/// A replica's name as a peer sent it: short, and printable without escapes (it reaches logs
/// and `get links`).
fn replica_of(text: String) -> Result<String, SessionError> {
    if text.len() > MAX_REPLICA {
        return Err(protocol(format!(
            "replica name longer than {MAX_REPLICA} bytes"
        )));
    }
    if !text
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    {
        return Err(protocol(format!(
            "replica name {:?} has characters other than letters, digits, '-', '.' and '_'",
            text.escape_default().to_string()
        )));
    }
    Ok(text)
}

fn cluster_of(text: &str) -> Result<ClusterName, SessionError> {
    ClusterName::new(text).map_err(|e| protocol(e.to_string()))
}

/// Reads the dialer's first frame.
pub fn parse_hello(first: PeerFrame) -> Result<Hello, SessionError> {
    match first.body {
        Some(Body::Hello(h)) => {
            check_protocol(h.protocol)?;
            if h.join_token.len() > 8192 {
                return Err(protocol("join token longer than 8 KiB"));
            }
            Ok(Hello {
                cluster: cluster_of(&h.cluster)?,
                join_token: h.join_token,
                resume: Position::from_wire(h.resume.as_ref()),
                location: location_from_wire(h.location.as_ref()),
                replica: replica_of(h.replica)?,
            })
        }
        _ => Err(protocol("the first frame of a dialer must be a hello")),
    }
}

/// Reads the acceptor's first frame.
pub fn parse_welcome(first: PeerFrame) -> Result<Welcome, SessionError> {
    match first.body {
        Some(Body::Welcome(w)) => {
            check_protocol(w.protocol)?;
            Ok(Welcome {
                cluster: cluster_of(&w.cluster)?,
                resume: Position::from_wire(w.resume.as_ref()),
                location: location_from_wire(w.location.as_ref()),
                replica: replica_of(w.replica)?,
            })
        }
        Some(Body::Refusal(r)) => Err(refused(r)),
        _ => Err(protocol(
            "the first frame of an acceptor must be a welcome or a refusal",
        )),
    }
}

/// A refusal this gateway sends: the code the peer sees and the reason it reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: RefusalCode,
    pub reason: String,
}

impl Refusal {
    /// What a peer is told when `local` removes the link.
    pub fn unlinked(local: &ClusterName) -> Self {
        Self {
            code: RefusalCode::RefusalUnlinked,
            reason: format!("cluster {local} removed the link"),
        }
    }

    /// The frame that carries it, the last of a session.
    pub fn to_frame(&self) -> PeerFrame {
        refusal(self.code, self.reason.clone())
    }

    /// The refusal as the session error it is to this side.
    pub fn into_error(self) -> SessionError {
        SessionError::Refused {
            code: self.code,
            reason: self.reason,
        }
    }
}

/// A refusal code as a metric label: `token_expired`, `protocol`, ...
pub fn refusal_label(code: RefusalCode) -> &'static str {
    match code {
        RefusalCode::RefusalUnspecified => "unspecified",
        RefusalCode::RefusalTokenInvalid => "token_invalid",
        RefusalCode::RefusalTokenExpired => "token_expired",
        RefusalCode::RefusalTokenReplayed => "token_replayed",
        RefusalCode::RefusalWrongCluster => "wrong_cluster",
        RefusalCode::RefusalProtocol => "protocol",
        RefusalCode::RefusalUnlinked => "unlinked",
    }
}

/// Whether a dialer refused with this code should stop dialing: trying again cannot help.
pub fn is_permanent(code: RefusalCode) -> bool {
    matches!(
        code,
        RefusalCode::RefusalTokenInvalid
            | RefusalCode::RefusalTokenExpired
            | RefusalCode::RefusalTokenReplayed
            | RefusalCode::RefusalWrongCluster
            | RefusalCode::RefusalUnlinked
    )
}

/// Why a dialer's handshake failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HandshakeError {
    /// The acceptor refused, or broke the protocol.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The acceptor is a gateway of the mesh, but not of the cluster the Link names.
    #[error("the gateway at {address} says it is cluster {said}, not {expected}")]
    WrongPeer {
        address: String,
        said: ClusterName,
        expected: ClusterName,
    },
}

/// The dialer's side of the handshake with the gateway of one Link.
#[derive(Debug, Clone)]
pub struct DialerHandshake {
    local: ClusterName,
    location: Location,
    replica: String,
    peer: ClusterName,
    address: String,
}

impl DialerHandshake {
    /// `local` (at `location`) dials `peer`'s gateway at `address`.
    pub fn new(local: ClusterName, location: Location, peer: ClusterName, address: String) -> Self {
        Self {
            local,
            location,
            replica: String::new(),
            peer,
            address,
        }
    }

    /// Says which replica of this cluster's gateway dials (one of several).
    pub fn from_replica(mut self, replica: &str) -> Self {
        replica.clone_into(&mut self.replica);
        self
    }

    /// The first frame: who we are, the token, and where we stand in the peer's export.
    pub fn hello(&self, join_token: &str, resume: Position) -> PeerFrame {
        hello_from(
            &self.local,
            &self.location,
            &self.replica,
            join_token,
            resume,
        )
    }

    /// Reads the acceptor's first frame.
    pub fn handle_welcome(&self, first: PeerFrame) -> Result<Welcome, HandshakeError> {
        let welcome = parse_welcome(first)?;
        if welcome.cluster != self.peer {
            return Err(HandshakeError::WrongPeer {
                address: self.address.clone(),
                said: welcome.cluster,
                expected: self.peer.clone(),
            });
        }
        Ok(welcome)
    }
}

/// Why an acceptor turned a hello down.
#[derive(Debug, Clone, PartialEq)]
pub enum HelloRefused {
    /// The first frame was not a hello this build can read.
    Malformed(SessionError),
    /// A well-formed hello that may not peer.
    Refused(Refusal),
}

impl HelloRefused {
    /// What the dialer is sent.
    pub fn refusal(&self) -> Refusal {
        match self {
            HelloRefused::Malformed(e) => Refusal {
                code: RefusalCode::RefusalProtocol,
                reason: e.to_string(),
            },
            HelloRefused::Refused(r) => r.clone(),
        }
    }

    /// The error this side records.
    pub fn into_error(self) -> SessionError {
        match self {
            HelloRefused::Malformed(e) => e,
            HelloRefused::Refused(r) => r.into_error(),
        }
    }
}

/// A hello that may peer, and whether it is the token's first use.
#[derive(Debug, Clone, PartialEq)]
pub struct Admitted {
    pub hello: Hello,
    pub admission: Admission,
}

/// The acceptor's side of the handshake: the gateway a peer dials with a join token.
pub struct AcceptorHandshake<'a> {
    pub local: &'a ClusterName,
    pub location: &'a Location,
    /// Which replica of this cluster's gateway accepts (empty: the only one).
    pub replica: &'a str,
    pub trust_domain: &'a TrustDomain,
    /// The key that signed this cluster's join tokens.
    pub key: &'a LinkKey,
}

impl AcceptorHandshake<'_> {
    /// Decides on the dialer's first frame. `certified` is the cluster the peer's certificate
    /// names; `dials_peer` whether this cluster holds a Link to that cluster itself; `now` is
    /// unix seconds. A first admission is written into `ledger`.
    pub fn handle_hello(
        &self,
        first: PeerFrame,
        certified: &ClusterName,
        dials_peer: bool,
        ledger: &mut Redemptions,
        now: u64,
    ) -> Result<Admitted, HelloRefused> {
        let hello = parse_hello(first).map_err(HelloRefused::Malformed)?;
        let peer = &hello.cluster;
        let local = self.local;
        let refuse = |code, reason| Err(HelloRefused::Refused(Refusal { code, reason }));
        if certified != peer {
            return refuse(
                RefusalCode::RefusalWrongCluster,
                format!("the certificate belongs to cluster {certified} but the hello says {peer}"),
            );
        }
        if dials_peer {
            return refuse(
                RefusalCode::RefusalWrongCluster,
                format!(
                    "cluster {local} already dials cluster {peer}; one link per pair: unlink one side first"
                ),
            );
        }
        match ledger.admit(
            self.key,
            local,
            self.trust_domain,
            peer,
            &hello.join_token,
            now,
        ) {
            Ok(admission) => Ok(Admitted { hello, admission }),
            Err(e) => refuse(e.code(), e.to_string()),
        }
    }

    /// Checks, as the session is registered, that the peering was not unlinked since the
    /// admission (an unlink revokes the peer's tokens).
    pub fn confirm(&self, ledger: &Redemptions, peer: &ClusterName) -> Result<(), Refusal> {
        if ledger.is_active(peer) {
            Ok(())
        } else {
            Err(Refusal::unlinked(self.local))
        }
    }

    /// The answer to an admitted hello: who we are, and where we stand in the dialer's export.
    pub fn welcome(&self, resume: Position) -> PeerFrame {
        welcome_from(self.local, self.location, self.replica, resume)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::LinkKey;

    fn cluster(name: &str) -> ClusterName {
        ClusterName::new(name).unwrap()
    }

    /// Everything on the acceptor's side (cluster `west`) that outlives one handshake.
    struct West {
        key: LinkKey,
        trust_domain: TrustDomain,
        local: ClusterName,
        location: Location,
        ledger: Redemptions,
    }

    impl West {
        fn new() -> Self {
            Self {
                key: LinkKey::generate().unwrap(),
                trust_domain: TrustDomain::new("example.mesh").unwrap(),
                local: cluster("west"),
                location: Location::new("gcp", "europe-west1", "europe-west1-b").unwrap(),
                ledger: Redemptions::default(),
            }
        }

        /// A join token minted at t=1000 s, good for a first use until t=1060 s.
        fn token(&self, id: u128) -> String {
            self.key
                .issue(&self.local, &self.trust_domain, 1000, 60, id)
                .unwrap()
                .0
        }

        fn acceptor(&self) -> AcceptorHandshake<'_> {
            AcceptorHandshake {
                local: &self.local,
                location: &self.location,
                replica: "west-1",
                trust_domain: &self.trust_domain,
                key: &self.key,
            }
        }

        /// Hands `frame` to the acceptor as if the peer's certificate named `certified`.
        fn hear(
            &mut self,
            frame: PeerFrame,
            certified: &str,
            dials_peer: bool,
            now: u64,
        ) -> Result<Admitted, HelloRefused> {
            let handshake = AcceptorHandshake {
                local: &self.local,
                location: &self.location,
                replica: "west-1",
                trust_domain: &self.trust_domain,
                key: &self.key,
            };
            handshake.handle_hello(
                frame,
                &cluster(certified),
                dials_peer,
                &mut self.ledger,
                now,
            )
        }
    }

    fn east_dialer() -> DialerHandshake {
        DialerHandshake::new(
            cluster("east"),
            Location::new("aws", "us-east-1", "us-east-1a").unwrap(),
            cluster("west"),
            "west.example:4433".into(),
        )
    }

    /// Sends a frame through the codec as the control stream would carry it.
    fn through_the_wire(frame: &PeerFrame) -> PeerFrame {
        let mut decoder = crate::wire::FrameDecoder::default();
        decoder.extend(&crate::wire::encode(frame));
        decoder.next_frame().unwrap().unwrap()
    }

    fn refused(result: Result<Admitted, HelloRefused>) -> Refusal {
        match result {
            Err(HelloRefused::Refused(refusal)) => refusal,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    fn position(epoch: u64, version: u64) -> Position {
        Position { epoch, version }
    }

    #[test]
    fn a_first_hello_is_admitted_and_both_sides_learn_where_to_resume() {
        let mut west = West::new();
        let dialer = east_dialer().from_replica("east-gateway-7d9f-x2");
        let hello = dialer.hello(&west.token(1), position(7, 3));
        let admitted = west
            .hear(through_the_wire(&hello), "east", false, 1001)
            .unwrap();
        assert_eq!(admitted.admission, Admission::First);
        assert_eq!(admitted.hello.cluster, cluster("east"));
        assert_eq!(admitted.hello.resume, position(7, 3));
        assert_eq!(admitted.hello.location.cloud, "aws");
        assert_eq!(admitted.hello.replica, "east-gateway-7d9f-x2");
        assert!(
            west.acceptor()
                .confirm(&west.ledger, &cluster("east"))
                .is_ok()
        );

        let welcome = west.acceptor().welcome(position(9, 12));
        let welcome = dialer.handle_welcome(through_the_wire(&welcome)).unwrap();
        assert_eq!(welcome.cluster, cluster("west"));
        assert_eq!(welcome.resume, position(9, 12));
        assert_eq!(welcome.location.region, "europe-west1");
        assert_eq!(welcome.replica, "west-1");
    }

    #[test]
    fn a_replica_name_that_is_long_or_not_plain_is_a_protocol_refusal() {
        let mut west = West::new();
        let token = west.token(1);
        for (name, said) in [
            ("a".repeat(MAX_REPLICA + 1), "longer than 253 bytes"),
            ("east\n1".into(), "has characters other than"),
        ] {
            let dialer = east_dialer().from_replica(&name);
            let Err(HelloRefused::Malformed(error)) =
                west.hear(dialer.hello(&token, Position::NONE), "east", false, 1001)
            else {
                panic!("a replica named {name:?} was not refused");
            };
            assert!(error.to_string().contains(said), "{error}");
        }
        // The ledger saw no first use: the token is still good.
        let admitted = west
            .hear(
                east_dialer().hello(&token, Position::NONE),
                "east",
                false,
                1001,
            )
            .unwrap();
        assert_eq!(admitted.admission, Admission::First);
        assert_eq!(admitted.hello.replica, "");
    }

    #[test]
    fn a_returning_peer_is_admitted_after_its_token_expired() {
        let mut west = West::new();
        let token = west.token(1);
        let hello = east_dialer().hello(&token, Position::NONE);
        west.hear(hello.clone(), "east", false, 1001).unwrap();
        let again = west.hear(hello, "east", false, 9_999).unwrap();
        assert_eq!(again.admission, Admission::Returning);
    }

    #[test]
    fn a_first_frame_that_is_not_a_hello_is_a_protocol_refusal() {
        let mut west = West::new();
        let welcome = welcome(&cluster("east"), Position::NONE);
        let error = west.hear(welcome, "east", false, 1001).unwrap_err();
        assert!(matches!(error, HelloRefused::Malformed(_)), "{error:?}");
        let refusal = error.refusal();
        assert_eq!(refusal.code, RefusalCode::RefusalProtocol);
        assert_eq!(
            refusal.reason,
            "protocol violation: the first frame of a dialer must be a hello"
        );
    }

    #[test]
    fn a_hello_of_another_protocol_version_is_refused() {
        let mut west = West::new();
        let mut hello = east_dialer().hello(&west.token(1), Position::NONE);
        if let Some(Body::Hello(h)) = hello.body.as_mut() {
            h.protocol = PROTOCOL_VERSION + 1;
        }
        let refusal = west.hear(hello, "east", false, 1001).unwrap_err().refusal();
        assert_eq!(refusal.code, RefusalCode::RefusalProtocol);
        assert!(
            refusal.reason.contains("this gateway speaks 1"),
            "{}",
            refusal.reason
        );
    }

    #[test]
    fn an_oversized_join_token_is_refused_before_it_is_checked() {
        let mut west = West::new();
        let hello = east_dialer().hello(&"x".repeat(8193), Position::NONE);
        let refusal = west.hear(hello, "east", false, 1001).unwrap_err().refusal();
        assert_eq!(refusal.code, RefusalCode::RefusalProtocol);
        assert!(
            refusal.reason.contains("longer than 8 KiB"),
            "{}",
            refusal.reason
        );
    }

    #[test]
    fn a_hello_that_names_another_cluster_than_the_certificate_is_refused() {
        let mut west = West::new();
        let hello = east_dialer().hello(&west.token(1), Position::NONE);
        let refusal = refused(west.hear(hello, "north", false, 1001));
        assert_eq!(refusal.code, RefusalCode::RefusalWrongCluster);
        assert_eq!(
            refusal.reason,
            "the certificate belongs to cluster north but the hello says east"
        );
        assert!(!west.ledger.is_active(&cluster("east")), "nothing admitted");
    }

    #[test]
    fn a_peer_this_cluster_dials_itself_is_refused_one_link_per_pair() {
        let mut west = West::new();
        let hello = east_dialer().hello(&west.token(1), Position::NONE);
        let refusal = refused(west.hear(hello, "east", true, 1001));
        assert_eq!(refusal.code, RefusalCode::RefusalWrongCluster);
        assert_eq!(
            refusal.reason,
            "cluster west already dials cluster east; one link per pair: unlink one side first"
        );
    }

    #[test]
    fn a_cluster_cannot_link_to_itself() {
        let mut west = West::new();
        let hello = hello(&cluster("west"), &west.token(1), Position::NONE);
        let refusal = refused(west.hear(hello, "west", false, 1001));
        assert_eq!(refusal.code, RefusalCode::RefusalWrongCluster);
        assert_eq!(refusal.reason, "a cluster cannot link to itself");
    }

    #[test]
    fn a_token_of_another_gateway_is_invalid() {
        let mut west = West::new();
        let stranger = West::new();
        let hello = east_dialer().hello(&stranger.token(1), Position::NONE);
        let refusal = refused(west.hear(hello, "east", false, 1001));
        assert_eq!(refusal.code, RefusalCode::RefusalTokenInvalid);
        assert!(is_permanent(refusal.code));
    }

    #[test]
    fn a_token_past_its_expiry_is_refused_at_first_use() {
        let mut west = West::new();
        let hello = east_dialer().hello(&west.token(1), Position::NONE);
        let refusal = refused(west.hear(hello, "east", false, 1060));
        assert_eq!(refusal.code, RefusalCode::RefusalTokenExpired);
        assert_eq!(refusal_label(refusal.code), "token_expired");
    }

    #[test]
    fn a_token_redeemed_by_another_cluster_is_a_replay() {
        let mut west = West::new();
        let token = west.token(1);
        west.hear(
            east_dialer().hello(&token, Position::NONE),
            "east",
            false,
            1001,
        )
        .unwrap();
        let north = hello(&cluster("north"), &token, Position::NONE);
        let refusal = refused(west.hear(north, "north", false, 1002));
        assert_eq!(refusal.code, RefusalCode::RefusalTokenReplayed);
        assert!(
            refusal.reason.contains("already redeemed by cluster east"),
            "{}",
            refusal.reason
        );
    }

    #[test]
    fn a_peer_unlinked_since_its_admission_is_refused_at_registration_and_when_it_returns() {
        let mut west = West::new();
        let hello = east_dialer().hello(&west.token(1), Position::NONE);
        west.hear(hello.clone(), "east", false, 1001).unwrap();
        assert!(west.ledger.revoke(&cluster("east")));
        let refusal = west
            .acceptor()
            .confirm(&west.ledger, &cluster("east"))
            .unwrap_err();
        assert_eq!(refusal, Refusal::unlinked(&cluster("west")));
        assert_eq!(refusal.reason, "cluster west removed the link");

        let refusal = refused(west.hear(hello, "east", false, 1002));
        assert_eq!(refusal.code, RefusalCode::RefusalUnlinked);
    }

    #[test]
    fn a_dialer_refuses_a_welcome_from_another_cluster() {
        let welcome = welcome(&cluster("north"), Position::NONE);
        let error = east_dialer().handle_welcome(welcome).unwrap_err();
        assert_eq!(
            error.to_string(),
            "the gateway at west.example:4433 says it is cluster north, not west"
        );
    }

    #[test]
    fn a_dialer_hears_the_acceptors_refusal_with_its_code() {
        let refusal = Refusal::unlinked(&cluster("west"));
        let error = east_dialer()
            .handle_welcome(through_the_wire(&refusal.to_frame()))
            .unwrap_err();
        assert_eq!(error, HandshakeError::Session(refusal.into_error()));
    }

    #[test]
    fn a_dialer_refuses_a_first_frame_that_is_neither_welcome_nor_refusal() {
        let hello = hello(&cluster("west"), "token", Position::NONE);
        let error = east_dialer().handle_welcome(hello).unwrap_err();
        assert!(
            matches!(error, HandshakeError::Session(SessionError::Protocol(_))),
            "{error}"
        );
    }

    #[test]
    fn only_refusals_that_retrying_cannot_fix_stop_a_dialer() {
        for code in [
            RefusalCode::RefusalTokenInvalid,
            RefusalCode::RefusalTokenExpired,
            RefusalCode::RefusalTokenReplayed,
            RefusalCode::RefusalWrongCluster,
            RefusalCode::RefusalUnlinked,
        ] {
            assert!(is_permanent(code), "{code:?}");
        }
        assert!(!is_permanent(RefusalCode::RefusalProtocol));
        assert!(!is_permanent(RefusalCode::RefusalUnspecified));
    }

    #[test]
    fn hello_and_welcome_frames_are_checked_field_by_field() {
        let west = ClusterName::new("west").unwrap();
        let h = parse_hello(hello(
            &west,
            "token",
            Position {
                epoch: 3,
                version: 4,
            },
        ))
        .unwrap();
        assert_eq!(h.cluster, west);
        assert_eq!(
            h.resume,
            Position {
                epoch: 3,
                version: 4
            }
        );
        assert!(parse_hello(welcome(&west, Position::NONE)).is_err());
        let refused =
            parse_welcome(refusal(RefusalCode::RefusalTokenExpired, "expired")).unwrap_err();
        assert!(matches!(
            refused,
            SessionError::Refused {
                code: RefusalCode::RefusalTokenExpired,
                ..
            }
        ));
        let mut bad = hello(&west, "t", Position::NONE);
        if let Some(Body::Hello(h)) = &mut bad.body {
            h.cluster = "NOT A CLUSTER".into();
        }
        assert!(parse_hello(bad).is_err());
    }
}
