//! The portal-IP agent against real kernels: network namespaces joined by a veth pair
//! (and, for the failover test, by a bridge). Needs root and `ip`; otherwise every test
//! prints "skipped" and passes.
//!
//! The agent runs on threads that `setns(CLONE_NEWNET)` into a namespace; sockets keep
//! the namespace they were created in, so captures opened there can be read anywhere.

use std::fs::File;
use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use twinsan_agents::vip::{self, frames, Vip, VipConfig, VipError};

const VIP4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 100);
const A4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const B4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 0x100);
const B6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 2);

fn skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let have_ip = Command::new("ip")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !root || !have_ip {
        eprintln!("{test}: skipped (needs root and iproute2)");
        return true;
    }
    false
}

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Network namespaces created for one test, deleted on drop (also on panic).
struct Lab {
    prefix: String,
    namespaces: Vec<String>,
}

impl Lab {
    fn new() -> Lab {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Lab {
            prefix: format!("tsvip{}x{n}", std::process::id()),
            namespaces: Vec::new(),
        }
    }

    fn ns(&self, short: &str) -> String {
        format!("{}{short}", self.prefix)
    }

    fn add_ns(&mut self, short: &str) -> String {
        let name = self.ns(short);
        ip(&["netns", "add", &name]);
        self.namespaces.push(name.clone());
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        name
    }

    /// Namespaces `a` and `b`, `eth0` in each joined by a veth pair; 10.77.0.1/24 and
    /// fd77::1/64 on a, 10.77.0.2/24 and fd77::2/64 on b.
    fn pair() -> Lab {
        let mut lab = Lab::new();
        let a = lab.add_ns("a");
        let b = lab.add_ns("b");
        ip(&[
            "-n", &a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", &b,
        ]);
        for (ns, v4, v6) in [
            (&a, "10.77.0.1/24", "fd77::1/64"),
            (&b, "10.77.0.2/24", "fd77::2/64"),
        ] {
            ip(&["-n", ns, "addr", "add", v4, "dev", "eth0"]);
            ip(&["-n", ns, "addr", "add", v6, "dev", "eth0", "nodad"]);
            ip(&["-n", ns, "link", "set", "eth0", "up"]);
        }
        lab
    }

    /// A switch namespace `sw` with a bridge and one namespace per host, each with
    /// `eth0` on the bridge (port `sw<host>`) and 10.77.0.<n>/24 (n = 1, 2, ...).
    fn bridged(hosts: &[&str]) -> Lab {
        let mut lab = Lab::new();
        let sw = lab.add_ns("sw");
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &sw, "link", "set", "br0", "up"]);
        for (i, host) in hosts.iter().enumerate() {
            let ns = lab.add_ns(host);
            let port = format!("sw{host}");
            ip(&[
                "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ]);
            ip(&["-n", &sw, "link", "set", &port, "master", "br0"]);
            ip(&["-n", &sw, "link", "set", &port, "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("10.77.0.{}/24", i + 1),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        }
        lab
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Runs `f` on a new thread inside network namespace `ns` and returns its result
/// (re-raising its panic).
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        // SAFETY: `file` is an open namespace file; setns only changes this thread's
        // network namespace.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", io::Error::last_os_error());
        f()
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

fn mac_of(ns: &str) -> frames::MacAddr {
    let out = ip(&["-n", ns, "-o", "link", "show", "dev", "eth0"]);
    let text = out
        .split("link/ether ")
        .nth(1)
        .expect("link/ether in ip output");
    let mut mac = [0u8; 6];
    for (i, part) in text
        .split_whitespace()
        .next()
        .unwrap()
        .split(':')
        .enumerate()
    {
        mac[i] = u8::from_str_radix(part, 16).unwrap();
    }
    frames::MacAddr(mac)
}

/// A packet socket on `eth0` of a namespace, receiving frames of one EtherType.
struct Capture {
    fd: OwnedFd,
}

impl Capture {
    fn open(ns: &str, ethertype: u16) -> Capture {
        in_ns(ns, move || {
            let proto = libc::c_int::from(ethertype.to_be());
            // SAFETY: socket(2) takes only integers.
            let fd = unsafe {
                libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto)
            };
            assert!(fd >= 0, "packet socket: {}", io::Error::last_os_error());
            // SAFETY: `fd` is a fresh descriptor nobody else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: the name is a NUL-terminated literal.
            let index = unsafe { libc::if_nametoindex(c"eth0".as_ptr()) };
            assert_ne!(index, 0);
            // SAFETY: sockaddr_ll is plain integers; all-zero is valid.
            let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            sa.sll_family = libc::AF_PACKET as u16;
            sa.sll_protocol = ethertype.to_be();
            sa.sll_ifindex = index as i32;
            // SAFETY: `sa` is a live sockaddr_ll of the size passed.
            let rc = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&raw const sa).cast(),
                    size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            assert_eq!(rc, 0, "bind packet socket: {}", io::Error::last_os_error());
            Capture { fd }
        })
    }

    /// The first frame within `timeout` for which `pred` holds.
    fn wait_for(&self, timeout: Duration, mut pred: impl FnMut(&[u8]) -> bool) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 2048];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let mut p = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one live pollfd.
            let rc = unsafe { libc::poll(&raw mut p, 1, left.as_millis().max(1) as libc::c_int) };
            if rc <= 0 {
                continue;
            }
            // SAFETY: `buf` is writable for its length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n > 0 && pred(&buf[..n as usize]) {
                return Some(buf[..n as usize].to_vec());
            }
        }
    }
}

