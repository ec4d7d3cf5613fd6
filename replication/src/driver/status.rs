//! [`DriverStatus`]: what `twinsan repl status` shows, as text and as JSON.

use std::fmt::Write as _;
use std::net::SocketAddr;

use crate::replica::Status;
use crate::types::{Protocol, BYTES_PER_BIT};

/// The live connection, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// The peer's socket address of this connection.
    pub peer: SocketAddr,
    /// The driver's connection id.
    pub conn: u64,
    /// When it was authenticated (ms since the UNIX epoch).
    pub since_ms: u64,
    /// Bytes waiting in the send queue.
    pub send_queue_bytes: u64,
}

/// One handler run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerRun {
    /// Handler name (`split-brain`, `fence-peer`, ...).
    pub handler: String,
    /// Exit code (-1: killed, timed out or could not start; 0 when not configured).
    pub exit_code: i32,
    /// Whether a command was configured (otherwise exit code 0 at once).
    pub configured: bool,
    /// When it finished (ms since the UNIX epoch).
    pub at_ms: u64,
}

/// Status of one replicated volume on this node.
#[derive(Debug, Clone, PartialEq)]
pub struct DriverStatus {
    /// Volume name.
    pub name: String,
    /// This node's id.
    pub node_id: u8,
    /// The peer's node id.
    pub peer_node_id: u8,
    /// Replication protocol.
    pub protocol: Protocol,
    /// Usable size in bytes.
    pub size_bytes: u64,
    /// This node's replication address.
    pub address: SocketAddr,
    /// The configured peer address.
    pub peer_address: SocketAddr,
    /// The replica's own status.
    pub replica: Status,
    /// The live connection.
    pub connection: Option<ConnectionInfo>,
    /// The last reason a connection attempt or an incoming connection failed before
    /// the replica saw it (TCP connect error, authentication failure...).
    pub last_connect_error: Option<String>,
    /// When that happened (ms since the UNIX epoch).
    pub last_connect_error_ms: Option<u64>,
    /// The most recent handler runs, oldest first.
    pub handlers: Vec<HandlerRun>,
    /// A metadata write failed (application writes are refused since).
    pub meta_error: Option<String>,
}

