//! Thin wrappers over the socket syscalls and interface ioctls the portal-IP agent uses.
//! Every `unsafe` block of the module tree lives here or next to a raw struct it fills.

use std::ffi::CString;
use std::io;
use std::mem;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use super::frames::MacAddr;

/// `ARPHRD_ETHER`: the hardware type of Ethernet-like interfaces (also veth, bridges,
/// bonds, VLANs).
pub(crate) const ARPHRD_ETHER: u16 = 1;
/// `IFF_NOARP` in the interface flags.
pub(crate) const IFF_NOARP: u32 = 0x80;
/// `PACKET_OUTGOING`: a packet socket sees a frame this host sent.
pub(crate) const PACKET_OUTGOING: u8 = 4;
const SIOCGIFFLAGS: libc::c_ulong = 0x8913;
const SIOCGIFHWADDR: libc::c_ulong = 0x8927;
const IFNAMSIZ: usize = 16;

/// Socket address types the kernel accepts; sealed so that `bind`/`send_to` only ever
/// pass a real `sockaddr_*` with its own size.
pub(crate) trait SockAddr: sealed::Sealed {}
mod sealed {
    pub trait Sealed {}
    impl Sealed for libc::sockaddr_ll {}
    impl Sealed for libc::sockaddr_in {}
    impl Sealed for libc::sockaddr_in6 {}
    impl Sealed for libc::sockaddr_nl {}
}
impl SockAddr for libc::sockaddr_ll {}
impl SockAddr for libc::sockaddr_in {}
impl SockAddr for libc::sockaddr_in6 {}
impl SockAddr for libc::sockaddr_nl {}

/// An all-zero `sockaddr_*` (the C idiom `memset(&sa, 0, sizeof sa)`).
pub(crate) fn zeroed_sockaddr<A: SockAddr>() -> A {
    // SAFETY: every SockAddr type is a plain C struct of integers and byte arrays, for
    // which the all-zero bit pattern is a valid value.
    unsafe { mem::zeroed() }
}

fn socklen<A>() -> libc::socklen_t {
    libc::socklen_t::try_from(size_of::<A>()).unwrap_or(libc::socklen_t::MAX)
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `socket(2)` with `SOCK_CLOEXEC`.
pub(crate) fn socket(
    domain: libc::c_int,
    ty: libc::c_int,
    protocol: libc::c_int,
) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) takes only integers and returns a new descriptor or -1.
    let fd = unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, protocol) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2), is open, and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn setsockopt_raw(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &[u8],
) -> io::Result<()> {
    let len = libc::socklen_t::try_from(value.len())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `value` is valid for reads of `len` bytes for the duration of the call and
    // the kernel copies it before returning; `fd` is an open descriptor we borrow.
    check(unsafe { libc::setsockopt(fd.as_raw_fd(), level, name, value.as_ptr().cast(), len) })
}

/// `setsockopt(2)` with an `int` value.
pub(crate) fn set_int_opt(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    setsockopt_raw(fd, level, name, &value.to_ne_bytes())
}

/// `SO_BINDTODEVICE`: the socket only sends and receives on `ifname`.
pub(crate) fn bind_to_device(fd: &OwnedFd, ifname: &str) -> io::Result<()> {
    setsockopt_raw(
        fd,
        libc::SOL_SOCKET,
        libc::SO_BINDTODEVICE,
        ifname.as_bytes(),
    )
}

/// `SO_RCVTIMEO`: a blocking receive fails with `EAGAIN` after `timeout`.
pub(crate) fn set_recv_timeout(fd: &OwnedFd, timeout: Duration) -> io::Result<()> {
    // SAFETY: timeval is a plain C struct of integers (plus padding on some targets);
    // all-zero is a valid value.
    let mut tv: libc::timeval = unsafe { mem::zeroed() };
    tv.tv_sec = libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX);
    tv.tv_usec = libc::suseconds_t::from(timeout.subsec_micros().min(999_999) as i32);
    let len = socklen::<libc::timeval>();
    // SAFETY: `tv` lives across the call and is `len` bytes long; `fd` is open.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            len,
        )
    })
}

/// `bind(2)`.
pub(crate) fn bind<A: SockAddr>(fd: &OwnedFd, addr: &A) -> io::Result<()> {
    // SAFETY: `addr` points to a live sockaddr of exactly `socklen::<A>()` bytes (sealed
    // SockAddr types only); the kernel copies it during the call.
    check(unsafe { libc::bind(fd.as_raw_fd(), (addr as *const A).cast(), socklen::<A>()) })
}

/// `sendto(2)` of the whole of `buf`, retried on `EINTR`; a short send is an error.
pub(crate) fn send_to<A: SockAddr>(fd: &OwnedFd, buf: &[u8], addr: &A) -> io::Result<()> {
    loop {
        // SAFETY: `buf` is valid for reads of `buf.len()` bytes and `addr` is a live
        // sockaddr of `socklen::<A>()` bytes, both for the duration of the call.
        let n = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                0,
                (addr as *const A).cast(),
                socklen::<A>(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if usize::try_from(n).ok() != Some(buf.len()) {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short send: {n} of {} bytes", buf.len()),
            ));
        }
        return Ok(());
    }
}

/// `recv(2)` into `buf`, retried on `EINTR`. Returns the length the kernel reports,
/// which with `MSG_TRUNC` may exceed `buf.len()` (the datagram was cut).
pub(crate) fn recv(fd: &OwnedFd, buf: &mut [u8], flags: libc::c_int) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the call.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), flags) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        return Ok(usize::try_from(n).unwrap_or(0));
    }
}