fn is_garp(frame: &[u8], addr: Ipv4Addr, mac: frames::MacAddr, op: u16) -> bool {
    frames::parse_arp_frame(frame).is_some_and(|p| {
        p.op == op && p.spa == addr && p.tpa == addr && p.sha == mac && p.eth_src == mac
    })
}

fn addrs(ns: &str, family: &str) -> String {
    ip(&["-n", ns, family, "-o", "addr", "show", "dev", "eth0"])
}

#[test]
fn add_has_remove_ipv4_and_ipv6() {
    if skip("add_has_remove_ipv4_and_ipv6") {
        return;
    }
    let lab = Lab::pair();
    let a = lab.ns("a");
    in_ns(&a, || {
        let v4 = IpAddr::V4(VIP4);
        assert!(!vip::has_address("eth0", v4).unwrap());
        vip::add_address("eth0", v4, 24).unwrap();
        assert!(vip::has_address("eth0", v4).unwrap());
        assert_eq!(vip::address_prefix_len("eth0", v4).unwrap(), Some(24));
        // Create-exclusive: a second add is EEXIST, named in the message.
        let e = vip::add_address("eth0", v4, 24).unwrap_err();
        assert_eq!(e.errno(), Some(libc::EEXIST), "{e}");
        assert!(e.to_string().contains("10.77.0.100 on eth0"), "{e}");
        // Removing with another prefix length leaves it alone and says why.
        let e = vip::remove_address("eth0", v4, 32).unwrap_err();
        assert!(
            matches!(
                e,
                VipError::PrefixMismatch {
                    present: 24,
                    requested: 32,
                    ..
                }
            ),
            "{e}"
        );
        assert!(matches!(
            vip::add_address("nosuch0", v4, 24),
            Err(VipError::NoSuchInterface { .. })
        ));
    });
    let shown = addrs(&a, "-4");
    assert!(
        shown.contains("inet 10.77.0.100/24 brd 10.77.0.255"),
        "{shown}"
    );

    in_ns(&a, || {
        let v4 = IpAddr::V4(VIP4);
        vip::remove_address("eth0", v4, 24).unwrap();
        assert!(!vip::has_address("eth0", v4).unwrap());
        vip::remove_address("eth0", v4, 24).unwrap(); // idempotent
        vip::remove_address("nosuch0", v4, 24).unwrap(); // interface gone: address gone
                                                         // The fixed address is untouched.
        assert!(vip::has_address("eth0", IpAddr::V4(A4)).unwrap());

        let v6 = IpAddr::V6(VIP6);
        vip::add_address("eth0", v6, 64).unwrap();
        assert!(vip::has_address("eth0", v6).unwrap());
        assert_eq!(vip::address_prefix_len("eth0", v6).unwrap(), Some(64));
    });
    let shown = addrs(&a, "-4");
    assert!(!shown.contains("10.77.0.100"), "{shown}");
    let shown6 = addrs(&a, "-6");
    let line = shown6
        .lines()
        .find(|l| l.contains("fd77::100/64"))
        .unwrap_or_else(|| panic!("{shown6}"));
    assert!(
        !line.contains("tentative"),
        "NODAD address must be usable at once: {line}"
    );

    in_ns(&a, || {
        let v6 = IpAddr::V6(VIP6);
        vip::remove_address("eth0", v6, 64).unwrap();
        assert!(!vip::has_address("eth0", v6).unwrap());
        vip::remove_address("eth0", v6, 64).unwrap();
    });
    assert!(!addrs(&a, "-6").contains("fd77::100"));
}

