//! A fault proxy for the cluster port: one listener per node, which the node advertises
//! (`--cluster-advertise`) so that every other node reaches it through here. A node's own
//! connections leave from its own loopback address (127.0.0.(10+i), its `--cluster-addr`),
//! so the proxy tells who is talking to whom, and can cut or slow each direction of each
//! pair of nodes:
//!
//! - a **partition** closes the pair's open connections and refuses new ones (the nodes see
//!   resets and refused connections, as from a firewall that rejects);
//! - a **delay** holds every chunk of bytes for that long before passing it on (latency,
//!   not a bandwidth cap: chunks are timed on arrival).

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// The loopback address node `i` binds its cluster port to and connects from.
pub fn node_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 10 + i as u8)
}

fn node_of(ip: IpAddr) -> Option<usize> {
    match ip {
        IpAddr::V4(v4) if v4.octets()[..3] == [127, 0, 0] && v4.octets()[3] >= 10 => {
            Some(v4.octets()[3] as usize - 10)
        }
        _ => None,
    }
}

/// An open connection: (from, to), its two sockets, and whether it is still open.
type Conn = ((usize, usize), TcpStream, TcpStream, Arc<AtomicBool>);

/// What the proxy did: connections passed, refused (partitioned) and cut by a partition.
#[derive(Default, Debug, Clone, Copy)]
pub struct Counts {
    pub passed: u64,
    pub refused: u64,
    pub cut: u64,
}

#[derive(Default)]
struct Rules {
    counts: Counts,
    /// (from, to): traffic from `from` to `to` is cut.
    blocked: HashSet<(usize, usize)>,
    /// (from, to): the latency added to it.
    delay: HashMap<(usize, usize), Duration>,
    conns: Vec<Conn>,
}

pub struct FaultProxy {
    rules: Arc<Mutex<Rules>>,
    stop: Arc<AtomicBool>,
    /// The advertised (proxy) address of each node.
    pub addrs: Vec<SocketAddr>,
}

impl FaultProxy {
    /// A proxy in front of each of `targets` (the nodes' real cluster addresses).
    pub fn start(targets: &[SocketAddr]) -> FaultProxy {
        let rules: Arc<Mutex<Rules>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let mut addrs = Vec::new();
        for (to, &target) in targets.iter().enumerate() {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.set_nonblocking(true).unwrap();
            addrs.push(listener.local_addr().unwrap());
            let (rules, stop) = (rules.clone(), stop.clone());
            std::thread::spawn(move || accept_loop(listener, to, target, rules, stop));
        }
        FaultProxy { rules, stop, addrs }
    }

    /// Cuts all traffic between `a` and `b` (both directions).
    pub fn cut(&self, a: usize, b: usize) {
        let mut guard = self.rules.lock().unwrap();
        let r = &mut *guard;
        r.blocked.insert((a, b));
        r.blocked.insert((b, a));
        let counts = &mut r.counts;
        r.conns.retain(|(pair, x, y, open)| {
            if (*pair == (a, b) || *pair == (b, a)) && open.load(Ordering::Relaxed) {
                counts.cut += 1;
                let _ = x.shutdown(Shutdown::Both);
                let _ = y.shutdown(Shutdown::Both);
                open.store(false, Ordering::Relaxed);
            }
            open.load(Ordering::Relaxed)
        });
    }

    /// Adds `d` of latency to the traffic between `a` and `b`, each way.
    pub fn slow(&self, a: usize, b: usize, d: Duration) {
        let mut r = self.rules.lock().unwrap();
        r.delay.insert((a, b), d);
        r.delay.insert((b, a), d);
    }

    /// What the proxy has done so far.
    pub fn counts(&self) -> Counts {
        self.rules.lock().unwrap().counts
    }

    /// Ends every partition and delay.
    pub fn heal(&self) {
        let mut r = self.rules.lock().unwrap();
        r.blocked.clear();
        r.delay.clear();
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let mut r = self.rules.lock().unwrap();
        for (_, x, y, _) in r.conns.drain(..) {
            let _ = x.shutdown(Shutdown::Both);
            let _ = y.shutdown(Shutdown::Both);
        }
    }
}

fn accept_loop(
    listener: TcpListener,
    to: usize,
    target: SocketAddr,
    rules: Arc<Mutex<Rules>>,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::Relaxed) {
        let (inbound, peer) = match listener.accept() {
            Ok(x) => x,
            Err(_) => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
        };
        // A sender the proxy does not know (none in the tests) is never cut.
        let from = node_of(peer.ip()).unwrap_or(usize::MAX);
        {
            let mut r = rules.lock().unwrap();
            if r.blocked.contains(&(from, to)) {
                r.counts.refused += 1;
                let _ = inbound.shutdown(Shutdown::Both);
                continue;
            }
            r.counts.passed += 1;
        }
        let _ = inbound.set_nonblocking(false);
        let Ok(outbound) = TcpStream::connect_timeout(&target, Duration::from_secs(1)) else {
            continue;
        };
        let _ = inbound.set_nodelay(true);
        let _ = outbound.set_nodelay(true);
        let open = Arc::new(AtomicBool::new(true));
        let pair = (from, to);
        {
            let mut r = rules.lock().unwrap();
            r.conns.retain(|c| c.3.load(Ordering::Relaxed));
            r.conns.push((
                pair,
                inbound.try_clone().unwrap(),
                outbound.try_clone().unwrap(),
                open.clone(),
            ));
        }
        for (src, dst, dir) in [
            (&inbound, &outbound, (from, to)),
            (&outbound, &inbound, (to, from)),
        ] {
            let (src, dst) = (src.try_clone().unwrap(), dst.try_clone().unwrap());
            pump(src, dst, dir, rules.clone(), open.clone());
        }
    }
}

/// Copies `src` to `dst`, each chunk held for the direction's current delay.
fn pump(
    mut src: TcpStream,
    mut dst: TcpStream,
    dir: (usize, usize),
    rules: Arc<Mutex<Rules>>,
    open: Arc<AtomicBool>,
) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let closer = (src.try_clone().unwrap(), open.clone());
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match src.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send((Instant::now(), buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
    });
    std::thread::spawn(move || {
        for (at, bytes) in rx {
            let delay = rules.lock().unwrap().delay.get(&dir).copied();
            if let Some(d) = delay {
                let due = at + d;
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
            }
            if !open.load(Ordering::Relaxed) || dst.write_all(&bytes).is_err() {
                break;
            }
        }
        // Either side gone: the whole connection goes.
        closer.1.store(false, Ordering::Relaxed);
        let _ = closer.0.shutdown(Shutdown::Both);
        let _ = dst.shutdown(Shutdown::Both);
    });
}
