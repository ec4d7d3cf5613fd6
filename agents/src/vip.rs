//! Portal IP ("virtual IP") agent: puts a portal address on a local interface, tells
//! the neighbours where it now lives, and takes it away again. Linux only, blocking.
//!
//! Owns:
//! - adding, removing and looking up interface addresses over NETLINK_ROUTE
//!   ([`add_address`], [`remove_address`], [`has_address`], [`address_prefix_len`]),
//!   the messages built by hand in [`netlink`];
//! - announcing an address: gratuitous ARP ([`send_gratuitous_arp`]) and unsolicited
//!   ICMPv6 neighbour advertisements ([`send_unsolicited_na`]), frames in [`frames`];
//! - asking the link whether an IPv4 address is already answered ([`address_in_use`],
//!   an RFC 5227 ARP probe);
//! - tickle ACKs that make clients of the old holder reset at once after a takeover
//!   ([`send_tickle_ack`]);
//! - [`Vip`]: one configured portal address with `start` (probe, add, announce — the
//!   first announcement before `start` returns, the rest from a background thread),
//!   `stop` and `monitor`.
//!
//! May not touch: routes, rules, links (it never sets an interface up or down), neighbour
//! tables, firewall state, addresses other than the one it is asked about, and any
//! decision of *when* an address moves — that is the HA manager's. All sockets are
//! opened in the calling thread's network namespace.

mod announce;
pub mod frames;
pub mod netlink;
mod sys;
mod tickle;

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

pub use frames::MacAddr;
pub use tickle::send_tickle_ack;

use announce::{Announcer, Repeater};
use netlink::{KernelError, NlFailure, NlSocket};

/// Longest wait or interval any call here honours; larger values are clamped to it so
/// that no input can overflow a deadline.
pub const MAX_WAIT_MS: u64 = 60_000;
/// Longest interface name Linux accepts (IFNAMSIZ - 1).
const MAX_IFNAME_LEN: usize = 15;

/// Errors of the portal-IP agent. Every message names what it was about.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VipError {
    /// The interface name cannot be a Linux interface name.
    #[error("invalid interface name {name:?}: {reason}")]
    InvalidInterfaceName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// No interface of that name in this network namespace.
    #[error("interface {interface:?} does not exist")]
    NoSuchInterface {
        /// The interface name.
        interface: String,
    },
    /// A textual `ADDRESS/PREFIX` could not be parsed.
    #[error("invalid portal address {input:?}: {reason}")]
    InvalidCidr {
        /// The text as given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The address or prefix length cannot be a portal address.
    #[error("invalid portal address {addr}/{prefix_len}: {reason}")]
    InvalidAddress {
        /// The address.
        addr: IpAddr,
        /// The prefix length.
        prefix_len: u8,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The operation needs an Ethernet-like interface.
    #[error("{what} needs an Ethernet interface, but {interface} has hardware type {hw_type}")]
    NotEthernet {
        /// The interface name.
        interface: String,
        /// Its `ARPHRD_*` hardware type.
        hw_type: u16,
        /// What needed Ethernet.
        what: &'static str,
    },
    /// Another host answered for the address.
    #[error("{addr} is already in use on the link of {interface}: answered by {mac}")]
    InUse {
        /// The interface name.
        interface: String,
        /// The address.
        addr: Ipv4Addr,
        /// The hardware address that answered.
        mac: MacAddr,
    },
    /// The address is on the interface, but with another prefix length.
    #[error("{addr} is on {interface} as /{present}, not /{requested}")]
    PrefixMismatch {
        /// The interface name.
        interface: String,
        /// The address.
        addr: IpAddr,
        /// The prefix length configured on the interface.
        present: u8,
        /// The prefix length asked for.
        requested: u8,
    },
    /// A tickle ACK was asked for between different address families.
    #[error("tickle ACK between different address families: local {local}, client {client}")]
    FamilyMismatch {
        /// The local (portal) side.
        local: SocketAddr,
        /// The client side.
        client: SocketAddr,
    },
    /// The kernel refused a netlink request.
    #[error(
        "netlink {request} for {addr} on {interface} failed: {}{}",
        errno_text(.errno),
        kernel_suffix(.kernel_message)
    )]
    Netlink {
        /// The request (`RTM_NEWADDR`, `RTM_DELADDR`, `RTM_GETADDR`).
        request: &'static str,
        /// The interface name.
        interface: String,
        /// The address.
        addr: IpAddr,
        /// The positive errno the kernel returned.
        errno: i32,
        /// The kernel's extended-ACK text, if any.
        kernel_message: Option<String>,
    },
    /// The kernel's netlink answer made no sense.
    #[error("netlink {request} for {addr} on {interface}: {detail}")]
    NetlinkProtocol {
        /// The request.
        request: &'static str,
        /// The interface name.
        interface: String,
        /// The address.
        addr: IpAddr,
        /// What was wrong.
        detail: String,
    },
    /// A system call failed.
    #[error("{context}: {error}")]
    Io {
        /// What was being done, naming the interface and address.
        context: String,
        /// The underlying error.
        error: io::Error,
    },
}