#[test]
fn gratuitous_arp_reaches_peer_and_updates_its_cache() {
    if skip("gratuitous_arp_reaches_peer_and_updates_its_cache") {
        return;
    }
    let lab = Lab::pair();
    let (a, b) = (lab.ns("a"), lab.ns("b"));
    let mac_a = mac_of(&a);
    // b believes the portal address lives elsewhere.
    ip(&[
        "-n",
        &b,
        "neigh",
        "replace",
        "10.77.0.100",
        "lladdr",
        "02:00:00:00:00:99",
        "dev",
        "eth0",
        "nud",
        "stale",
    ]);
    let cap = Capture::open(&b, frames::ETHERTYPE_ARP);
    in_ns(&a, || {
        vip::send_gratuitous_arp("eth0", VIP4, 2, 20).unwrap()
    });
    let t = Duration::from_secs(2);
    assert!(
        cap.wait_for(t, |f| is_garp(f, VIP4, mac_a, 1)).is_some(),
        "no gratuitous ARP request"
    );
    assert!(
        cap.wait_for(t, |f| is_garp(f, VIP4, mac_a, 2)).is_some(),
        "no gratuitous ARP reply"
    );
    let neigh = ip(&["-n", &b, "neigh", "show", "10.77.0.100", "dev", "eth0"]);
    assert!(
        neigh.contains(&mac_a.to_string()),
        "b's neighbour entry not updated: {neigh}"
    );
}

#[test]
fn probe_sees_holder_and_start_refuses() {
    if skip("probe_sees_holder_and_start_refuses") {
        return;
    }
    let lab = Lab::pair();
    let (a, b) = (lab.ns("a"), lab.ns("b"));
    let mac_b = mac_of(&b);
    assert!(!in_ns(&a, || vip::address_in_use("eth0", VIP4, 150).unwrap()));
    // The peer's own address is answered.
    assert!(in_ns(&a, || vip::address_in_use("eth0", B4, 300).unwrap()));

    ip(&["-n", &b, "addr", "add", "10.77.0.100/24", "dev", "eth0"]);
    assert!(in_ns(&a, || vip::address_in_use("eth0", VIP4, 300).unwrap()));
    let err = in_ns(&a, || {
        let mut v = Vip::new(VipConfig::from_cidr("eth0", "10.77.0.100/24").unwrap()).unwrap();
        v.start().unwrap_err()
    });
    match &err {
        VipError::InUse { addr, mac, .. } => {
            assert_eq!(*addr, VIP4);
            assert_eq!(*mac, mac_b);
        }
        other => panic!("expected InUse, got {other}"),
    }
    assert!(
        !addrs(&a, "-4").contains("10.77.0.100"),
        "refused start must not add the address"
    );

    // Once b lets go, a can take it.
    ip(&["-n", &b, "addr", "del", "10.77.0.100/24", "dev", "eth0"]);
    in_ns(&a, || {
        let mut v = Vip::new(VipConfig::from_cidr("eth0", "10.77.0.100/24").unwrap()).unwrap();
        v.start().unwrap();
        assert!(v.monitor().unwrap());
        // Starting again while up is fine (re-announces).
        v.start().unwrap();
        // Our own address is not "in use" by another host.
        assert!(!vip::address_in_use("eth0", VIP4, 100).unwrap());
        v.stop().unwrap();
        assert!(!v.monitor().unwrap());
        v.stop().unwrap();
    });
}

