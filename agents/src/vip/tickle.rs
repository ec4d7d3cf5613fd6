//! Tickle ACKs after an IP takeover (as Samba CTDB sends them): a bare ACK with seq 0
//! and ack 0 from the portal address to a client that was connected to the old holder.
//! The client's stack answers with a challenge ACK; the new holder has no such
//! connection and answers that with a RST, so the client reconnects at once instead of
//! waiting out its retransmission backoff.

use std::io;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};

use super::frames;
use super::sys;
use super::VipError;

fn io_err(local: SocketAddr, client: SocketAddr, what: &str) -> impl FnOnce(io::Error) -> VipError {
    let context = format!("{what} for the tickle ACK {local} -> {client}");
    move |error| VipError::Io { context, error }
}

/// Sends `count` tickle ACKs from `local` (the portal address and port the client was
/// connected to; it need not be configured on this host yet) to `client`. IPv4 goes
/// through an `IPPROTO_RAW` socket with a header built here; IPv6 through a raw TCP
/// socket bound (with `IPV6_FREEBIND`) to `local`, checksum over the pseudo-header
/// computed here. A `count` of 0 sends nothing.
pub fn send_tickle_ack(local: SocketAddr, client: SocketAddr, count: u32) -> Result<(), VipError> {
    match (local, client) {
        (SocketAddr::V4(l), SocketAddr::V4(c)) => tickle_v4(l, c, count),
        (SocketAddr::V6(l), SocketAddr::V6(c)) => tickle_v6(l, c, count),
        _ => Err(VipError::FamilyMismatch { local, client }),
    }
}

fn tickle_v4(local: SocketAddrV4, client: SocketAddrV4, count: u32) -> Result<(), VipError> {
    if count == 0 {
        return Ok(());
    }
    let (l, c) = (SocketAddr::V4(local), SocketAddr::V4(client));
    // IPPROTO_RAW implies IP_HDRINCL: the packet below is sent as is (Linux fills in a
    // zero identification and recomputes the header checksum).
    let fd = sys::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW).map_err(io_err(
        l,
        c,
        "opening a raw socket",
    ))?;
    let packet = frames::tickle_ipv4(local, client);
    let dest = sys::sockaddr_in(*client.ip());
    for _ in 0..count {
        sys::send_to(&fd, &packet, &dest).map_err(io_err(l, c, "sending"))?;
    }
    tracing::debug!(local = %l, client = %c, count, "sent tickle ACKs");
    Ok(())
}

fn tickle_v6(local: SocketAddrV6, client: SocketAddrV6, count: u32) -> Result<(), VipError> {
    if count == 0 {
        return Ok(());
    }
    let (l, c) = (SocketAddr::V6(local), SocketAddr::V6(client));
    let fd = sys::socket(libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_TCP).map_err(io_err(
        l,
        c,
        "opening a raw socket",
    ))?;
    // The checksum below is computed for source `local`; bind to it so the kernel uses
    // exactly that address (freebind: it may not be configured here yet).
    sys::set_int_opt(&fd, libc::IPPROTO_IPV6, libc::IPV6_FREEBIND, 1).map_err(io_err(
        l,
        c,
        "IPV6_FREEBIND",
    ))?;
    sys::bind(&fd, &sys::sockaddr_in6(*local.ip(), local.scope_id())).map_err(io_err(
        l,
        c,
        "binding to the portal address",
    ))?;
    let segment = frames::tickle_ipv6(local, client);
    let dest = sys::sockaddr_in6(*client.ip(), client.scope_id());
    for _ in 0..count {
        sys::send_to(&fd, &segment, &dest).map_err(io_err(l, c, "sending"))?;
    }
    tracing::debug!(local = %l, client = %c, count, "sent tickle ACKs");
    Ok(())
}
