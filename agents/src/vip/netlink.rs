//! rtnetlink address messages, built and parsed by hand (pure functions, public for
//! tests and tools), and the small blocking NETLINK_ROUTE socket that sends them.
//!
//! Netlink headers, `ifaddrmsg.ifa_index` and attribute headers are in the host's
//! native byte order, as the kernel requires; address payloads are in network order.

use std::io;
use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::sys;

/// Length of `struct nlmsghdr`.
pub const NLMSG_HDRLEN: usize = 16;
/// Length of `struct ifaddrmsg`.
pub const IFADDRMSG_LEN: usize = 8;
/// `NLMSG_NOOP`.
pub const NLMSG_NOOP: u16 = 1;
/// `NLMSG_ERROR` (also the ACK).
pub const NLMSG_ERROR: u16 = 2;
/// `NLMSG_DONE`: end of a dump.
pub const NLMSG_DONE: u16 = 3;
/// `RTM_NEWADDR`.
pub const RTM_NEWADDR: u16 = 20;
/// `RTM_DELADDR`.
pub const RTM_DELADDR: u16 = 21;
/// `RTM_GETADDR`.
pub const RTM_GETADDR: u16 = 22;
/// `NLM_F_REQUEST`.
pub const NLM_F_REQUEST: u16 = 0x1;
/// `NLM_F_MULTI`.
pub const NLM_F_MULTI: u16 = 0x2;
/// `NLM_F_ACK`.
pub const NLM_F_ACK: u16 = 0x4;
/// `NLM_F_DUMP_INTR`: the dump changed while it was taken; results may be inconsistent.
pub const NLM_F_DUMP_INTR: u16 = 0x10;
/// `NLM_F_DUMP` (`NLM_F_ROOT | NLM_F_MATCH`).
pub const NLM_F_DUMP: u16 = 0x300;
/// `NLM_F_EXCL`: fail with `EEXIST` if the object exists.
pub const NLM_F_EXCL: u16 = 0x200;
/// `NLM_F_CREATE`.
pub const NLM_F_CREATE: u16 = 0x400;
/// `NLM_F_CAPPED` on an error message: the original request's payload was left out.
pub const NLM_F_CAPPED: u16 = 0x100;
/// `NLM_F_ACK_TLVS` on an error message: extended-ACK attributes follow.
pub const NLM_F_ACK_TLVS: u16 = 0x200;
/// `IFA_ADDRESS`.
pub const IFA_ADDRESS: u16 = 1;
/// `IFA_LOCAL`.
pub const IFA_LOCAL: u16 = 2;
/// `IFA_BROADCAST`.
pub const IFA_BROADCAST: u16 = 4;
/// `IFA_FLAGS` (u32 flags, supersedes `ifa_flags`).
pub const IFA_FLAGS: u16 = 8;
/// `IFA_F_NODAD`: no duplicate address detection, the address is usable at once.
pub const IFA_F_NODAD: u32 = 0x02;
/// `NLMSGERR_ATTR_MSG`: the extended-ACK error string.
pub const NLMSGERR_ATTR_MSG: u16 = 1;
const NLA_TYPE_MASK: u16 = 0x3fff;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const NETLINK_ROUTE: libc::c_int = 0;
const NETLINK_CAP_ACK: libc::c_int = 10;
const NETLINK_EXT_ACK: libc::c_int = 11;
/// How long one netlink request may wait for the kernel's answer.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
const RECV_BUF_LEN: usize = 64 * 1024;

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn family_of(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => AF_INET,
        IpAddr::V6(_) => AF_INET6,
    }
}