fn errno_text(errno: &i32) -> String {
    io::Error::from_raw_os_error(*errno).to_string()
}

fn kernel_suffix(message: &Option<String>) -> String {
    message
        .as_ref()
        .map(|m| format!(" ({m})"))
        .unwrap_or_default()
}

impl VipError {
    /// The OS error number behind this error, if there is one (e.g. `EEXIST` when
    /// [`add_address`] finds the address already present).
    pub fn errno(&self) -> Option<i32> {
        match self {
            VipError::Netlink { errno, .. } => Some(*errno),
            VipError::Io { error, .. } => error.raw_os_error(),
            _ => None,
        }
    }
}

fn clamp_ms(ms: u64) -> Duration {
    Duration::from_millis(ms.min(MAX_WAIT_MS))
}

/// Checks that `name` can be a Linux interface name.
pub fn validate_interface_name(name: &str) -> Result<(), VipError> {
    let bad = |reason| {
        Err(VipError::InvalidInterfaceName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > MAX_IFNAME_LEN {
        return bad("longer than 15 bytes");
    }
    if name == "." || name == ".." {
        return bad("reserved name");
    }
    if name
        .bytes()
        .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return bad("contains '/', ':', whitespace or a control character");
    }
    Ok(())
}

fn check_prefix_range(addr: IpAddr, prefix_len: u8) -> Result<(), VipError> {
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if prefix_len > max {
        return Err(VipError::InvalidAddress {
            addr,
            prefix_len,
            reason: if addr.is_ipv4() {
                "prefix length exceeds 32"
            } else {
                "prefix length exceeds 128"
            },
        });
    }
    Ok(())
}

/// Checks that `addr/prefix_len` can be a portal address: prefix length in range, not
/// unspecified, multicast, limited broadcast or (IPv4 up to /30) the subnet broadcast.
pub fn validate_address(addr: IpAddr, prefix_len: u8) -> Result<(), VipError> {
    check_prefix_range(addr, prefix_len)?;
    let bad = |reason| {
        Err(VipError::InvalidAddress {
            addr,
            prefix_len,
            reason,
        })
    };
    if addr.is_unspecified() {
        return bad("the unspecified address");
    }
    if addr.is_multicast() {
        return bad("a multicast address");
    }
    if let IpAddr::V4(a) = addr {
        if a.is_broadcast() {
            return bad("the limited broadcast address");
        }
        if netlink::ipv4_broadcast(a, prefix_len) == Some(a) {
            return bad("the broadcast address of its subnet");
        }
    }
    Ok(())
}

fn index_of(ifname: &str) -> Result<u32, VipError> {
    sys::if_index(ifname).map_err(|error| match error.raw_os_error() {
        Some(libc::ENODEV | libc::ENXIO) => VipError::NoSuchInterface {
            interface: ifname.to_owned(),
        },
        _ => VipError::Io {
            context: format!("looking up interface {ifname}"),
            error,
        },
    })
}

fn open_netlink(request: &'static str, ifname: &str, addr: IpAddr) -> Result<NlSocket, VipError> {
    NlSocket::open().map_err(|error| VipError::Io {
        context: format!("opening a netlink socket for {request} of {addr} on {ifname}"),
        error,
    })
}

fn netlink_error(
    request: &'static str,
    ifname: &str,
    addr: IpAddr,
    failure: NlFailure,
) -> VipError {
    let interface = ifname.to_owned();
    match failure {
        NlFailure::Io(error) => VipError::Io {
            context: format!("netlink {request} for {addr} on {ifname}"),
            error,
        },
        NlFailure::Kernel(KernelError { errno, message }) => VipError::Netlink {
            request,
            interface,
            addr,
            errno,
            kernel_message: message,
        },
        NlFailure::Malformed(m) => VipError::NetlinkProtocol {
            request,
            interface,
            addr,
            detail: m.to_string(),
        },
        NlFailure::DumpInterrupted => VipError::NetlinkProtocol {
            request,
            interface,
            addr,
            detail: "address dump kept being interrupted by concurrent changes".into(),
        },
    }
}

/// Adds `addr/prefix_len` to `ifname` (`RTM_NEWADDR`, create-exclusive). IPv4 gets a
/// broadcast address (prefix ≤ 30); IPv6 skips duplicate address detection so the
/// address is usable at once. An address already present is an error with errno
/// `EEXIST` (see [`VipError::errno`]).
pub fn add_address(ifname: &str, addr: IpAddr, prefix_len: u8) -> Result<(), VipError> {
    validate_interface_name(ifname)?;
    validate_address(addr, prefix_len)?;
    let index = index_of(ifname)?;
    let sock = open_netlink("RTM_NEWADDR", ifname, addr)?;
    let seq = netlink::next_seq();
    sock.request(
        &netlink::new_address_request(seq, index, addr, prefix_len),
        seq,
    )
    .map_err(|f| netlink_error("RTM_NEWADDR", ifname, addr, f))?;
    tracing::debug!(interface = ifname, %addr, prefix_len, "address added");
    Ok(())
}

/// Removes `addr/prefix_len` from `ifname` (`RTM_DELADDR`). Idempotent: an address
/// that is not there, or an interface that no longer exists, is `Ok`. The address
/// present with another prefix length is [`VipError::PrefixMismatch`] (it is left
/// alone: it is not the one this agent added).
pub fn remove_address(ifname: &str, addr: IpAddr, prefix_len: u8) -> Result<(), VipError> {
    validate_interface_name(ifname)?;
    check_prefix_range(addr, prefix_len)?;
    let index = match index_of(ifname) {
        Ok(i) => i,
        Err(VipError::NoSuchInterface { .. }) => {
            tracing::debug!(interface = ifname, %addr, "interface gone, so is the address");
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let sock = open_netlink("RTM_DELADDR", ifname, addr)?;
    let seq = netlink::next_seq();
    match sock.request(
        &netlink::del_address_request(seq, index, addr, prefix_len),
        seq,
    ) {
        Ok(()) => {
            tracing::debug!(interface = ifname, %addr, prefix_len, "address removed");
            Ok(())
        }
        Err(NlFailure::Kernel(KernelError {
            errno: libc::ENODEV,
            ..
        })) => Ok(()),
        Err(NlFailure::Kernel(KernelError {
            errno: libc::EADDRNOTAVAIL,
            ..
        })) => match find_prefix_len(&sock, ifname, index, addr)? {
            None => Ok(()),
            Some(present) => Err(VipError::PrefixMismatch {
                interface: ifname.to_owned(),
                addr,
                present,
                requested: prefix_len,
            }),
        },
        Err(f) => Err(netlink_error("RTM_DELADDR", ifname, addr, f)),
    }
}

fn find_prefix_len(
    sock: &NlSocket,
    ifname: &str,
    index: u32,
    addr: IpAddr,
) -> Result<Option<u8>, VipError> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let seq = netlink::next_seq();
        let mut found = None;
        let result = sock.dump_addresses(
            &netlink::dump_addresses_request(seq, addr),
            seq,
            |payload| {
                let entry = netlink::parse_address(payload)?;
                if entry.index == index && entry.address == Some(addr) {
                    found = Some(entry.prefix_len);
                }
                Ok(())
            },
        );
        match result {
            Ok(()) => return Ok(found),
            Err(NlFailure::DumpInterrupted) if attempts < 3 => continue,
            Err(f) => return Err(netlink_error("RTM_GETADDR", ifname, addr, f)),
        }
    }
}

/// The prefix length `addr` has on `ifname`, or `None` if it is not there.
pub fn address_prefix_len(ifname: &str, addr: IpAddr) -> Result<Option<u8>, VipError> {
    validate_interface_name(ifname)?;
    let index = index_of(ifname)?;
    let sock = open_netlink("RTM_GETADDR", ifname, addr)?;
    find_prefix_len(&sock, ifname, index, addr)
}

/// Whether `addr` is configured on `ifname` (any prefix length), from an
/// `RTM_GETADDR` dump.
pub fn has_address(ifname: &str, addr: IpAddr) -> Result<bool, VipError> {
    Ok(address_prefix_len(ifname, addr)?.is_some())
}

/// Sends `count` rounds of gratuitous ARP for `addr` from `ifname`'s hardware address,
/// `interval_ms` apart (clamped to [`MAX_WAIT_MS`]), in the calling thread. A round is
/// a broadcast ARP request and a broadcast ARP reply, both with sender = target =
/// `addr`. Needs an Ethernet-like interface.
pub fn send_gratuitous_arp(
    ifname: &str,
    addr: Ipv4Addr,
    count: u32,
    interval_ms: u64,
) -> Result<(), VipError> {
    validate_interface_name(ifname)?;
    let link = announce::link_of(ifname)?;
    Announcer::arp(ifname, &link, addr)?.run(count, clamp_ms(interval_ms))
}

/// Sends `count` unsolicited neighbour advertisements for `addr` (override flag, target
/// link-layer address option) to ff02::1 on `ifname`, `interval_ms` apart (clamped to
/// [`MAX_WAIT_MS`]), in the calling thread. Needs an Ethernet-like interface.
pub fn send_unsolicited_na(
    ifname: &str,
    addr: Ipv6Addr,
    count: u32,
    interval_ms: u64,
) -> Result<(), VipError> {
    validate_interface_name(ifname)?;
    let link = announce::link_of(ifname)?;
    Announcer::na(ifname, &link, addr)?.run(count, clamp_ms(interval_ms))
}

/// Whether another host answers for `addr` on `ifname`'s link: sends an RFC 5227 ARP
/// probe (sender address 0.0.0.0; a second one halfway through the wait) and returns
/// true if an ARP packet with sender address `addr` arrives from another hardware
/// address within `timeout_ms` (clamped to [`MAX_WAIT_MS`]). This host does not
/// answer its own probe, so an address configured here reads as not in use. Needs an
/// Ethernet-like interface.
pub fn address_in_use(ifname: &str, addr: Ipv4Addr, timeout_ms: u64) -> Result<bool, VipError> {
    validate_interface_name(ifname)?;
    let link = announce::link_of(ifname)?;
    Ok(announce::probe(ifname, &link, addr, clamp_ms(timeout_ms))?.is_some())
}

/// Configuration of one portal address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VipConfig {
    /// Interface the address goes on.
    pub interface: String,
    /// The portal address.
    pub address: IpAddr,
    /// Its prefix length.
    pub prefix_len: u8,
    /// Announcement rounds on start (gratuitous ARP, or NA for IPv6); 0 sends none.
    pub arp_count: u32,
    /// Time between announcement rounds.
    pub arp_interval_ms: u64,
    /// How long `start` waits for an answer to its ARP probe (IPv4); 0 skips the probe.
    pub probe_timeout_ms: u64,
}

