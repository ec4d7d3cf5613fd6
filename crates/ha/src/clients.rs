//! The client-list datagram: the active head tells the passive one which initiator
//! connections it holds on the portal IPs, so that after a takeover the new holder can
//! send each of them a "tickle" ACK (the client's stack answers, meets no connection
//! here, gets a reset and reconnects at once instead of waiting out its retransmission
//! backoff — CTDB's trick after an IP takeover).
//!
//! Owns: the byte layout (kind 4 of the TWHA family, see [`crate::wire`]), encoding,
//! decoding and MAC verification. Replay handling is the receiver's: it keeps the list
//! with the newest stamp.
//!
//! May not touch: sockets, clocks, the secret's bytes.
//!
//! ## Layout (little-endian; 48 + 36·n + 32 bytes, n ≤ [`CLIENTS_MAX`])
//!
//! ```text
//!  0  24  common header (magic "TWHA", version 1, kind 4, sender node id, cluster id)
//! 24   8  stamp boot            32  8  stamp seq
//! 40   2  n                     42  6  reserved, 0
//! 48  36·n entries: 16 local IPv6 address (IPv4 mapped), 2 local port,
//!          16 client IPv6 address (IPv4 mapped), 2 client port
//! ..  32  HMAC-SHA256(secret, every byte before it)
//! ```

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use crate::wire::{ClusterKey, Stamp, WireError, HEADER_BYTES, MAC_BYTES, MAGIC, VERSION};

/// The kind byte of a client list.
pub const KIND_CLIENT_LIST: u8 = 4;
/// Most connections carried (the rest are left out; a tickle is an optimisation).
pub const CLIENTS_MAX: usize = 32;
const FIXED_BYTES: usize = 48;
const ENTRY_BYTES: usize = 36;

/// One client list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientList {
    /// Sender.
    pub sender: u8,
    /// Cluster id.
    pub cluster_id: [u8; 16],
    /// Sender's stamp.
    pub stamp: Stamp,
    /// (local address on this head, client address).
    pub connections: Vec<(SocketAddr, SocketAddr)>,
}

fn put_addr(out: &mut Vec<u8>, a: SocketAddr) {
    let v6 = match a.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    out.extend_from_slice(&v6.octets());
    out.extend_from_slice(&a.port().to_le_bytes());
}

fn get_addr(b: &[u8]) -> SocketAddr {
    let mut o = [0u8; 16];
    o.copy_from_slice(&b[..16]);
    let v6 = Ipv6Addr::from(o);
    let ip = match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    };
    SocketAddr::new(ip, u16::from_le_bytes([b[16], b[17]]))
}

/// Is this datagram a client list (by its kind byte)?
pub fn is_client_list(bytes: &[u8]) -> bool {
    bytes.len() > 6 && bytes[..4] == MAGIC && bytes[6] == KIND_CLIENT_LIST
}

impl ClientList {
    /// The datagram (at most [`CLIENTS_MAX`] connections are kept).
    pub fn encode(&self, key: &ClusterKey) -> Vec<u8> {
        let n = self.connections.len().min(CLIENTS_MAX);
        let mut out = Vec::with_capacity(FIXED_BYTES + n * ENTRY_BYTES + MAC_BYTES);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.push(KIND_CLIENT_LIST);
        out.push(self.sender);
        out.extend_from_slice(&self.cluster_id);
        out.extend_from_slice(&self.stamp.boot.to_le_bytes());
        out.extend_from_slice(&self.stamp.seq.to_le_bytes());
        out.extend_from_slice(&(n as u16).to_le_bytes());
        out.extend_from_slice(&[0; 6]);
        for (local, client) in &self.connections[..n] {
            put_addr(&mut out, *local);
            put_addr(&mut out, *client);
        }
        let tag = key.tag(&out);
        out.extend_from_slice(&tag);
        out
    }

    /// Decode and authenticate. Never panics.
    pub fn decode(bytes: &[u8], key: &ClusterKey) -> Result<Self, WireError> {
        if bytes.len() < FIXED_BYTES + MAC_BYTES {
            return Err(WireError::TooShort {
                len_bytes: bytes.len(),
            });
        }
        if !is_client_list(bytes) {
            return Err(WireError::Invalid("not a client list"));
        }
        let version = u16::from_le_bytes([bytes[4], bytes[5]]);
        if version != VERSION {
            return Err(WireError::UnsupportedVersion(version));
        }
        let n = usize::from(u16::from_le_bytes([bytes[40], bytes[41]]));
        let expected = FIXED_BYTES + n * ENTRY_BYTES + MAC_BYTES;
        if n > CLIENTS_MAX || bytes.len() != expected {
            return Err(WireError::BadLength {
                kind: "client list",
                expected_bytes: expected,
                got_bytes: bytes.len(),
            });
        }
        let (covered, tag) = bytes.split_at(expected - MAC_BYTES);
        key.verify(covered, tag)?;
        if bytes[42..48] != [0; 6] {
            return Err(WireError::Invalid("reserved bytes of a client list"));
        }
        let u64_at = |o: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[o..o + 8]);
            u64::from_le_bytes(b)
        };
        let mut cluster_id = [0u8; 16];
        cluster_id.copy_from_slice(&bytes[8..HEADER_BYTES]);
        let connections = (0..n)
            .map(|i| {
                let e = &bytes[FIXED_BYTES + i * ENTRY_BYTES..FIXED_BYTES + (i + 1) * ENTRY_BYTES];
                (get_addr(&e[..18]), get_addr(&e[18..]))
            })
            .collect();
        Ok(ClientList {
            sender: bytes[7],
            cluster_id,
            stamp: Stamp {
                boot: u64_at(24),
                seq: u64_at(32),
            },
            connections,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ClusterKey {
        ClusterKey::new(b"0123456789abcdef0123").unwrap()
    }

    fn sample() -> ClientList {
        ClientList {
            sender: 1,
            cluster_id: [7; 16],
            stamp: Stamp { boot: 3, seq: 9 },
            connections: vec![(
                "10.231.0.50:3260".parse().unwrap(),
                "10.231.0.100:40000".parse().unwrap(),
            )],
        }
    }

    #[test]
    fn golden_layout_and_round_trip() {
        let b = sample().encode(&key());
        assert_eq!(b.len(), 48 + 36 + 32);
        assert_eq!(&b[..8], b"TWHA\x01\x00\x04\x01");
        assert_eq!(&b[24..32], &3u64.to_le_bytes());
        assert_eq!(&b[32..40], &9u64.to_le_bytes());
        assert_eq!(&b[40..48], &[1, 0, 0, 0, 0, 0, 0, 0]);
        // 10.231.0.50 mapped, port 3260 little-endian.
        assert_eq!(
            &b[48..66],
            &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 231, 0, 50, 0xbc, 0x0c]
        );
        assert_eq!(ClientList::decode(&b, &key()).unwrap(), sample());
        assert!(is_client_list(&b));
    }

    #[test]
    fn every_flipped_bit_and_a_wrong_key_are_refused() {
        let b = sample().encode(&key());
        for i in 0..b.len() * 8 {
            let mut c = b.clone();
            c[i / 8] ^= 1 << (i % 8);
            assert!(ClientList::decode(&c, &key()).is_err(), "bit {i}");
        }
        let other = ClusterKey::new(b"another secret of 20b").unwrap();
        assert!(ClientList::decode(&b, &other).is_err());
        for len in 0..b.len() {
            assert!(ClientList::decode(&b[..len], &key()).is_err());
        }
    }
}