fn addr_bytes(addr: &IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// Appends netlink message pieces and fixes up `nlmsg_len` at the end.
struct MsgBuilder {
    buf: Vec<u8>,
}

impl MsgBuilder {
    fn new(ty: u16, flags: u16, seq: u32) -> Self {
        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_len, fixed in finish()
        buf.extend_from_slice(&ty.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: to the kernel
        MsgBuilder { buf }
    }

    fn ifaddrmsg(mut self, family: u8, prefix_len: u8, flags: u8, scope: u8, index: u32) -> Self {
        self.buf
            .extend_from_slice(&[family, prefix_len, flags, scope]);
        self.buf.extend_from_slice(&index.to_ne_bytes());
        self
    }

    fn attr(mut self, ty: u16, payload: &[u8]) -> Self {
        let len = u16::try_from(4 + payload.len()).unwrap_or(u16::MAX);
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.buf.resize(align4(self.buf.len()), 0);
        self
    }

    fn finish(mut self) -> Vec<u8> {
        let len = u32::try_from(self.buf.len()).unwrap_or(u32::MAX);
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

/// IPv4 broadcast address of `addr/prefix_len`, or `None` for /31 and /32 (no
/// broadcast, RFC 3021) or an out-of-range prefix.
pub fn ipv4_broadcast(addr: std::net::Ipv4Addr, prefix_len: u8) -> Option<std::net::Ipv4Addr> {
    if prefix_len > 30 {
        return None;
    }
    let host_mask = u32::MAX >> prefix_len;
    Some((u32::from(addr) | host_mask).into())
}

/// `RTM_NEWADDR` with `NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK` adding `addr/prefix_len`
/// to interface `index`. IPv4 carries `IFA_LOCAL`, `IFA_ADDRESS` and (prefix ≤ 30)
/// `IFA_BROADCAST`; IPv6 carries `IFA_ADDRESS` and `IFA_F_NODAD` (in `ifa_flags` and
/// `IFA_FLAGS`) so the address skips duplicate address detection and is usable at once.
pub fn new_address_request(seq: u32, index: u32, addr: IpAddr, prefix_len: u8) -> Vec<u8> {
    let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_EXCL | NLM_F_CREATE;
    let b = MsgBuilder::new(RTM_NEWADDR, flags, seq);
    match addr {
        IpAddr::V4(a) => {
            let mut b = b
                .ifaddrmsg(AF_INET, prefix_len, 0, 0, index)
                .attr(IFA_LOCAL, &a.octets())
                .attr(IFA_ADDRESS, &a.octets());
            if let Some(brd) = ipv4_broadcast(a, prefix_len) {
                b = b.attr(IFA_BROADCAST, &brd.octets());
            }
            b.finish()
        }
        IpAddr::V6(a) => b
            .ifaddrmsg(AF_INET6, prefix_len, IFA_F_NODAD as u8, 0, index)
            .attr(IFA_ADDRESS, &a.octets())
            .attr(IFA_FLAGS, &IFA_F_NODAD.to_ne_bytes())
            .finish(),
    }
}

/// `RTM_DELADDR` with `NLM_F_ACK` removing `addr/prefix_len` from interface `index`
/// (IPv4: `IFA_LOCAL` + `IFA_ADDRESS`; IPv6: `IFA_ADDRESS`). The kernel matches the
/// prefix length too and answers `EADDRNOTAVAIL` when nothing matches.
pub fn del_address_request(seq: u32, index: u32, addr: IpAddr, prefix_len: u8) -> Vec<u8> {
    let b = MsgBuilder::new(RTM_DELADDR, NLM_F_REQUEST | NLM_F_ACK, seq).ifaddrmsg(
        family_of(addr),
        prefix_len,
        0,
        0,
        index,
    );
    let bytes = addr_bytes(&addr);
    match addr {
        IpAddr::V4(_) => b.attr(IFA_LOCAL, &bytes).attr(IFA_ADDRESS, &bytes).finish(),
        IpAddr::V6(_) => b.attr(IFA_ADDRESS, &bytes).finish(),
    }
}

/// `RTM_GETADDR` dump request for all addresses of `addr`'s family.
pub fn dump_addresses_request(seq: u32, family_like: IpAddr) -> Vec<u8> {
    MsgBuilder::new(RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, seq)
        .ifaddrmsg(family_of(family_like), 0, 0, 0, 0)
        .finish()
}

/// A netlink message could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed netlink message: {0}")]
pub struct MalformedNetlink(pub &'static str);

/// One netlink message header and its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NlMsg<'a> {
    /// `nlmsg_type`.
    pub ty: u16,
    /// `nlmsg_flags`.
    pub flags: u16,
    /// `nlmsg_seq`.
    pub seq: u32,
    /// `nlmsg_pid`.
    pub pid: u32,
    /// The bytes after the header, `nlmsg_len - 16` of them.
    pub payload: &'a [u8],
}

fn ne_u16(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn ne_u32(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Splits a datagram from the kernel into its netlink messages.
pub fn parse_messages(mut buf: &[u8]) -> Result<Vec<NlMsg<'_>>, MalformedNetlink> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        if buf.len() < NLMSG_HDRLEN {
            return Err(MalformedNetlink("truncated header"));
        }
        let len = usize::try_from(ne_u32(buf, 0)).unwrap_or(usize::MAX);
        if len < NLMSG_HDRLEN || len > buf.len() {
            return Err(MalformedNetlink("bad nlmsg_len"));
        }
        out.push(NlMsg {
            ty: ne_u16(buf, 4),
            flags: ne_u16(buf, 6),
            seq: ne_u32(buf, 8),
            pid: ne_u32(buf, 12),
            payload: &buf[NLMSG_HDRLEN..len],
        });
        buf = &buf[align4(len).min(buf.len())..];
    }
    Ok(out)
}

/// Iterates route attributes (`struct rtattr`): (type without flag bits, payload).
pub fn parse_attrs(mut buf: &[u8]) -> Result<Vec<(u16, &[u8])>, MalformedNetlink> {
    let mut out = Vec::new();
    while buf.len() >= 4 {
        let len = usize::from(ne_u16(buf, 0));
        if len < 4 || len > buf.len() {
            return Err(MalformedNetlink("bad attribute length"));
        }
        out.push((ne_u16(buf, 2) & NLA_TYPE_MASK, &buf[4..len]));
        buf = &buf[align4(len).min(buf.len())..];
    }
    Ok(out)
}

/// A failure the kernel reported in an `NLMSG_ERROR` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelError {
    /// Positive errno.
    pub errno: i32,
    /// The extended-ACK message, if the kernel sent one.
    pub message: Option<String>,
}

/// Parses the payload of an `NLMSG_ERROR` message (`struct nlmsgerr` and any
/// extended-ACK attributes): `Ok(None)` for an ACK (error 0).
pub fn parse_error(flags: u16, payload: &[u8]) -> Result<Option<KernelError>, MalformedNetlink> {
    if payload.len() < 4 {
        return Err(MalformedNetlink("truncated nlmsgerr"));
    }
    let error = i32::from_ne_bytes([payload[0], payload[1], payload[2], payload[3]]);
    if error == 0 {
        return Ok(None);
    }
    let mut message = None;
    if flags & NLM_F_ACK_TLVS != 0 && payload.len() >= 4 + NLMSG_HDRLEN {
        let orig_len = usize::try_from(ne_u32(payload, 4)).unwrap_or(usize::MAX);
        let tlv_at = if flags & NLM_F_CAPPED != 0 {
            4 + NLMSG_HDRLEN
        } else {
            4usize.saturating_add(align4(orig_len.min(payload.len())))
        };
        if let Some(tlvs) = payload.get(tlv_at..) {
            for (ty, value) in parse_attrs(tlvs)? {
                if ty == NLMSGERR_ATTR_MSG {
                    let text = value.split(|&b| b == 0).next().unwrap_or_default();
                    let text = String::from_utf8_lossy(text).trim().to_owned();
                    if !text.is_empty() {
                        message = Some(text);
                    }
                }
            }
        }
    }
    Ok(Some(KernelError {
        errno: error.checked_neg().unwrap_or(i32::MAX),
        message,
    }))
}

/// One address from an `RTM_NEWADDR` message of a dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressEntry {
    /// Interface index.
    pub index: u32,
    /// Prefix length.
    pub prefix_len: u8,
    /// `IFA_F_*` flags (`IFA_FLAGS` if present, else `ifa_flags`).
    pub flags: u32,
    /// Scope.
    pub scope: u8,
    /// The local address: `IFA_LOCAL` if present, else `IFA_ADDRESS`.
    pub address: Option<IpAddr>,
}

fn ip_from(family: u8, b: &[u8]) -> Option<IpAddr> {
    match (family, b.len()) {
        (AF_INET, 4) => Some(IpAddr::from(<[u8; 4]>::try_from(b).ok()?)),
        (AF_INET6, 16) => Some(IpAddr::from(<[u8; 16]>::try_from(b).ok()?)),
        _ => None,
    }
}

/// Parses the payload of an `RTM_NEWADDR` message (`ifaddrmsg` + attributes).
pub fn parse_address(payload: &[u8]) -> Result<AddressEntry, MalformedNetlink> {
    if payload.len() < IFADDRMSG_LEN {
        return Err(MalformedNetlink("truncated ifaddrmsg"));
    }
    let family = payload[0];
    let mut entry = AddressEntry {
        index: ne_u32(payload, 4),
        prefix_len: payload[1],
        flags: u32::from(payload[2]),
        scope: payload[3],
        address: None,
    };
    let mut address = None;
    let mut local = None;
    for (ty, value) in parse_attrs(&payload[IFADDRMSG_LEN..])? {
        match ty {
            IFA_ADDRESS => address = ip_from(family, value),
            IFA_LOCAL => local = ip_from(family, value),
            IFA_FLAGS if value.len() == 4 => entry.flags = ne_u32(value, 0),
            _ => {}
        }
    }
    entry.address = local.or(address);
    Ok(entry)
}

/// Why a netlink exchange failed.
#[derive(Debug)]
pub(crate) enum NlFailure {
    /// A syscall failed (or the reply timed out).
    Io(io::Error),
    /// The kernel refused the request.
    Kernel(KernelError),
    /// The reply could not be parsed.
    Malformed(MalformedNetlink),
    /// A dump was interrupted by a concurrent change; retry.
    DumpInterrupted,
}

impl From<io::Error> for NlFailure {
    fn from(e: io::Error) -> Self {
        NlFailure::Io(e)
    }
}

impl From<MalformedNetlink> for NlFailure {
    fn from(e: MalformedNetlink) -> Self {
        NlFailure::Malformed(e)
    }
}

static NEXT_SEQ: AtomicU32 = AtomicU32::new(1);

/// A fresh sequence number for a request.
pub(crate) fn next_seq() -> u32 {
    NEXT_SEQ.fetch_add(1, Ordering::Relaxed)
}

/// A bound NETLINK_ROUTE socket in the calling thread's network namespace.
pub(crate) struct NlSocket {
    fd: OwnedFd,
}

impl NlSocket {
    pub(crate) fn open() -> io::Result<Self> {
        let fd = sys::socket(libc::AF_NETLINK, libc::SOCK_RAW, NETLINK_ROUTE)?;
        let local: libc::sockaddr_nl = {
            let mut sa: libc::sockaddr_nl = sys::zeroed_sockaddr();
            sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
            sa
        };
        sys::bind(&fd, &local)?;
        // Best effort: older kernels lack them; errors then carry only the errno.
        let _ = sys::set_int_opt(&fd, libc::SOL_NETLINK, NETLINK_EXT_ACK, 1);
        let _ = sys::set_int_opt(&fd, libc::SOL_NETLINK, NETLINK_CAP_ACK, 1);
        sys::set_recv_timeout(&fd, REPLY_TIMEOUT)?;
        Ok(NlSocket { fd })
    }

    fn send(&self, msg: &[u8]) -> io::Result<()> {
        let mut kernel: libc::sockaddr_nl = sys::zeroed_sockaddr();
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        sys::send_to(&self.fd, msg, &kernel)
    }

    fn recv<'b>(&self, buf: &'b mut [u8]) -> io::Result<&'b [u8]> {
        let n = match sys::recv(&self.fd, buf, libc::MSG_TRUNC) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no netlink reply within {} s", REPLY_TIMEOUT.as_secs()),
                ))
            }
            Err(e) => return Err(e),
        };
        if n > buf.len() {
            return Err(io::Error::other(format!(
                "netlink reply of {n} bytes truncated"
            )));
        }
        Ok(&buf[..n])
    }

    /// Sends a request with `NLM_F_ACK` and waits for its ACK or error.
    pub(crate) fn request(&self, msg: &[u8], seq: u32) -> Result<(), NlFailure> {
        self.send(msg)?;
        let mut buf = vec![0u8; RECV_BUF_LEN];
        loop {
            let data = self.recv(&mut buf)?;
            for m in parse_messages(data)? {
                if m.seq != seq || m.ty != NLMSG_ERROR {
                    continue;
                }
                return match parse_error(m.flags, m.payload)? {
                    None => Ok(()),
                    Some(e) => Err(NlFailure::Kernel(e)),
                };
            }
        }
    }

    /// Sends a dump request and hands the payload of every `RTM_NEWADDR` to `each`.
    pub(crate) fn dump_addresses(
        &self,
        msg: &[u8],
        seq: u32,
        mut each: impl FnMut(&[u8]) -> Result<(), NlFailure>,
    ) -> Result<(), NlFailure> {
        self.send(msg)?;
        let mut buf = vec![0u8; RECV_BUF_LEN];
        let mut interrupted = false;
        loop {
            let data = self.recv(&mut buf)?;
            for m in parse_messages(data)? {
                if m.seq != seq {
                    continue;
                }
                interrupted |= m.flags & NLM_F_DUMP_INTR != 0;
                match m.ty {
                    NLMSG_DONE => {
                        if m.payload.len() >= 4 {
                            // A dump error travels as a negative int in NLMSG_DONE.
                            if let Some(e) = parse_error(0, &m.payload[..4])? {
                                return Err(NlFailure::Kernel(e));
                            }
                        }
                        return if interrupted {
                            Err(NlFailure::DumpInterrupted)
                        } else {
                            Ok(())
                        };
                    }
                    NLMSG_ERROR => {
                        if let Some(e) = parse_error(m.flags, m.payload)? {
                            return Err(NlFailure::Kernel(e));
                        }
                    }
                    RTM_NEWADDR => each(m.payload)?,
                    _ => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    // Golden bytes are for a little-endian host (native-endian netlink headers).
    #[cfg(target_endian = "little")]
    #[test]
    fn new_address_ipv4_golden() {
        let m = new_address_request(1, 7, IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)), 24);
        #[rustfmt::skip]
        let want: [u8; 48] = [
            0x30, 0, 0, 0, 0x14, 0x00, 0x05, 0x06, 1, 0, 0, 0, 0, 0, 0, 0, // nlmsghdr
            0x02, 24, 0, 0, 7, 0, 0, 0,                                     // ifaddrmsg
            8, 0, 2, 0, 10, 1, 2, 3,                                        // IFA_LOCAL
            8, 0, 1, 0, 10, 1, 2, 3,                                        // IFA_ADDRESS
            8, 0, 4, 0, 10, 1, 2, 255,                                      // IFA_BROADCAST
        ];
        assert_eq!(m, want);
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn new_address_ipv4_host_route_has_no_broadcast() {
        let m = new_address_request(
            0x0102_0304,
            0x0000_0100,
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9)),
            32,
        );
        #[rustfmt::skip]
        let want: [u8; 40] = [
            0x28, 0, 0, 0, 0x14, 0x00, 0x05, 0x06, 0x04, 0x03, 0x02, 0x01, 0, 0, 0, 0,
            0x02, 32, 0, 0, 0x00, 0x01, 0, 0,
            8, 0, 2, 0, 192, 0, 2, 9,
            8, 0, 1, 0, 192, 0, 2, 9,
        ];
        assert_eq!(m, want);
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn new_address_ipv6_golden() {
        let a: Ipv6Addr = "fd00::5".parse().unwrap();
        let m = new_address_request(9, 3, IpAddr::V6(a), 64);
        #[rustfmt::skip]
        let want: [u8; 52] = [
            0x34, 0, 0, 0, 0x14, 0x00, 0x05, 0x06, 9, 0, 0, 0, 0, 0, 0, 0,
            0x0a, 64, 0x02, 0, 3, 0, 0, 0,
            20, 0, 1, 0, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5,
            8, 0, 8, 0, 2, 0, 0, 0,
        ];
        assert_eq!(m, want);
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn del_address_golden() {
        let m = del_address_request(2, 7, IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)), 24);
        #[rustfmt::skip]
        let want: [u8; 40] = [
            0x28, 0, 0, 0, 0x15, 0x00, 0x05, 0x00, 2, 0, 0, 0, 0, 0, 0, 0,
            0x02, 24, 0, 0, 7, 0, 0, 0,
            8, 0, 2, 0, 10, 1, 2, 3,
            8, 0, 1, 0, 10, 1, 2, 3,
        ];
        assert_eq!(m, want);
        let a: Ipv6Addr = "fd00::5".parse().unwrap();
        let m = del_address_request(3, 4, IpAddr::V6(a), 64);
        #[rustfmt::skip]
        let want: [u8; 44] = [
            0x2c, 0, 0, 0, 0x15, 0x00, 0x05, 0x00, 3, 0, 0, 0, 0, 0, 0, 0,
            0x0a, 64, 0, 0, 4, 0, 0, 0,
            20, 0, 1, 0, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5,
        ];
        assert_eq!(m, want);
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn dump_request_golden() {
        let m = dump_addresses_request(5, IpAddr::V4(Ipv4Addr::LOCALHOST));
        #[rustfmt::skip]
        let want: [u8; 24] = [
            0x18, 0, 0, 0, 0x16, 0x00, 0x01, 0x03, 5, 0, 0, 0, 0, 0, 0, 0,
            0x02, 0, 0, 0, 0, 0, 0, 0,
        ];
        assert_eq!(m, want);
        assert_eq!(
            dump_addresses_request(5, IpAddr::V6(Ipv6Addr::LOCALHOST))[16],
            0x0a
        );
    }

    #[test]
    fn broadcast_computation() {
        let a = Ipv4Addr::new(10, 1, 2, 3);
        assert_eq!(ipv4_broadcast(a, 24), Some(Ipv4Addr::new(10, 1, 2, 255)));
        assert_eq!(ipv4_broadcast(a, 0), Some(Ipv4Addr::BROADCAST));
        assert_eq!(ipv4_broadcast(a, 30), Some(Ipv4Addr::new(10, 1, 2, 3)));
        assert_eq!(ipv4_broadcast(a, 31), None);
        assert_eq!(ipv4_broadcast(a, 32), None);
        assert_eq!(ipv4_broadcast(a, 200), None);
    }

    fn header(len: usize, ty: u16, flags: u16, seq: u32) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&u32::try_from(len).unwrap().to_ne_bytes());
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(&flags.to_ne_bytes());
        v.extend_from_slice(&seq.to_ne_bytes());
        v.extend_from_slice(&77u32.to_ne_bytes());
        v
    }

    #[test]
    fn ack_and_plain_error() {
        // ACK: error 0 followed by the original header.
        let mut ack = header(36, NLMSG_ERROR, NLM_F_CAPPED, 4);
        ack.extend_from_slice(&0i32.to_ne_bytes());
        ack.extend_from_slice(&header(40, RTM_NEWADDR, 0x605, 4));
        let msgs = parse_messages(&ack).unwrap();
        assert_eq!(msgs.len(), 1);
        assert_eq!((msgs[0].ty, msgs[0].seq, msgs[0].pid), (NLMSG_ERROR, 4, 77));
        assert_eq!(parse_error(msgs[0].flags, msgs[0].payload), Ok(None));

        // EEXIST without extended ACK, original payload not capped.
        let mut err = header(16 + 4 + 24, NLMSG_ERROR, 0, 4);
        err.extend_from_slice(&(-libc::EEXIST).to_ne_bytes());
        let orig = new_address_request(4, 7, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 32);
        err.extend_from_slice(&orig[..24]);
        let msgs = parse_messages(&err).unwrap();
        assert_eq!(
            parse_error(msgs[0].flags, msgs[0].payload),
            Ok(Some(KernelError {
                errno: libc::EEXIST,
                message: None
            }))
        );
    }

    #[test]
    fn extended_ack_message() {
        let text = b"prefix length is invalid\0";
        let attr_len = 4 + text.len();
        let mut payload = Vec::new();
        payload.extend_from_slice(&(-libc::EINVAL).to_ne_bytes());
        payload.extend_from_slice(&header(40, RTM_NEWADDR, 0x605, 9));
        payload.extend_from_slice(&u16::try_from(attr_len).unwrap().to_ne_bytes());
        payload.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        payload.extend_from_slice(text);
        payload.resize(align4(payload.len()), 0);
        let e = parse_error(NLM_F_CAPPED | NLM_F_ACK_TLVS, &payload)
            .unwrap()
            .unwrap();
        assert_eq!(e.errno, libc::EINVAL);
        assert_eq!(e.message.as_deref(), Some("prefix length is invalid"));
    }

    #[test]
    fn malformed_inputs_are_errors_not_panics() {
        assert!(parse_messages(&[1, 2, 3]).is_err());
        let mut h = header(100, NLMSG_DONE, 0, 1);
        assert!(parse_messages(&h).is_err());
        h[0..4].copy_from_slice(&3u32.to_ne_bytes());
        assert!(parse_messages(&h).is_err());
        assert!(parse_error(0, &[0, 0]).is_err());
        assert!(parse_address(&[2, 24, 0]).is_err());
        assert!(parse_attrs(&[2, 0, 1, 0]).is_err());
        assert!(parse_attrs(&[200, 0, 1, 0, 1]).is_err());
        // Extended-ACK flag with garbage after the header: error, not panic.
        let mut p = (-1i32).to_ne_bytes().to_vec();
        p.extend_from_slice(&header(0xffff, 0, 0, 0));
        p.extend_from_slice(&[9, 0]);
        let _ = parse_error(NLM_F_ACK_TLVS, &p);
        let _ = parse_error(NLM_F_ACK_TLVS | NLM_F_CAPPED, &p);
        assert_eq!(parse_messages(&[]), Ok(vec![]));
    }

    #[test]
    fn parse_address_entry() {
        // An RTM_NEWADDR payload as the kernel dumps it: ifaddrmsg, IFA_ADDRESS,
        // IFA_LOCAL, IFA_FLAGS (u32).
        let mut p = vec![0x02, 24, 0x80, 0];
        p.extend_from_slice(&5u32.to_ne_bytes());
        for (ty, val) in [(IFA_ADDRESS, [10, 1, 2, 3]), (IFA_LOCAL, [10, 1, 2, 3])] {
            p.extend_from_slice(&8u16.to_ne_bytes());
            p.extend_from_slice(&ty.to_ne_bytes());
            p.extend_from_slice(&val);
        }
        p.extend_from_slice(&8u16.to_ne_bytes());
        p.extend_from_slice(&IFA_FLAGS.to_ne_bytes());
        p.extend_from_slice(&0x280u32.to_ne_bytes());
        let e = parse_address(&p).unwrap();
        assert_eq!(e.index, 5);
        assert_eq!(e.prefix_len, 24);
        assert_eq!(e.flags, 0x280);
        assert_eq!(e.address, Some(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3))));
        // An IPv6 entry with only IFA_ADDRESS.
        let mut p = vec![0x0a, 64, 0, 0];
        p.extend_from_slice(&2u32.to_ne_bytes());
        p.extend_from_slice(&20u16.to_ne_bytes());
        p.extend_from_slice(&IFA_ADDRESS.to_ne_bytes());
        let a: Ipv6Addr = "fd00::1".parse().unwrap();
        p.extend_from_slice(&a.octets());
        let e = parse_address(&p).unwrap();
        assert_eq!((e.index, e.prefix_len, e.flags), (2, 64, 0));
        assert_eq!(e.address, Some(IpAddr::V6(a)));
    }
}