impl VipConfig {
    /// Default [`VipConfig::arp_count`].
    pub const DEFAULT_ARP_COUNT: u32 = 3;
    /// Default [`VipConfig::arp_interval_ms`].
    pub const DEFAULT_ARP_INTERVAL_MS: u64 = 100;
    /// Default [`VipConfig::probe_timeout_ms`].
    pub const DEFAULT_PROBE_TIMEOUT_MS: u64 = 100;

    /// A validated configuration with default announcement and probe settings.
    pub fn new(
        interface: impl Into<String>,
        address: IpAddr,
        prefix_len: u8,
    ) -> Result<Self, VipError> {
        let config = VipConfig {
            interface: interface.into(),
            address,
            prefix_len,
            arp_count: Self::DEFAULT_ARP_COUNT,
            arp_interval_ms: Self::DEFAULT_ARP_INTERVAL_MS,
            probe_timeout_ms: Self::DEFAULT_PROBE_TIMEOUT_MS,
        };
        config.validate()?;
        Ok(config)
    }

    /// [`VipConfig::new`] from `ADDRESS/PREFIX` text (see [`Vip::parse_cidr`]).
    pub fn from_cidr(interface: impl Into<String>, cidr: &str) -> Result<Self, VipError> {
        let (address, prefix_len) = Vip::parse_cidr(cidr)?;
        Self::new(interface, address, prefix_len)
    }