/// JSON string literal.
fn js(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            '\t' => o.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn opt_js(s: Option<&str>) -> String {
    s.map_or_else(|| "null".to_string(), js)
}

fn hex(u: u64) -> String {
    js(&format!("{u:016X}"))
}

impl DriverStatus {
    /// Resync/verify progress: (percent, done bytes, total bytes, rate, eta seconds).
    fn sync_fields(&self) -> Option<(f64, u64, u64, u64, Option<u64>)> {
        self.replica.sync.map(|p| {
            (
                p.percent(),
                p.done_bits * BYTES_PER_BIT,
                p.total_bits * BYTES_PER_BIT,
                p.rate_bytes_per_s(),
                p.eta_s(),
            )
        })
    }

    /// One line: `name=... role=... disk=... conn=... peer=...`.
    pub fn summary(&self) -> String {
        let r = &self.replica;
        let mut s = format!(
            "name={} role={} disk={} conn={} peer_role={} peer_disk={} out_of_sync_bytes={}",
            self.name,
            r.role,
            r.disk,
            r.conn,
            r.peer_role.map_or("-".to_string(), |x| x.to_string()),
            r.peer_disk.map_or("-".to_string(), |x| x.to_string()),
            r.out_of_sync_bytes,
        );
        if let Some((pct, done, total, rate, eta)) = self.sync_fields() {
            let _ = write!(
                s,
                " sync={pct:.1}% ({done}/{total} bytes, {rate} bytes/s, eta {})",
                eta.map_or("-".to_string(), |e| format!("{e}s"))
            );
        }
        if r.split_brain {
            s.push_str(" split_brain=yes");
        }
        if r.io_frozen {
            s.push_str(" io_frozen=yes");
        }
        if let Some(c) = &self.connection {
            let _ = write!(s, " peer={}", c.peer);
        } else if let Some(e) = &self.last_connect_error {
            let _ = write!(s, " last_connect_error={e:?}");
        }
        if let Some(d) = &r.last_disconnect {
            let _ = write!(s, " last_disconnect={d:?}");
        }
        if let Some(e) = &self.meta_error {
            let _ = write!(s, " meta_error={e:?}");
        }
        s
    }

    /// One JSON object (keys documented in the README, "Replication").
    pub fn to_json(&self) -> String {
        let r = &self.replica;
        let mut o = String::with_capacity(1024);
        o.push('{');
        let _ = write!(o, "\"name\":{}", js(&self.name));
        let _ = write!(o, ",\"node_id\":{}", self.node_id);
        let _ = write!(o, ",\"peer_node_id\":{}", self.peer_node_id);
        let _ = write!(o, ",\"protocol\":{}", js(&self.protocol.to_string()));
        let _ = write!(o, ",\"size_bytes\":{}", self.size_bytes);
        let _ = write!(o, ",\"role\":{}", js(&r.role.to_string()));
        let _ = write!(o, ",\"disk\":{}", js(&r.disk.to_string()));
        let _ = write!(o, ",\"connection\":{}", js(&r.conn.to_string()));
        let _ = write!(
            o,
            ",\"peer_role\":{}",
            opt_js(r.peer_role.map(|x| x.to_string()).as_deref())
        );
        let _ = write!(
            o,
            ",\"peer_disk\":{}",
            opt_js(r.peer_disk.map(|x| x.to_string()).as_deref())
        );
        let _ = write!(o, ",\"address\":{}", js(&self.address.to_string()));
        let _ = write!(
            o,
            ",\"peer_address\":{}",
            js(&self.peer_address.to_string())
        );
        match &self.connection {
            Some(c) => {
                let _ = write!(
                    o,
                    ",\"link\":{{\"peer\":{},\"since_ms\":{},\"send_queue_bytes\":{}}}",
                    js(&c.peer.to_string()),
                    c.since_ms,
                    c.send_queue_bytes
                );
            }
            None => o.push_str(",\"link\":null"),
        }
        let _ = write!(o, ",\"out_of_sync_bytes\":{}", r.out_of_sync_bytes);
        match self.sync_fields() {
            Some((pct, done, total, rate, eta)) => {
                let _ = write!(
                    o,
                    ",\"sync\":{{\"percent\":{pct:.1},\"done_bytes\":{done},\"total_bytes\":{total},\"rate_bytes_per_s\":{rate},\"eta_s\":{}}}",
                    eta.map_or("null".to_string(), |e| e.to_string())
                );
            }
            None => o.push_str(",\"sync\":null"),
        }
        let hist: Vec<String> = r.gens.history.iter().map(|h| hex(*h)).collect();
        let _ = write!(
            o,
            ",\"generations\":{{\"current\":{},\"bitmap\":{},\"history\":[{}]}}",
            hex(r.gens.current),
            hex(r.gens.bitmap),
            hist.join(",")
        );
        let _ = write!(o, ",\"split_brain\":{}", r.split_brain);
        let _ = write!(o, ",\"io_frozen\":{}", r.io_frozen);
        let _ = write!(
            o,
            ",\"last_disconnect\":{}",
            opt_js(r.last_disconnect.as_deref())
        );
        let _ = write!(
            o,
            ",\"last_connect_error\":{}",
            opt_js(self.last_connect_error.as_deref())
        );
        let _ = write!(
            o,
            ",\"last_connect_error_ms\":{}",
            self.last_connect_error_ms
                .map_or("null".to_string(), |t| t.to_string())
        );
        let _ = write!(o, ",\"meta_error\":{}", opt_js(self.meta_error.as_deref()));
        let handlers: Vec<String> = self
            .handlers
            .iter()
            .map(|h| {
                format!(
                    "{{\"handler\":{},\"exit_code\":{},\"configured\":{},\"at_ms\":{}}}",
                    js(&h.handler),
                    h.exit_code,
                    h.configured,
                    h.at_ms
                )
            })
            .collect();
        let _ = write!(o, ",\"handlers\":[{}]", handlers.join(","));
        let c = &r.counters;
        let _ = write!(
            o,
            ",\"counters\":{{\"data_sent_bytes\":{},\"data_received_bytes\":{},\"resync_sent_bytes\":{},\"resync_received_bytes\":{},\"resync_skipped_bytes\":{},\"write_conflicts\":{},\"split_brains\":{}}}",
            c.data_sent_bytes,
            c.data_received_bytes,
            c.resync_sent_bytes,
            c.resync_received_bytes,
            c.resync_skipped_bytes,
            c.write_conflicts,
            c.split_brains
        );
        o.push('}');
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(js("a\"b\\c\nd\u{1}"), "\"a\\\"b\\\\c\\nd\\u0001\"");
        assert_eq!(opt_js(None), "null");
    }
}