#[test]
fn start_announces_before_returning_and_stop_cancels_the_rest() {
    if skip("start_announces_before_returning_and_stop_cancels_the_rest") {
        return;
    }
    let lab = Lab::pair();
    let (a, b) = (lab.ns("a"), lab.ns("b"));
    let mac_a = mac_of(&a);
    let cap = Capture::open(&b, frames::ETHERTYPE_ARP);
    let mut v = in_ns(&a, || {
        let mut c = VipConfig::from_cidr("eth0", "10.77.0.100/24").unwrap();
        c.arp_count = 3;
        c.arp_interval_ms = 1500;
        let mut v = Vip::new(c).unwrap();
        v.start().unwrap();
        v
    });
    // The second round is due 1.5 s after start: whatever arrives within 0.5 s was
    // sent by start() itself.
    let quick = Duration::from_millis(500);
    assert!(
        cap.wait_for(quick, |f| is_garp(f, VIP4, mac_a, 1))
            .is_some(),
        "first round missing"
    );
    assert!(
        cap.wait_for(quick, |f| is_garp(f, VIP4, mac_a, 2))
            .is_some(),
        "first round reply missing"
    );
    // The background thread sends round two.
    let second = cap.wait_for(Duration::from_secs(3), |f| is_garp(f, VIP4, mac_a, 1));
    assert!(second.is_some(), "second round missing");
    // stop() cancels round three and removes the address.
    in_ns(&a, move || {
        v.stop().unwrap();
        assert!(!v.monitor().unwrap());
    });
    let late = cap.wait_for(Duration::from_millis(2000), |f| is_garp(f, VIP4, mac_a, 1));
    assert!(late.is_none(), "announcement after stop()");
}

#[test]
fn ipv6_start_sends_unsolicited_na() {
    if skip("ipv6_start_sends_unsolicited_na") {
        return;
    }
    let lab = Lab::pair();
    let (a, b) = (lab.ns("a"), lab.ns("b"));
    let mac_a = mac_of(&a);
    let cap = Capture::open(&b, frames::ETHERTYPE_IPV6);
    in_ns(&a, || {
        let mut c = VipConfig::from_cidr("eth0", "fd77::100/64").unwrap();
        c.arp_count = 1;
        let mut v = Vip::new(c).unwrap();
        v.start().unwrap();
        assert!(v.monitor().unwrap());
    });
    let is_na =
        |f: &[u8]| f.len() >= 14 + 40 + 32 && f[14 + 6] == frames::IPPROTO_ICMPV6 && f[54] == 136;
    let f = cap
        .wait_for(Duration::from_secs(2), is_na)
        .expect("no neighbour advertisement");
    assert_eq!(&f[0..6], &[0x33, 0x33, 0, 0, 0, 1], "to the all-nodes MAC");
    assert_eq!(&f[6..12], &mac_a.0);
    let ip6 = &f[14..54];
    assert_eq!(ip6[7], 255, "hop limit");
    let src = Ipv6Addr::from(<[u8; 16]>::try_from(&ip6[8..24]).unwrap());
    let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&ip6[24..40]).unwrap());
    assert_eq!(src, VIP6);
    assert_eq!(dst, frames::ALL_NODES);
    let icmp = &f[54..86];
    assert_eq!(icmp[4], frames::NA_FLAG_OVERRIDE);
    assert_eq!(&icmp[8..24], &VIP6.octets());
    assert_eq!(&icmp[24..26], &[2, 1], "target link-layer address option");
    assert_eq!(&icmp[26..32], &mac_a.0);
    assert_eq!(
        frames::upper_layer_checksum_v6(src, dst, frames::IPPROTO_ICMPV6, icmp),
        0
    );
    let shown = addrs(&a, "-6");
    let line = shown.lines().find(|l| l.contains("fd77::100/64"));
    assert!(line.is_some_and(|l| !l.contains("tentative")), "{shown}");

    // The plain function too.
    in_ns(&a, || vip::send_unsolicited_na("eth0", VIP6, 1, 0).unwrap());
    assert!(cap.wait_for(Duration::from_secs(2), is_na).is_some());
}