    /// Checks the interface name and the address.
    pub fn validate(&self) -> Result<(), VipError> {
        validate_interface_name(&self.interface)?;
        validate_address(self.address, self.prefix_len)
    }
}

/// One portal address on this node: [`start`](Vip::start) puts it up and announces it,
/// [`stop`](Vip::stop) takes it down, [`monitor`](Vip::monitor) reports whether it is
/// there. Dropping a `Vip` cancels pending announcements but leaves the address alone.
#[derive(Debug)]
pub struct Vip {
    config: VipConfig,
    repeater: Option<Repeater>,
}

impl Vip {
    /// A portal address agent for a validated `config`.
    pub fn new(config: VipConfig) -> Result<Self, VipError> {
        config.validate()?;
        Ok(Vip {
            config,
            repeater: None,
        })
    }

    /// Its configuration.
    pub fn config(&self) -> &VipConfig {
        &self.config
    }

    /// Parses `ADDRESS/PREFIX` ("10.1.2.3/24", "fd00::10/64") into a validated portal
    /// address and prefix length.
    pub fn parse_cidr(text: &str) -> Result<(IpAddr, u8), VipError> {
        let bad = |reason: String| VipError::InvalidCidr {
            input: text.to_owned(),
            reason,
        };
        if text.trim() != text || text.is_empty() {
            return Err(bad(
                "expected ADDRESS/PREFIX without surrounding whitespace, e.g. 10.1.2.3/24".into(),
            ));
        }
        let Some((addr_text, prefix_text)) = text.split_once('/') else {
            return Err(bad(
                "missing /PREFIX (expected ADDRESS/PREFIX, e.g. 10.1.2.3/24)".into(),
            ));
        };
        let addr: IpAddr = addr_text
            .parse()
            .map_err(|_| bad(format!("{addr_text:?} is not an IPv4 or IPv6 address")))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix_len = (!prefix_text.is_empty()
            && prefix_text.len() <= 3
            && prefix_text.bytes().all(|b| b.is_ascii_digit()))
        .then(|| prefix_text.parse::<u8>().ok())
        .flatten()
        .filter(|p| *p <= max)
        .ok_or_else(|| {
            bad(format!(
                "prefix length {prefix_text:?} is not a number from 0 to {max}"
            ))
        })?;
        validate_address(addr, prefix_len).map_err(|e| match e {
            VipError::InvalidAddress { reason, .. } => {
                bad(format!("{addr}/{prefix_len} is {reason}"))
            }
            other => other,
        })?;
        Ok((addr, prefix_len))
    }

