//! The resource-overrides datagram: each head tells the other its operator overrides
//! of resources (`twinsan ha resource NAME start|stop|manage|unmanage`), so a target
//! role or an unmanaged flag set on one head holds on both — after a failover too.
//!
//! Owns: the byte layout (kind 7 of the TWHA family, see [`crate::wire`]), encoding,
//! decoding, MAC verification and the rule that decides which set wins
//! ([`OverrideSet::wins_over`]): the higher version (a Lamport counter: a head that
//! changes its set takes one more than the highest it has seen), on a tie the lower
//! sender node id. A replayed datagram carries an old or equal version and changes
//! nothing.
//!
//! May not touch: sockets, clocks, the secret's bytes, the resources.
//!
//! ## Layout (little-endian; at most 56 + 67·n + 32 bytes, n ≤ [`OVERRIDES_MAX`])
//!
//! ```text
//!  0  24  common header (magic "TWHA", version 1, kind 7, sender node id, cluster id)
//! 24   8  stamp boot            32  8  stamp seq
//! 40   8  set version
//! 48   2  n                     50  6  reserved, 0
//! 56  n entries: 1 name length L (1..=64), L name bytes,
//!          1 target role (0 not set, 1 started, 2 stopped),
//!          1 managed (0 not set, 1 managed, 2 unmanaged)
//! ..  32  HMAC-SHA256(secret, every byte before it)
//! ```

use crate::policy::{Override, TargetRole};
use crate::wire::{ClusterKey, Stamp, WireError, HEADER_BYTES, MAC_BYTES, MAGIC, VERSION};

/// The kind byte of a resource-overrides datagram.
pub const KIND_OVERRIDES: u8 = 7;
/// Most overrides carried.
pub const OVERRIDES_MAX: usize = 64;
/// Longest resource name carried.
pub const NAME_MAX_BYTES: usize = 64;
/// Largest datagram of this kind.
pub const OVERRIDES_BYTES_MAX: usize =
    FIXED_BYTES + OVERRIDES_MAX * (3 + NAME_MAX_BYTES) + MAC_BYTES;
const FIXED_BYTES: usize = 56;

/// One head's override set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverrideSet {
    /// Sender.
    pub sender: u8,
    /// Cluster id.
    pub cluster_id: [u8; 16],
    /// Sender's stamp.
    pub stamp: Stamp,
    /// Lamport version of the set.
    pub version: u64,
    /// The overrides.
    pub overrides: Vec<Override>,
}

impl OverrideSet {
    /// Whether this set replaces one at `version` held by `holder`.
    pub fn wins_over(&self, version: u64, holder: u8) -> bool {
        self.version > version || (self.version == version && self.sender < holder)
    }

    /// The datagram. Refuses more than [`OVERRIDES_MAX`] entries or a name that is
    /// empty or longer than [`NAME_MAX_BYTES`].
    pub fn encode(&self, key: &ClusterKey) -> Result<Vec<u8>, WireError> {
        if self.overrides.len() > OVERRIDES_MAX {
            return Err(WireError::Invalid("more resource overrides than fit"));
        }
        let mut out = Vec::with_capacity(OVERRIDES_BYTES_MAX);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.push(KIND_OVERRIDES);
        out.push(self.sender);
        out.extend_from_slice(&self.cluster_id);
        out.extend_from_slice(&self.stamp.boot.to_le_bytes());
        out.extend_from_slice(&self.stamp.seq.to_le_bytes());
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(self.overrides.len() as u16).to_le_bytes());
        out.extend_from_slice(&[0; 6]);
        for o in &self.overrides {
            let name = o.name.as_bytes();
            if name.is_empty() || name.len() > NAME_MAX_BYTES {
                return Err(WireError::Invalid("resource name length"));
            }
            out.push(name.len() as u8);
            out.extend_from_slice(name);
            out.push(match o.target_role {
                None => 0,
                Some(TargetRole::Started) => 1,
                Some(TargetRole::Stopped) => 2,
            });
            out.push(match o.managed {
                None => 0,
                Some(true) => 1,
                Some(false) => 2,
            });
        }
        let tag = key.tag(&out);
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Decode and authenticate. Never panics.
    pub fn decode(bytes: &[u8], key: &ClusterKey) -> Result<Self, WireError> {
        if bytes.len() < FIXED_BYTES + MAC_BYTES {
            return Err(WireError::TooShort {
                len_bytes: bytes.len(),
            });
        }
        if !is_overrides(bytes) {
            return Err(WireError::Invalid("not a resource-overrides datagram"));
        }
        if bytes.len() > OVERRIDES_BYTES_MAX {
            return Err(WireError::BadLength {
                kind: "resource overrides",
                expected_bytes: OVERRIDES_BYTES_MAX,
                got_bytes: bytes.len(),
            });
        }
        let version = u16::from_le_bytes([bytes[4], bytes[5]]);
        if version != VERSION {
            return Err(WireError::UnsupportedVersion(version));
        }
        let (covered, tag) = bytes.split_at(bytes.len() - MAC_BYTES);
        key.verify(covered, tag)?;
        if bytes[50..56] != [0; 6] {
            return Err(WireError::Invalid("reserved bytes of resource overrides"));
        }
        let n = usize::from(u16::from_le_bytes([bytes[48], bytes[49]]));
        if n > OVERRIDES_MAX {
            return Err(WireError::Invalid("more resource overrides than allowed"));
        }
        let u64_at = |o: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[o..o + 8]);
            u64::from_le_bytes(b)
        };
        let mut overrides = Vec::with_capacity(n);
        let mut at = FIXED_BYTES;
        for _ in 0..n {
            let len = usize::from(
                *covered
                    .get(at)
                    .ok_or(WireError::Invalid("truncated entry"))?,
            );
            if len == 0 || len > NAME_MAX_BYTES {
                return Err(WireError::Invalid("resource name length"));
            }
            let e = covered
                .get(at + 1..at + 3 + len)
                .ok_or(WireError::Invalid("truncated entry"))?;
            let name = std::str::from_utf8(&e[..len])
                .map_err(|_| WireError::Invalid("resource name is not UTF-8"))?;
            let target_role = match e[len] {
                0 => None,
                1 => Some(TargetRole::Started),
                2 => Some(TargetRole::Stopped),
                _ => return Err(WireError::Invalid("target role")),
            };
            let managed = match e[len + 1] {
                0 => None,
                1 => Some(true),
                2 => Some(false),
                _ => return Err(WireError::Invalid("managed flag")),
            };
            overrides.push(Override {
                name: name.to_string(),
                target_role,
                managed,
            });
            at += 3 + len;
        }
        if at != covered.len() {
            return Err(WireError::Invalid("bytes after the last entry"));
        }
        let mut cluster_id = [0u8; 16];
        cluster_id.copy_from_slice(&bytes[8..HEADER_BYTES]);
        Ok(OverrideSet {
            sender: bytes[7],
            cluster_id,
            stamp: Stamp {
                boot: u64_at(24),
                seq: u64_at(32),
            },
            version: u64_at(40),
            overrides,
        })
    }
}

