//! The peer endpoint's UDP socket: quinn's own, with batches of packets cut to what the kernel
//! sends in one call.
//!
//! quinn hands its socket up to ten packets of one size at once, for one `sendmsg` with
//! segmentation offload (GSO). The kernel takes at most one datagram's worth (64 KiB) in such a
//! call and refuses a larger batch with `EMSGSIZE`, which quinn's socket takes for a lost MTU
//! probe. With packets over 6.5 KB (jumbo frames, loopback) every full batch was dropped, and
//! a bulk flow ran slower with large packets than with small ones. Here a batch that is too
//! large goes out in several calls.
//!
//! The socket's kernel buffers are sized here too: what arrives while the endpoint is busy waits
//! in them, and what does not fit is lost, which QUIC takes for congestion.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, Runtime, UdpPoller};

/// The most one call sends: the largest UDP payload over IPv4 (65,535 bytes less the IP and UDP
/// headers).
const MOST_PER_CALL: usize = 65_507;

/// What the endpoint asks for each way: a burst of a flow with a window of 16 MiB waits in the
/// kernel instead of being dropped.
pub const BUFFER_BYTES: usize = 16 << 20;

/// The buffer sizes the kernel gave a socket, in the units they were asked for (Linux reports
/// twice what was set, the other half being its own bookkeeping; this is what was set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buffers {
    /// The receive buffer.
    pub receive: usize,
    /// The send buffer.
    pub send: usize,
}