    /// Brings the address up: if it is not already on the interface, probes the link
    /// (IPv4, unless `probe_timeout_ms` is 0 or the link does not speak ARP) and refuses
    /// with [`VipError::InUse`] if another host answers, then adds it. Then sends the
    /// first announcement round before returning and the remaining `arp_count - 1`
    /// rounds from a background thread. If the first round cannot be sent, an address
    /// this call added is removed again and the error returned. Links that are not
    /// Ethernet-like get no announcements. Starting an address that is already up
    /// re-announces it.
    pub fn start(&mut self) -> Result<(), VipError> {
        self.repeater = None; // cancels rounds of an earlier start
        let c = &self.config;
        let ifname = c.interface.as_str();
        let link = announce::link_of(ifname)?;
        let added = match address_prefix_len(ifname, c.address)? {
            Some(p) if p == c.prefix_len => {
                tracing::info!(interface = ifname, addr = %c.address, "portal address already present");
                false
            }
            Some(present) => {
                return Err(VipError::PrefixMismatch {
                    interface: ifname.to_owned(),
                    addr: c.address,
                    present,
                    requested: c.prefix_len,
                })
            }
            None => {
                if let IpAddr::V4(a) = c.address {
                    if c.probe_timeout_ms > 0 && announce::link_speaks_arp(&link) {
                        if let Some(mac) =
                            announce::probe(ifname, &link, a, clamp_ms(c.probe_timeout_ms))?
                        {
                            return Err(VipError::InUse {
                                interface: ifname.to_owned(),
                                addr: a,
                                mac,
                            });
                        }
                    }
                }
                match add_address(ifname, c.address, c.prefix_len) {
                    Ok(()) => true,
                    // Appeared since we looked: someone on this host added it.
                    Err(e) if e.errno() == Some(libc::EEXIST) => false,
                    Err(e) => return Err(e),
                }
            }
        };
        let announcer = match c.address {
            _ if c.arp_count == 0 || link.hw_type != sys::ARPHRD_ETHER => None,
            IpAddr::V4(_) if !announce::link_speaks_arp(&link) => None,
            IpAddr::V4(a) => Some(Announcer::arp(ifname, &link, a)),
            IpAddr::V6(a) => Some(Announcer::na(ifname, &link, a)),
        };
        let Some(announcer) = announcer else {
            tracing::info!(
                interface = ifname,
                addr = %c.address,
                prefix_len = c.prefix_len,
                "portal address up (no announcements)"
            );
            return Ok(());
        };
        let announcer = match announcer.and_then(|a| a.announce().map(|()| a)) {
            Ok(a) => a,
            Err(e) => {
                if added {
                    if let Err(undo) = remove_address(ifname, c.address, c.prefix_len) {
                        tracing::error!(
                            interface = ifname,
                            addr = %c.address,
                            error = %undo,
                            "cannot remove the portal address after a failed announcement"
                        );
                    }
                }
                return Err(e);
            }
        };
        if c.arp_count > 1 {
            let interval = clamp_ms(c.arp_interval_ms);
            match Repeater::spawn(announcer, c.arp_count - 1, interval) {
                Ok(r) => self.repeater = Some(r),
                Err(e) => tracing::warn!(
                    interface = ifname,
                    addr = %c.address,
                    error = %e,
                    "cannot start the announcement thread; only the first round was sent"
                ),
            }
        }
        tracing::info!(
            interface = ifname,
            addr = %c.address,
            prefix_len = c.prefix_len,
            "portal address up"
        );
        Ok(())
    }

