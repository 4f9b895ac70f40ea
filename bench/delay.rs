//! A UDP link with a round-trip time, for bench/dataplane.sh (BENCH_RTT_MS): datagrams that
//! arrive at LISTEN go on to TARGET, and the answers back to whoever spoke first at LISTEN,
//! each way after DELAY_MS, and drops LOSS_PCT per cent of them each way (default 0), spread
//! evenly by a fixed pseudo-random sequence. bench/delay.py does the same for TCP, without loss;
//! for QUIC it forwarded only about 13,000 datagrams a second, and its drops looked like
//! congestion. Standard library only, built by the bench with `rustc -O`; it runs until it is
//! stopped.
//!
//! Usage: delay LISTEN TARGET DELAY_MS [LOSS_PCT]

use std::net::{SocketAddr, UdpSocket};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

unsafe extern "C" {
    fn setsockopt(fd: i32, level: i32, name: i32, value: *const i32, len: u32) -> i32;
}

/// Large socket buffers, as the gateways ask for: a burst of packets waits in the kernel
/// instead of being dropped. Linux: SOL_SOCKET with SO_SNDBUFFORCE and SO_RCVBUFFORCE (past
/// the host's cap, with CAP_NET_ADMIN), else SO_SNDBUF and SO_RCVBUF.
fn buffers(socket: &UdpSocket) {
    use std::os::fd::AsRawFd;
    let size: i32 = 16 << 20;
    for (force, plain) in [(32, 7), (33, 8)] {
        // SAFETY: a valid descriptor, a pointer to an i32 and its length.
        if unsafe { setsockopt(socket.as_raw_fd(), 1, force, &size, 4) } != 0 {
            // SAFETY: as above.
            unsafe { setsockopt(socket.as_raw_fd(), 1, plain, &size, 4) };
        }
    }
}

/// Takes datagrams from `from` and sends each to `to()` on `out`, `delay` after it arrived,
/// but for a share `loss` (0 to 1) of them; `heard` learns each sender's address.
fn pump(
    from: UdpSocket,
    out: UdpSocket,
    delay: Duration,
    loss: f64,
    heard: impl Fn(SocketAddr) + Send + 'static,
    to: impl Fn() -> Option<SocketAddr> + Send + 'static,
) {
    let (queue, due) = mpsc::channel::<(Instant, Vec<u8>)>();
    std::thread::spawn(move || {
        for (at, datagram) in due {
            let now = Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            }
            if let Some(to) = to() {
                let _ = out.send_to(&datagram, to);
            }
        }
    });
    std::thread::spawn(move || {
        let mut buffer = vec![0u8; 65_536];
        // xorshift64: the same losses on every run.
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        while let Ok((n, sender)) = from.recv_from(&mut buffer) {
            heard(sender);
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            if ((state >> 11) as f64 / (1u64 << 53) as f64) < loss {
                continue;
            }
            if queue
                .send((Instant::now() + delay, buffer[..n].to_vec()))
                .is_err()
            {
                return;
            }
        }
    });
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (listen, target, delay_ms, loss_pct) = match args.as_slice() {
        [_, listen, target, delay_ms] => (listen, target, delay_ms, "0"),
        [_, listen, target, delay_ms, loss_pct] => (listen, target, delay_ms, loss_pct.as_str()),
        _ => {
            eprintln!("usage: delay LISTEN TARGET DELAY_MS [LOSS_PCT]");
            std::process::exit(2);
        }
    };
    let loss: f64 = loss_pct.parse().expect("LOSS_PCT is a number");
    let loss = (loss / 100.0).clamp(0.0, 1.0);
    let listen: SocketAddr = listen.parse().expect("LISTEN is host:port");
    let target: SocketAddr = target.parse().expect("TARGET is host:port");
    let delay_ms: f64 = delay_ms.parse().expect("DELAY_MS is a number");
    let delay = Duration::from_secs_f64(delay_ms / 1000.0);
    let front = UdpSocket::bind(listen).expect("LISTEN can be bound");
    let back = UdpSocket::bind("127.0.0.1:0").expect("a loopback port");
    buffers(&front);
    buffers(&back);
    let peer = Arc::new(Mutex::new(None));
    let learned = peer.clone();
    pump(
        front.try_clone().expect("a socket handle"),
        back.try_clone().expect("a socket handle"),
        delay,
        loss,
        move |sender| *learned.lock().unwrap() = Some(sender),
        move || Some(target),
    );
    pump(back, front, delay, loss, |_| {}, move || *peer.lock().unwrap());
    loop {
        std::thread::park();
    }
}