#[test]
fn tickle_acks_arrive_with_valid_checksums() {
    if skip("tickle_acks_arrive_with_valid_checksums") {
        return;
    }
    let lab = Lab::pair();
    let (a, b) = (lab.ns("a"), lab.ns("b"));
    let local4: SocketAddr = (VIP4, 3260).into();
    let client4: SocketAddr = (B4, 40000).into();
    let cap4 = Capture::open(&b, frames::ETHERTYPE_IPV4);
    in_ns(&a, move || {
        vip::send_tickle_ack(local4, client4, 2).unwrap()
    });
    let tcp_from_vip =
        |f: &[u8]| f.len() >= 54 && f[14 + 9] == frames::IPPROTO_TCP && f[26..30] == VIP4.octets();
    let f = cap4
        .wait_for(Duration::from_secs(3), tcp_from_vip)
        .expect("no IPv4 tickle ACK at b");
    let (iph, tcp) = (&f[14..34], &f[34..54]);
    assert_eq!(frames::internet_checksum(&[iph]), 0, "IPv4 header checksum");
    assert_eq!(&iph[16..20], &B4.octets());
    assert_eq!(
        frames::upper_layer_checksum_v4(VIP4, B4, frames::IPPROTO_TCP, tcp),
        0,
        "TCP checksum"
    );
    assert_eq!(u16::from_be_bytes([tcp[0], tcp[1]]), 3260);
    assert_eq!(u16::from_be_bytes([tcp[2], tcp[3]]), 40000);
    assert_eq!(&tcp[4..12], &[0; 8], "seq 0, ack 0");
    assert_eq!(tcp[13], frames::TCP_FLAG_ACK);
    assert_eq!(
        u16::from_be_bytes([tcp[14], tcp[15]]),
        frames::TICKLE_WINDOW
    );

    let local6: SocketAddr = (IpAddr::V6(VIP6), 3260).into();
    let client6: SocketAddr = (IpAddr::V6(B6), 40001).into();
    let cap6 = Capture::open(&b, frames::ETHERTYPE_IPV6);
    in_ns(&a, move || {
        vip::send_tickle_ack(local6, client6, 2).unwrap()
    });
    let tcp6_from_vip =
        |f: &[u8]| f.len() >= 74 && f[14 + 6] == frames::IPPROTO_TCP && f[22..38] == VIP6.octets();
    let f = cap6
        .wait_for(Duration::from_secs(3), tcp6_from_vip)
        .expect("no IPv6 tickle ACK at b");
    let tcp = &f[54..74];
    assert_eq!(&f[38..54], &B6.octets());
    assert_eq!(
        frames::upper_layer_checksum_v6(VIP6, B6, frames::IPPROTO_TCP, tcp),
        0,
        "TCP checksum"
    );
    assert_eq!(u16::from_be_bytes([tcp[2], tcp[3]]), 40001);
    assert_eq!(tcp[13], frames::TCP_FLAG_ACK);
}

/// The whole takeover: client c is connected to the portal address on a; a drops off
/// the network; b probes, adds and announces the address, then tickles c's connection,
/// and c's stack resets it at once.
#[test]
fn failover_with_tickle_resets_the_client_at_once() {
    if skip("failover_with_tickle_resets_the_client_at_once") {
        return;
    }
    let lab = Lab::bridged(&["a", "b", "c"]);
    let (a, b, c, sw) = (lab.ns("a"), lab.ns("b"), lab.ns("c"), lab.ns("sw"));
    let portal: SocketAddr = (VIP4, 3260).into();

    let (mut va, listener) = in_ns(&a, move || {
        let mut v = Vip::new(VipConfig::from_cidr("eth0", "10.77.0.100/24").unwrap()).unwrap();
        v.start().unwrap();
        (v, TcpListener::bind(portal).unwrap())
    });
    let mut client = in_ns(&c, move || {
        TcpStream::connect_timeout(&portal, Duration::from_secs(3)).unwrap()
    });
    let (_server_side, _) = listener.accept().unwrap();
    let client_addr = client.local_addr().unwrap();
    assert!(
        in_ns(&b, || vip::address_in_use("eth0", VIP4, 300).unwrap()),
        "a holds it"
    );

    // a drops off the network, keeping its socket and address.
    ip(&["-n", &sw, "link", "set", "swa", "down"]);
    assert!(!in_ns(&b, || vip::address_in_use("eth0", VIP4, 200).unwrap()));
    let mut vb = in_ns(&b, || {
        let mut v = Vip::new(VipConfig::from_cidr("eth0", "10.77.0.100/24").unwrap()).unwrap();
        v.start().unwrap();
        v
    });

    // Without a tickle the idle client notices nothing.
    let mut buf = [0u8; 16];
    client
        .set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    let e = client.read(&mut buf).unwrap_err();
    assert!(
        matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ),
        "{e}"
    );

    in_ns(&b, move || {
        vip::send_tickle_ack(portal, client_addr, 3).unwrap()
    });
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let t0 = Instant::now();
    let e = client
        .read(&mut buf)
        .expect_err("the connection must be reset");
    assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}");
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "reset took {:?}",
        t0.elapsed()
    );

    in_ns(&b, move || vb.stop().unwrap());
    in_ns(&a, move || va.stop().unwrap());
}