    /// Takes the address down: cancels pending announcements and removes it.
    /// Idempotent (see [`remove_address`]).
    pub fn stop(&mut self) -> Result<(), VipError> {
        self.repeater = None;
        let c = &self.config;
        remove_address(&c.interface, c.address, c.prefix_len)?;
        tracing::info!(interface = %c.interface, addr = %c.address, "portal address down");
        Ok(())
    }

    /// Whether the address is on the interface (any prefix length).
    pub fn monitor(&self) -> Result<bool, VipError> {
        has_address(&self.config.interface, self.config.address)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr_err(s: &str) -> String {
        match Vip::parse_cidr(s) {
            Err(e @ VipError::InvalidCidr { .. }) => e.to_string(),
            other => panic!("{s:?}: expected InvalidCidr, got {other:?}"),
        }
    }

    #[test]
    fn parse_cidr_accepts() {
        assert_eq!(
            Vip::parse_cidr("10.1.2.3/24").unwrap(),
            ("10.1.2.3".parse().unwrap(), 24)
        );
        assert_eq!(Vip::parse_cidr("10.1.2.3/32").unwrap().1, 32);
        assert_eq!(Vip::parse_cidr("10.1.2.3/0").unwrap().1, 0);
        assert_eq!(Vip::parse_cidr("10.1.2.3/31").unwrap().1, 31);
        assert_eq!(
            Vip::parse_cidr("fd00::10/64").unwrap(),
            ("fd00::10".parse().unwrap(), 64)
        );
        assert_eq!(Vip::parse_cidr("fd00::10/128").unwrap().1, 128);
        assert_eq!(Vip::parse_cidr("10.1.2.3/024").unwrap().1, 24);
    }

    #[test]
    fn parse_cidr_rejects_with_clear_errors() {
        assert!(cidr_err("10.1.2.3").contains("missing /PREFIX"));
        assert!(cidr_err("").contains("ADDRESS/PREFIX"));
        assert!(cidr_err(" 10.1.2.3/24").contains("whitespace"));
        assert!(cidr_err("10.1.2.3/24\n").contains("whitespace"));
        assert!(cidr_err("10.1.2/24").contains("not an IPv4 or IPv6 address"));
        assert!(cidr_err("host/24").contains("\"host\""));
        assert!(cidr_err("10.1.2.3/33").contains("from 0 to 32"));
        assert!(cidr_err("fd00::1/129").contains("from 0 to 128"));
        assert!(cidr_err("10.1.2.3/").contains("not a number"));
        assert!(cidr_err("10.1.2.3/+24").contains("not a number"));
        assert!(cidr_err("10.1.2.3/-1").contains("not a number"));
        assert!(cidr_err("10.1.2.3/2 4").contains("not a number"));
        assert!(cidr_err("10.1.2.3/24/8").contains("not a number"));
        assert!(cidr_err("10.1.2.3/99999999999999999999").contains("not a number"));
        assert!(cidr_err("0.0.0.0/24").contains("unspecified"));
        assert!(cidr_err("::/64").contains("unspecified"));
        assert!(cidr_err("224.0.0.5/24").contains("multicast"));
        assert!(cidr_err("ff02::1/64").contains("multicast"));
        assert!(cidr_err("255.255.255.255/32").contains("limited broadcast"));
        assert!(cidr_err("10.1.2.255/24").contains("broadcast address of its subnet"));
        assert_eq!(
            cidr_err("10.1.2.3/33"),
            "invalid portal address \"10.1.2.3/33\": prefix length \"33\" is not a number from 0 to 32"
        );
    }

    #[test]
    fn interface_names() {
        for ok in ["eth0", "veth-a.100", "br0", "a", "123456789012345"] {
            validate_interface_name(ok).unwrap();
        }
        for bad in [
            "",
            "1234567890123456",
            "eth0:1",
            "a/b",
            "a b",
            "tab\t",
            "nul\0",
            ".",
            "..",
        ] {
            let e = validate_interface_name(bad).unwrap_err();
            assert!(
                matches!(e, VipError::InvalidInterfaceName { .. }),
                "{bad:?}: {e}"
            );
        }
        // No panic and a clear error for non-ASCII too.
        assert!(validate_interface_name("ééééééééé").is_err());
    }

    #[test]
    fn config_defaults_and_validation() {
        let c = VipConfig::from_cidr("eth0", "10.1.2.3/24").unwrap();
        assert_eq!(c.arp_count, 3);
        assert_eq!(c.arp_interval_ms, 100);
        assert_eq!(c.probe_timeout_ms, 100);
        assert_eq!(c.address, "10.1.2.3".parse::<IpAddr>().unwrap());
        assert!(VipConfig::from_cidr("", "10.1.2.3/24").is_err());
        assert!(VipConfig::new("eth0", "10.1.2.3".parse().unwrap(), 40).is_err());
        let mut bad = c.clone();
        bad.prefix_len = 33;
        assert!(Vip::new(bad).is_err());
        assert!(Vip::new(c).is_ok());
    }

    #[test]
    fn bad_input_to_the_syscall_functions_fails_cleanly() {
        let a: IpAddr = "10.1.2.3".parse().unwrap();
        assert!(matches!(
            add_address("", a, 24),
            Err(VipError::InvalidInterfaceName { .. })
        ));
        assert!(matches!(
            add_address("eth0", a, 33),
            Err(VipError::InvalidAddress { .. })
        ));
        assert!(matches!(
            remove_address("eth0", a, 200),
            Err(VipError::InvalidAddress { .. })
        ));
        assert!(matches!(
            has_address("x/y", a),
            Err(VipError::InvalidInterfaceName { .. })
        ));
        assert!(matches!(
            send_tickle_ack(
                "10.0.0.1:3260".parse().unwrap(),
                "[fd00::1]:5000".parse().unwrap(),
                1
            ),
            Err(VipError::FamilyMismatch { .. })
        ));
        // A name no interface has: NoSuchInterface (or, without privileges, an I/O error).
        let missing = "twinsan-nx0";
        assert!(matches!(
            has_address(missing, a),
            Err(VipError::NoSuchInterface { .. })
        ));
        assert!(matches!(
            add_address(missing, a, 24),
            Err(VipError::NoSuchInterface { .. })
        ));
        assert!(remove_address(missing, a, 24).is_ok());
        assert!(matches!(
            address_in_use(missing, Ipv4Addr::new(10, 1, 2, 3), u64::MAX),
            Err(VipError::NoSuchInterface { .. })
        ));
    }

    #[test]
    fn error_messages_name_interface_address_and_errno() {
        let e = VipError::Netlink {
            request: "RTM_NEWADDR",
            interface: "eth0".into(),
            addr: "10.1.2.3".parse().unwrap(),
            errno: libc::EEXIST,
            kernel_message: None,
        };
        let s = e.to_string();
        assert!(
            s.starts_with("netlink RTM_NEWADDR for 10.1.2.3 on eth0 failed: File exists"),
            "{s}"
        );
        assert_eq!(e.errno(), Some(libc::EEXIST));
        let e = VipError::Netlink {
            request: "RTM_DELADDR",
            interface: "eth1".into(),
            addr: "fd00::1".parse().unwrap(),
            errno: libc::EINVAL,
            kernel_message: Some("prefix length is invalid".into()),
        };
        let s = e.to_string();
        assert!(
            s.contains("fd00::1 on eth1") && s.ends_with("(prefix length is invalid)"),
            "{s}"
        );
        let e = VipError::InUse {
            interface: "eth0".into(),
            addr: Ipv4Addr::new(10, 1, 2, 3),
            mac: MacAddr([2, 0, 0, 0, 0, 9]),
        };
        assert_eq!(
            e.to_string(),
            "10.1.2.3 is already in use on the link of eth0: answered by 02:00:00:00:00:09"
        );
    }
}