/// Is this datagram a resource-overrides datagram (by its kind byte)?
pub fn is_overrides(bytes: &[u8]) -> bool {
    bytes.len() > 6 && bytes[..4] == MAGIC && bytes[6] == KIND_OVERRIDES
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ClusterKey {
        ClusterKey::new(b"0123456789abcdef0123").unwrap()
    }

    fn sample() -> OverrideSet {
        OverrideSet {
            sender: 2,
            cluster_id: [7; 16],
            stamp: Stamp { boot: 3, seq: 9 },
            version: 5,
            overrides: vec![
                Override {
                    name: "fs".into(),
                    target_role: Some(TargetRole::Stopped),
                    managed: None,
                },
                Override {
                    name: "app".into(),
                    target_role: None,
                    managed: Some(false),
                },
            ],
        }
    }

    #[test]
    fn golden_layout_and_round_trip() {
        let b = sample().encode(&key()).unwrap();
        assert_eq!(b.len(), 56 + (3 + 2) + (3 + 3) + 32);
        assert_eq!(&b[..8], b"TWHA\x01\x00\x07\x02");
        assert_eq!(&b[24..32], &3u64.to_le_bytes());
        assert_eq!(&b[32..40], &9u64.to_le_bytes());
        assert_eq!(&b[40..48], &5u64.to_le_bytes());
        assert_eq!(&b[48..56], &[2, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&b[56..67], b"\x02fs\x02\x00\x03app\x00\x02");
        assert_eq!(OverrideSet::decode(&b, &key()).unwrap(), sample());
        assert!(is_overrides(&b));
        let empty = OverrideSet {
            overrides: Vec::new(),
            ..sample()
        };
        let e = empty.encode(&key()).unwrap();
        assert_eq!(OverrideSet::decode(&e, &key()).unwrap(), empty);
    }

    #[test]
    fn every_flipped_bit_truncation_and_a_wrong_key_are_refused() {
        let b = sample().encode(&key()).unwrap();
        for i in 0..b.len() * 8 {
            let mut c = b.clone();
            c[i / 8] ^= 1 << (i % 8);
            assert!(OverrideSet::decode(&c, &key()).is_err(), "bit {i}");
        }
        let other = ClusterKey::new(b"another secret of 20b").unwrap();
        assert!(OverrideSet::decode(&b, &other).is_err());
        for len in 0..b.len() {
            assert!(OverrideSet::decode(&b[..len], &key()).is_err(), "{len}");
        }
    }

    #[test]
    fn oversized_sets_and_names_are_refused() {
        let mut s = sample();
        s.overrides[0].name = "x".repeat(65);
        assert!(s.encode(&key()).is_err());
        s.overrides[0].name = String::new();
        assert!(s.encode(&key()).is_err());
        let mut s = sample();
        s.overrides = (0..65)
            .map(|i| Override {
                name: format!("r{i}"),
                target_role: None,
                managed: Some(true),
            })
            .collect();
        assert!(s.encode(&key()).is_err());
        s.overrides.truncate(64);
        for o in &mut s.overrides {
            o.name = format!("{:x<64}", o.name);
        }
        let b = s.encode(&key()).unwrap();
        assert_eq!(b.len(), OVERRIDES_BYTES_MAX);
        assert_eq!(OverrideSet::decode(&b, &key()).unwrap(), s);
    }

    #[test]
    fn the_higher_version_wins_and_ties_go_to_the_lower_node_id() {
        let s = sample(); // sender 2, version 5
        assert!(s.wins_over(4, 1));
        assert!(!s.wins_over(6, 1));
        assert!(!s.wins_over(5, 1), "tie: node 1 keeps its set");
        assert!(s.wins_over(5, 3), "tie: node 2 beats node 3");
        assert!(!s.wins_over(5, 2), "its own set again changes nothing");
    }
}
