//! The outdate request: a head whose replication link failed while its heartbeats still
//! reach the peer asks the peer's HA manager to mark its replicated data Outdated (DRBD's
//! resource-level fencing), so that the peer cannot be promoted with stale data while
//! this head writes alone; the peer answers whether it did.
//!
//! Owns: the byte layout (kinds 5 and 6 of the TWHA family, see [`crate::wire`]),
//! encoding, decoding and MAC verification. Matching replies to requests (the nonce) and
//! acting on them is the drivers'.
//!
//! May not touch: sockets, clocks, volumes.
//!
//! ## Layout (little-endian, 88 bytes)
//!
//! ```text
//!  0  24  common header (magic "TWHA", version 1, kind 5 request / 6 reply, sender
//!         node id, cluster id)
//! 24   8  sender boot            32  8  nonce (the request's, echoed by the reply)
//! 40   4  reply: 1 outdated, 2 refused (e.g. the volume is Primary there); request: 0
//! 44  12  reserved, 0
//! 56  32  HMAC-SHA256(secret, bytes 0..56)
//! ```

use crate::wire::{ClusterKey, WireError, MAC_BYTES, MAGIC, VERSION};

/// Kind byte of a request.
pub const KIND_OUTDATE_REQUEST: u8 = 5;
/// Kind byte of a reply.
pub const KIND_OUTDATE_REPLY: u8 = 6;
/// Datagram length.
pub const OUTDATE_BYTES: usize = 88;

/// A request or a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outdate {
    /// Reply (`Some(outdated)`) or request (`None`).
    pub reply: Option<bool>,
    /// Sender.
    pub sender: u8,
    /// Cluster id.
    pub cluster_id: [u8; 16],
    /// Sender's boot.
    pub boot: u64,
    /// Request nonce (echoed by the reply).
    pub nonce: u64,
}

/// Is this datagram an outdate request or reply (by its kind byte)?
pub fn is_outdate(bytes: &[u8]) -> bool {
    bytes.len() > 6
        && bytes[..4] == MAGIC
        && matches!(bytes[6], KIND_OUTDATE_REQUEST | KIND_OUTDATE_REPLY)
}

impl Outdate {
    /// The datagram.
    pub fn encode(&self, key: &ClusterKey) -> [u8; OUTDATE_BYTES] {
        let mut b = [0u8; OUTDATE_BYTES];
        b[..4].copy_from_slice(&MAGIC);
        b[4..6].copy_from_slice(&VERSION.to_le_bytes());
        b[6] = if self.reply.is_some() {
            KIND_OUTDATE_REPLY
        } else {
            KIND_OUTDATE_REQUEST
        };
        b[7] = self.sender;
        b[8..24].copy_from_slice(&self.cluster_id);
        b[24..32].copy_from_slice(&self.boot.to_le_bytes());
        b[32..40].copy_from_slice(&self.nonce.to_le_bytes());
        let status: u32 = match self.reply {
            None => 0,
            Some(true) => 1,
            Some(false) => 2,
        };
        b[40..44].copy_from_slice(&status.to_le_bytes());
        let tag = key.tag(&b[..OUTDATE_BYTES - MAC_BYTES]);
        b[OUTDATE_BYTES - MAC_BYTES..].copy_from_slice(&tag);
        b
    }

    /// Decode and authenticate. Never panics.
    pub fn decode(bytes: &[u8], key: &ClusterKey) -> Result<Self, WireError> {
        if bytes.len() != OUTDATE_BYTES {
            return Err(WireError::BadLength {
                kind: "outdate",
                expected_bytes: OUTDATE_BYTES,
                got_bytes: bytes.len(),
            });
        }
        if !is_outdate(bytes) {
            return Err(WireError::Invalid("not an outdate request or reply"));
        }
        let version = u16::from_le_bytes([bytes[4], bytes[5]]);
        if version != VERSION {
            return Err(WireError::UnsupportedVersion(version));
        }
        let (covered, tag) = bytes.split_at(OUTDATE_BYTES - MAC_BYTES);
        key.verify(covered, tag)?;
        if bytes[44..56] != [0; 12] {
            return Err(WireError::Invalid("reserved bytes of an outdate datagram"));
        }
        let u64_at = |o: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&bytes[o..o + 8]);
            u64::from_le_bytes(x)
        };
        let status = u32::from_le_bytes([bytes[40], bytes[41], bytes[42], bytes[43]]);
        let reply = match (bytes[6], status) {
            (KIND_OUTDATE_REQUEST, 0) => None,
            (KIND_OUTDATE_REPLY, 1) => Some(true),
            (KIND_OUTDATE_REPLY, 2) => Some(false),
            _ => return Err(WireError::Invalid("outdate status")),
        };
        let mut cluster_id = [0u8; 16];
        cluster_id.copy_from_slice(&bytes[8..24]);
        Ok(Outdate {
            reply,
            sender: bytes[7],
            cluster_id,
            boot: u64_at(24),
            nonce: u64_at(32),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ClusterKey {
        ClusterKey::new(b"0123456789abcdef0123").unwrap()
    }

    #[test]
    fn golden_layout_round_trip_and_tampering() {
        let req = Outdate {
            reply: None,
            sender: 1,
            cluster_id: [3; 16],
            boot: 7,
            nonce: 0x0102_0304_0506_0708,
        };
        let b = req.encode(&key());
        assert_eq!(&b[..8], b"TWHA\x01\x00\x05\x01");
        assert_eq!(&b[24..32], &7u64.to_le_bytes());
        assert_eq!(&b[32..40], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(&b[40..44], &[0, 0, 0, 0]);
        assert_eq!(Outdate::decode(&b, &key()).unwrap(), req);
        let rep = Outdate {
            reply: Some(false),
            ..req
        };
        let r = rep.encode(&key());
        assert_eq!((r[6], r[40]), (KIND_OUTDATE_REPLY, 2));
        assert_eq!(Outdate::decode(&r, &key()).unwrap(), rep);
        for i in 0..b.len() * 8 {
            let mut c = b;
            c[i / 8] ^= 1 << (i % 8);
            assert!(Outdate::decode(&c, &key()).is_err(), "bit {i}");
        }
        assert!(Outdate::decode(&b[..40], &key()).is_err());
    }
}
