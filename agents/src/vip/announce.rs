//! Telling the neighbours: gratuitous ARP and unsolicited neighbour advertisements
//! (one round now, the rest from a cancellable background thread), and the RFC 5227
//! ARP probe that asks whether an address is already answered on the link.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::OwnedFd;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::frames::{self, ArpOp, MacAddr, ARP_FRAME_LEN, NA_LEN};
use super::sys::{self, Link};
use super::VipError;

/// EtherType of ARP as `socket(2)`/`bind(2)` want it for packet sockets.
const ETH_P_ARP: u16 = 0x0806;

fn io_err(context: String) -> impl FnOnce(io::Error) -> VipError {
    move |error| VipError::Io { context, error }
}

/// Looks up `ifname`, mapping "no such device" to [`VipError::NoSuchInterface`].
pub(crate) fn link_of(ifname: &str) -> Result<Link, VipError> {
    sys::link(ifname).map_err(|error| match error.raw_os_error() {
        Some(libc::ENODEV | libc::ENXIO) => VipError::NoSuchInterface {
            interface: ifname.to_owned(),
        },
        _ => VipError::Io {
            context: format!("reading the link address of {ifname}"),
            error,
        },
    })
}

/// Whether ARP works on this link (Ethernet-like and not `IFF_NOARP`).
pub(crate) fn link_speaks_arp(link: &Link) -> bool {
    link.hw_type == sys::ARPHRD_ETHER && link.flags & sys::IFF_NOARP == 0
}

fn require_ethernet(ifname: &str, link: &Link, what: &'static str) -> Result<(), VipError> {
    if link.hw_type == sys::ARPHRD_ETHER {
        Ok(())
    } else {
        Err(VipError::NotEthernet {
            interface: ifname.to_owned(),
            hw_type: link.hw_type,
            what,
        })
    }
}

/// An opened socket and prebuilt frames for announcing one address on one interface.
#[derive(Debug)]
pub(crate) enum Announcer {
    Arp {
        interface: String,
        addr: Ipv4Addr,
        fd: OwnedFd,
        dest: libc::sockaddr_ll,
        request: [u8; ARP_FRAME_LEN],
        reply: [u8; ARP_FRAME_LEN],
    },
    Na {
        interface: String,
        addr: Ipv6Addr,
        fd: OwnedFd,
        dest: libc::sockaddr_in6,
        message: [u8; NA_LEN],
    },
}

impl Announcer {
    /// Gratuitous ARP (a request and a reply per round) for `addr` on `ifname`.
    pub(crate) fn arp(ifname: &str, link: &Link, addr: Ipv4Addr) -> Result<Self, VipError> {
        require_ethernet(ifname, link, "gratuitous ARP")?;
        // Protocol 0: a send-only packet socket, nothing is queued for reading.
        let fd = sys::socket(libc::AF_PACKET, libc::SOCK_RAW, 0)
            .map_err(io_err(format!("opening a packet socket for {ifname}")))?;
        Ok(Announcer::Arp {
            interface: ifname.to_owned(),
            addr,
            fd,
            dest: sys::sockaddr_ll(link.index, ETH_P_ARP, MacAddr::BROADCAST),
            request: frames::gratuitous_arp(link.mac, addr, ArpOp::Request),
            reply: frames::gratuitous_arp(link.mac, addr, ArpOp::Reply),
        })
    }

    /// Unsolicited neighbour advertisement for `addr` on `ifname`, sourced from `addr`
    /// itself as Linux does (`IPV6_FREEBIND`, so this works before the address is
    /// usable), hop limit 255, to ff02::1.
    pub(crate) fn na(ifname: &str, link: &Link, addr: Ipv6Addr) -> Result<Self, VipError> {
        require_ethernet(ifname, link, "unsolicited neighbour advertisement")?;
        let ctx = |what: &str| format!("{what} for neighbour advertisements on {ifname}");
        let fd = sys::socket(libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_ICMPV6)
            .map_err(io_err(ctx("opening an ICMPv6 socket")))?;
        sys::bind_to_device(&fd, ifname).map_err(io_err(ctx("SO_BINDTODEVICE")))?;
        let index = libc::c_int::try_from(link.index).unwrap_or(0);
        let opts = [
            (libc::IPV6_MULTICAST_IF, index, "IPV6_MULTICAST_IF"),
            (libc::IPV6_MULTICAST_HOPS, 255, "IPV6_MULTICAST_HOPS"),
            (libc::IPV6_UNICAST_HOPS, 255, "IPV6_UNICAST_HOPS"),
            (libc::IPV6_MULTICAST_LOOP, 0, "IPV6_MULTICAST_LOOP"),
        ];
        for (name, value, what) in opts {
            sys::set_int_opt(&fd, libc::IPPROTO_IPV6, name, value).map_err(io_err(ctx(what)))?;
        }
        let _ = sys::set_int_opt(&fd, libc::IPPROTO_IPV6, libc::IPV6_FREEBIND, 1);
        let scope = if addr.is_unicast_link_local() {
            link.index
        } else {
            0
        };
        if let Err(e) = sys::bind(&fd, &sys::sockaddr_in6(addr, scope)) {
            // The kernel then picks a source address of the interface and recomputes
            // the ICMPv6 checksum; the advertisement stays valid.
            tracing::debug!(interface = ifname, %addr, error = %e, "cannot source the NA from the address itself");
        }
        Ok(Announcer::Na {
            interface: ifname.to_owned(),
            addr,
            fd,
            dest: sys::sockaddr_in6(frames::ALL_NODES, link.index),
            message: frames::unsolicited_na(addr, addr, link.mac),
        })
    }