/// Non-blocking `recvfrom(2)` on a packet socket: `Ok(None)` when nothing is queued,
/// otherwise the frame length (capped at `buf.len()`) and the link-layer address.
pub(crate) fn recv_from_packet(
    fd: &OwnedFd,
    buf: &mut [u8],
) -> io::Result<Option<(usize, libc::sockaddr_ll)>> {
    loop {
        let mut from: libc::sockaddr_ll = zeroed_sockaddr();
        let mut len = socklen::<libc::sockaddr_ll>();
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes; `from`/`len` describe a
        // live sockaddr_ll the kernel may fill, at most `len` bytes.
        let n = unsafe {
            libc::recvfrom(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
                (&raw mut from).cast(),
                &raw mut len,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(None),
                _ => return Err(e),
            }
        }
        return Ok(Some((usize::try_from(n).unwrap_or(0).min(buf.len()), from)));
    }
}

/// `poll(2)` for readability, at most `timeout` (rounded up to whole milliseconds).
pub(crate) fn poll_readable(fd: &OwnedFd, timeout: Duration) -> io::Result<bool> {
    let ms = timeout.as_micros().div_ceil(1000);
    let ms = libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX);
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `p` is one live pollfd and we pass nfds = 1.
    let rc = unsafe { libc::poll(&raw mut p, 1, ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(e);
    }
    Ok(rc > 0)
}

/// What this module needs to know about a network interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Link {
    /// Interface index.
    pub index: u32,
    /// `ARPHRD_*` hardware type.
    pub hw_type: u16,
    /// Hardware address (first six bytes; meaningful for Ethernet-like links).
    pub mac: MacAddr,
    /// `IFF_*` flags.
    pub flags: u32,
}

/// Interface index of `ifname` (`if_nametoindex(3)`); `ENODEV` if there is none. The
/// caller has validated the name (no NUL, shorter than IFNAMSIZ).
pub(crate) fn if_index(ifname: &str) -> io::Result<u32> {
    let c = CString::new(ifname).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `c` is a NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        let e = io::Error::last_os_error();
        // glibc leaves errno as the ioctl's (ENODEV); never report "success".
        return Err(if e.raw_os_error().unwrap_or(0) == 0 {
            io::Error::from_raw_os_error(libc::ENODEV)
        } else {
            e
        });
    }
    Ok(index)
}

/// `struct ifreq` with the union as raw bytes (24 bytes covers it on every Linux ABI).
#[repr(C)]
struct IfReq {
    name: [u8; IFNAMSIZ],
    data: [u8; 24],
}

fn ifreq_ioctl(sock: &OwnedFd, ifname: &str, request: libc::c_ulong) -> io::Result<IfReq> {
    let bytes = ifname.as_bytes();
    if bytes.is_empty() || bytes.len() >= IFNAMSIZ || bytes.contains(&0) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut req = IfReq {
        name: [0; IFNAMSIZ],
        data: [0; 24],
    };
    req.name[..bytes.len()].copy_from_slice(bytes);
    // SAFETY: `req` is a live, writable buffer at least as large as the kernel's
    // struct ifreq, with a NUL-terminated name; SIOCGIF* requests write only into it.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), request as _, &raw mut req) })?;
    Ok(req)
}

/// Index, hardware type, hardware address and flags of `ifname`.
pub(crate) fn link(ifname: &str) -> io::Result<Link> {
    let index = if_index(ifname)?;
    let sock = socket(libc::AF_INET, libc::SOCK_DGRAM, 0)
        .or_else(|_| socket(libc::AF_NETLINK, libc::SOCK_RAW, 0))?;
    let hw = ifreq_ioctl(&sock, ifname, SIOCGIFHWADDR)?;
    // struct sockaddr: sa_family (native u16), then sa_data.
    let hw_type = u16::from_ne_bytes([hw.data[0], hw.data[1]]);
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&hw.data[2..8]);
    let fl = ifreq_ioctl(&sock, ifname, SIOCGIFFLAGS)?;
    // ifr_flags is a short.
    let flags = u32::from(u16::from_ne_bytes([fl.data[0], fl.data[1]]));
    Ok(Link {
        index,
        hw_type,
        mac: MacAddr(mac),
        flags,
    })
}

/// `sockaddr_ll` for sending to or binding on `ifindex` with EtherType `ethertype`.
pub(crate) fn sockaddr_ll(ifindex: u32, ethertype: u16, dst: MacAddr) -> libc::sockaddr_ll {
    let mut sa: libc::sockaddr_ll = zeroed_sockaddr();
    sa.sll_family = libc::AF_PACKET as libc::c_ushort;
    sa.sll_protocol = ethertype.to_be();
    sa.sll_ifindex = libc::c_int::try_from(ifindex).unwrap_or(0);
    sa.sll_halen = 6;
    sa.sll_addr[..6].copy_from_slice(&dst.0);
    sa
}

/// `sockaddr_in` for `ip` (port 0).
pub(crate) fn sockaddr_in(ip: std::net::Ipv4Addr) -> libc::sockaddr_in {
    let mut sa: libc::sockaddr_in = zeroed_sockaddr();
    sa.sin_family = libc::AF_INET as libc::sa_family_t;
    sa.sin_addr.s_addr = u32::from_ne_bytes(ip.octets());
    sa
}

/// `sockaddr_in6` for `ip` with `scope_id` (port 0: for raw sockets the kernel then
/// uses the socket's protocol).
pub(crate) fn sockaddr_in6(ip: std::net::Ipv6Addr, scope_id: u32) -> libc::sockaddr_in6 {
    let mut sa: libc::sockaddr_in6 = zeroed_sockaddr();
    sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    sa.sin6_addr.s6_addr = ip.octets();
    sa.sin6_scope_id = scope_id;
    sa
}