/// Asks for `bytes` of receive and send buffer. A plain request is capped by the host's
/// `net.core.rmem_max` and `wmem_max` (212,992 bytes by default on Linux: about 25 packets of
/// 8952 bytes, or two milliseconds of a gigabit flow); with `CAP_NET_ADMIN` the forcing options
/// pass the cap, as other QUIC servers do. Returns what the kernel gave.
pub fn size_buffers(socket: &socket2::Socket, bytes: usize) -> Buffers {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
        for (force, plain) in [
            (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
            (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
        ] {
            for option in [force, plain] {
                // SAFETY: a descriptor this socket owns, and a pointer to a c_int with its length.
                let set = unsafe {
                    libc::setsockopt(
                        socket.as_raw_fd(),
                        libc::SOL_SOCKET,
                        option,
                        std::ptr::from_ref(&value).cast(),
                        std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                    )
                };
                if set == 0 {
                    break;
                }
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = socket.set_recv_buffer_size(bytes);
        let _ = socket.set_send_buffer_size(bytes);
    }
    let reported = |size: io::Result<usize>| {
        let size = size.unwrap_or(0);
        if cfg!(target_os = "linux") {
            size / 2
        } else {
            size
        }
    };
    Buffers {
        receive: reported(socket.recv_buffer_size()),
        send: reported(socket.send_buffer_size()),
    }
}

/// A UDP socket for quinn that never hands the kernel a batch larger than it takes.
#[derive(Debug)]
pub struct BatchedSocket {
    inner: Arc<dyn AsyncUdpSocket>,
}

impl BatchedSocket {
    /// Wraps a bound socket for quinn's endpoint, on the tokio runtime.
    pub fn wrap(socket: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        let inner = quinn::TokioRuntime.wrap_udp_socket(socket)?;
        Ok(Arc::new(Self { inner }))
    }
}

/// The byte ranges of a batch of `len` bytes in packets of `segment` bytes that go out in one
/// call each: whole packets, at most [`MOST_PER_CALL`] bytes, or one packet where a single one
/// is larger.
fn calls(len: usize, segment: usize) -> impl Iterator<Item = Range<usize>> {
    let step = (MOST_PER_CALL / segment.max(1)).max(1) * segment.max(1);
    (0..len)
        .step_by(step)
        .map(move |start| start..(start + step).min(len))
}

impl AsyncUdpSocket for BatchedSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    /// A batch the kernel takes whole goes out as it is. A larger one goes out in parts; when
    /// the socket is full part way, quinn sends the whole batch again once it has room, and
    /// the peer drops the packets it already has.
    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        let Some(segment) = transmit
            .segment_size
            .filter(|_| transmit.contents.len() > MOST_PER_CALL)
        else {
            return self.inner.try_send(transmit);
        };
        for range in calls(transmit.contents.len(), segment) {
            let contents = &transmit.contents[range];
            self.inner.try_send(&Transmit {
                destination: transmit.destination,
                ecn: transmit.ecn,
                contents,
                segment_size: (contents.len() > segment).then_some(segment),
                src_ip: transmit.src_ip,
            })?;
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Whether this process may pass the host's caps on socket buffers (CAP_NET_ADMIN, bit 12
    /// of the effective set).
    #[cfg(target_os = "linux")]
    fn may_force_buffers() -> bool {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| {
                let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
                u64::from_str_radix(line.trim_start_matches("CapEff:").trim(), 16).ok()
            })
            .is_some_and(|capabilities| capabilities & (1 << 12) != 0)
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn buffers_pass_the_hosts_cap_where_the_process_may_and_reach_it_where_not() {
        let cap = |name| {
            std::fs::read_to_string(format!("/proc/sys/net/core/{name}"))
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
        };
        let (Some(rmem_max), Some(wmem_max)) = (cap("rmem_max"), cap("wmem_max")) else {
            eprintln!("skipped: /proc/sys/net/core is not readable here");
            return;
        };
        // Above both caps, so that only the forcing options can give it all.
        let wanted = rmem_max.max(wmem_max) + (1 << 20);
        let socket = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )
        .expect("a UDP socket");
        let given = size_buffers(&socket, wanted);
        let expected = if may_force_buffers() {
            Buffers {
                receive: wanted,
                send: wanted,
            }
        } else {
            Buffers {
                receive: rmem_max,
                send: wmem_max,
            }
        };
        assert_eq!(given, expected, "CAP_NET_ADMIN: {}", may_force_buffers());
    }

    #[test]
    fn a_batch_is_cut_into_whole_packets_of_at_most_one_datagram_each() {
        let cut = |len, segment| {
            calls(len, segment)
                .map(|r| (r.start, r.end))
                .collect::<Vec<_>>()
        };
        // Ten packets of 1452 bytes fit one call.
        assert_eq!(cut(14_520, 1452), [(0, 14_520)]);
        // Ten of 8952 do not: seven fit (62,664 bytes), then the other three.
        assert_eq!(cut(89_520, 8952), [(0, 62_664), (62_664, 89_520)]);
        // A short last packet stays with its batch.
        assert_eq!(cut(62_664 + 100, 8952), [(0, 62_664), (62_664, 62_764)]);
        // A packet larger than one call's worth (IPv6 allows 65,527) goes alone.
        assert_eq!(cut(131_054, 65_527), [(0, 65_527), (65_527, 131_054)]);
        assert!(cut(0, 1452).is_empty());
        for (len, segment) in [(89_520, 8952), (65_508, 1200), (10, 1)] {
            let ranges = cut(len, segment);
            assert_eq!(ranges.first().map(|r| r.0), Some(0));
            assert_eq!(ranges.last().map(|r| r.1), Some(len));
            assert!(ranges.windows(2).all(|w| w[0].1 == w[1].0));
            assert!(
                ranges
                    .iter()
                    .all(|r| r.1 - r.0 <= MOST_PER_CALL && r.0 % segment == 0)
            );
        }
    }

    /// Ten 8952-byte packets in one transmit, as quinn sends them with jumbo-sized packets on
    /// loopback, all reach a plain socket.
    #[tokio::test]
    async fn a_batch_larger_than_the_kernel_takes_arrives_whole() {
        let receiver = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        receiver
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let socket =
            BatchedSocket::wrap(std::net::UdpSocket::bind("127.0.0.1:0").unwrap()).unwrap();
        let segments = socket.max_transmit_segments().min(10);
        if segments * 8952 <= MOST_PER_CALL {
            eprintln!("skipped: this socket sends {segments} packets a call (no GSO), no split");
            return;
        }
        let contents: Vec<u8> = (0..segments * 8952).map(|i| (i / 8952) as u8).collect();
        let transmit = Transmit {
            destination: receiver.local_addr().unwrap(),
            ecn: None,
            contents: &contents,
            segment_size: Some(8952),
            src_ip: None,
        };
        // As quinn does: wait until the socket is writable, try, and wait again if it was not.
        let mut poller = socket.clone().create_io_poller();
        loop {
            std::future::poll_fn(|cx| poller.as_mut().poll_writable(cx))
                .await
                .unwrap();
            match socket.try_send(&transmit) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                sent => break sent.unwrap(),
            }
        }
        let mut buffer = vec![0u8; 65_536];
        for packet in 0..segments {
            let n = receiver
                .recv(&mut buffer)
                .unwrap_or_else(|e| panic!("packet {packet} of {segments}: {e}"));
            assert_eq!(n, 8952, "packet {packet}");
            assert!(
                buffer[..n].iter().all(|&b| b == packet as u8),
                "packet {packet}"
            );
        }
    }
}