    /// Sends one round: an ARP request and an ARP reply, or one NA.
    pub(crate) fn announce(&self) -> Result<(), VipError> {
        match self {
            Announcer::Arp {
                interface,
                addr,
                fd,
                dest,
                request,
                reply,
            } => {
                for frame in [request, reply] {
                    sys::send_to(fd, frame, dest).map_err(io_err(format!(
                        "sending gratuitous ARP for {addr} on {interface}"
                    )))?;
                }
                Ok(())
            }
            Announcer::Na {
                interface,
                addr,
                fd,
                dest,
                message,
            } => sys::send_to(fd, message, dest).map_err(io_err(format!(
                "sending a neighbour advertisement for {addr} on {interface}"
            ))),
        }
    }

    fn describe(&self) -> (String, IpAddr) {
        match self {
            Announcer::Arp {
                interface, addr, ..
            } => (interface.clone(), IpAddr::V4(*addr)),
            Announcer::Na {
                interface, addr, ..
            } => (interface.clone(), IpAddr::V6(*addr)),
        }
    }

    /// `count` rounds, `interval` apart, in the calling thread.
    pub(crate) fn run(&self, count: u32, interval: Duration) -> Result<(), VipError> {
        for round in 0..count {
            if round > 0 {
                std::thread::sleep(interval);
            }
            self.announce()?;
        }
        Ok(())
    }
}

/// The background thread that sends the remaining announcement rounds. Dropping it
/// cancels the rounds not yet sent and joins the thread (promptly: it waits on a
/// channel, not in a sleep).
#[derive(Debug)]
pub(crate) struct Repeater {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Repeater {
    /// Sends `rounds` more rounds from a new thread, the first one `interval` from now.
    pub(crate) fn spawn(announcer: Announcer, rounds: u32, interval: Duration) -> io::Result<Self> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new().name("vip-announce".into()).spawn(move || {
            for _ in 0..rounds {
                match stopped.recv_timeout(interval) {
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
                if let Err(e) = announcer.announce() {
                    let (interface, addr) = announcer.describe();
                    tracing::warn!(interface, %addr, error = %e, "repeated announcement failed");
                }
            }
        })?;
        Ok(Repeater {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Repeater {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sends RFC 5227 ARP probes for `addr` on `ifname` and waits up to `timeout` for an
/// ARP packet from another hardware address whose sender address is `addr` (a reply
/// to the probe, or the holder's own announcement). Returns that hardware address.
/// A second probe goes out halfway through the wait, in case the first was lost.
pub(crate) fn probe(
    ifname: &str,
    link: &Link,
    addr: Ipv4Addr,
    timeout: Duration,
) -> Result<Option<MacAddr>, VipError> {
    require_ethernet(ifname, link, "ARP probing")?;
    let ctx = |what: &str| format!("{what} for the ARP probe of {addr} on {ifname}");
    let fd = sys::socket(
        libc::AF_PACKET,
        libc::SOCK_RAW,
        libc::c_int::from(ETH_P_ARP.to_be()),
    )
    .map_err(io_err(ctx("opening a packet socket")))?;
    sys::bind(&fd, &sys::sockaddr_ll(link.index, ETH_P_ARP, MacAddr::ZERO))
        .map_err(io_err(ctx("binding the packet socket")))?;
    let frame = frames::arp_probe(link.mac, addr);
    let dest = sys::sockaddr_ll(link.index, ETH_P_ARP, MacAddr::BROADCAST);
    let send = || sys::send_to(&fd, &frame, &dest).map_err(io_err(ctx("sending")));

    let start = Instant::now();
    let deadline = start + timeout;
    let mut second = (timeout >= Duration::from_millis(20)).then(|| start + timeout / 2);
    send()?;
    let mut buf = [0u8; 128];
    let link_index = libc::c_int::try_from(link.index).unwrap_or(0);
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        let until = second.map_or(deadline, |s| s.min(deadline));
        if sys::poll_readable(&fd, until.saturating_duration_since(now))
            .map_err(io_err(ctx("waiting")))?
        {
            while let Some((n, from)) =
                sys::recv_from_packet(&fd, &mut buf).map_err(io_err(ctx("receiving")))?
            {
                if from.sll_pkttype == sys::PACKET_OUTGOING || from.sll_ifindex != link_index {
                    continue;
                }
                let Some(p) = frames::parse_arp_frame(&buf[..n]) else {
                    continue;
                };
                if p.spa == addr && p.sha != link.mac && p.eth_src != link.mac {
                    return Ok(Some(p.sha));
                }
            }
        }
        if second.is_some_and(|s| Instant::now() >= s) {
            second = None;
            send()?;
        }
    }
}
