//! Resync (target-driven: the sync target requests bitmap-marked ranges, optionally
//! with a checksum of its own copy so that the source can skip equal blocks) and
//! online verify (the verify source sends checksums, the target compares).

use super::*;

/// Bits per verify request.
const VERIFY_BITS_PER_REQ: u64 = 32;

/// Resync progress between two bitmap write-outs.
pub(super) const RESYNC_PERSIST_BYTES: u64 = 8 << 20;

impl Replica {
    fn range_of(&self, bit: u64, bits: u64) -> (u64, u64) {
        let off = bit * BYTES_PER_BIT;
        let len = (bits * BYTES_PER_BIT).min(self.size_bytes.saturating_sub(off));
        (off, len)
    }

    pub(super) fn pump_resync(&mut self) {
        let now = self.now_ms;
        let rate = self.resync_rate_now();
        let max_inflight = self.cfg.resync_requests_max.max(1) as usize;
        let max_bits = (u64::from(self.cfg.resync_request_bytes_max) / BYTES_PER_BIT).max(1);
        let csums = self.cfg.csums;
        let Some(link) = self.link_id() else { return };
        let mut finished = false;
        let mut failed = None;
        // Bounded: each iteration issues a request, wraps once, or stops.
        let mut wrapped = false;
        loop {
            let Some(rt) = self.link.as_mut().and_then(|l| l.resync_target.as_mut()) else {
                return;
            };
            if rt.waiting_handler || rt.inflight.len() >= max_inflight {
                break;
            }
            if rate > 0 {
                let dt = now.saturating_sub(rt.refill_ms);
                rt.tokens_bytes =
                    (rt.tokens_bytes + rate as f64 * dt as f64 / 1000.0).min(rate as f64);
                rt.refill_ms = now;
            }
            let from = rt.next_bit;
            let next = self.bitmap.next_set(from);
            let Some(bit) = next else {
                let Some(rt) = self.link.as_mut().and_then(|l| l.resync_target.as_mut()) else {
                    return;
                };
                if !rt.inflight.is_empty() {
                    break;
                }
                if self.bitmap.weight() == 0 {
                    finished = true;
                } else if rt.failed_bits > 0 || wrapped {
                    failed = Some(rt.failed_bits);
                } else {
                    rt.next_bit = 0;
                    wrapped = true;
                    continue;
                }
                break;
            };
            let run = self.bitmap.run_len(bit, max_bits);
            let (offset, len) = self.range_of(bit, run);
            if len == 0 {
                // A stray bit beyond the end of the data.
                self.bitmap.clear_bits(bit, run);
                continue;
            }
            let Some(rt) = self.link.as_mut().and_then(|l| l.resync_target.as_mut()) else {
                return;
            };
            if rate > 0 {
                // A request larger than the bucket may go out only when nothing is in
                // flight and no debt is left; the debt it leaves is paid off by the
                // refill before the next one (ticks come every 10 ms while capped).
                if rt.tokens_bytes < len as f64
                    && (rt.tokens_bytes < 0.0 || !rt.inflight.is_empty())
                {
                    break;
                }
                rt.tokens_bytes -= len as f64;
            }
            let req = rt.next_req;
            rt.next_req += 1;
            rt.inflight.insert(req, (bit, run));
            rt.next_bit = bit + run;
            let len32 = u32::try_from(len).unwrap_or(u32::MAX);
            if csums {
                let token = self.token();
                let op = RangeOp::CsumRead {
                    link,
                    req,
                    offset,
                    len: len32,
                };
                if let Some(op) = self.ranges.submit(token, offset, len, op) {
                    self.start_op(token, op);
                }
            } else {
                self.send(Message::RsRequest {
                    id: req,
                    offset_bytes: offset,
                    len_bytes: len32,
                    digest: None,
                });
            }
        }
        if finished {
            self.finish_sync_target();
        } else if let Some(bits) = failed {
            self.lose_link(
                format!("resync incomplete: {bits} blocks could not be read on the source"),
                false,
            );
        }
    }

    fn finish_sync_target(&mut self) {
        if let Some(l) = self.link.as_mut() {
            l.resync_target = None;
        }
        // Durable first (the bitmap persist flushes the resynced data), then tell the
        // source it may forget its bits.
        self.crashed_primary = false;
        self.disk = DiskState::UpToDate;
        self.persist_bitmap_dirty();
        self.persist_state(false);
        self.send(Message::RsDone);
        self.set_conn(ConnState::Connected);
        self.state_event();
        let (role, disk) = (self.role, self.disk);
        self.send(Message::State { role, disk });
        self.emit(Action::Event(Event::ResyncFinished { source: false }));
        self.emit(Action::RunHandler(Handler::AfterResyncTarget));
    }

    pub(super) fn on_rs_request(
        &mut self,
        id: u64,
        offset: u64,
        len: u32,
        digest: Option<u32>,
    ) -> Result<(), String> {
        if !matches!(
            self.conn,
            ConnState::SyncSource | ConnState::PausedSyncSource
        ) {
            return Err("resync request while not sync source".into());
        }
        if len == 0
            || len > self.cfg.resync_request_bytes_max.max(4096)
            || !offset.is_multiple_of(BYTES_PER_BIT)
            || offset
                .checked_add(u64::from(len))
                .is_none_or(|e| e > self.size_bytes)
        {
            return Err(format!("bad resync request {offset}+{len}"));
        }
        if matches!(self.disk, DiskState::Diskless | DiskState::Inconsistent) {
            self.send(Message::RsNegAck { id });
            return Ok(());
        }
        let Some(link) = self.link_id() else {
            return Ok(());
        };
        let token = self.token();
        let op = RangeOp::ResyncRead {
            link,
            req: id,
            offset,
            len,
            digest,
        };
        if let Some(op) = self.ranges.submit(token, offset, u64::from(len), op) {
            self.start_op(token, op);
        }
        Ok(())
    }

    pub(super) fn resync_read_done(
        &mut self,
        req: u64,
        offset: u64,
        digest: Option<u32>,
        data: Option<Bytes>,
    ) {
        let Some(data) = data else {
            self.send(Message::RsNegAck { id: req });
            return;
        };
        let len = data.len() as u64;
        let same = digest.is_some_and(|d| d == crc32c::crc32c(&data));
        if let Some(p) = self.link.as_mut().and_then(|l| l.resync_source.as_mut()) {
            p.done_bits += len.div_ceil(BYTES_PER_BIT);
            if !same {
                p.bytes += len;
            }
        }
        // The target keeps this range marked until the data is durable there, so the
        // source may forget it now: an interrupted resync resumes where it was instead
        // of starting over.
        self.bitmap.clear_range_bytes(offset, len);
        self.note_resync_progress(len);
        if same {
            self.counters.resync_skipped_bytes += len;
            self.send(Message::RsInSync { id: req });
        } else {
            self.counters.resync_sent_bytes += len;
            self.send(Message::RsData {
                id: req,
                offset_bytes: offset,
                data,
            });
        }
    }

    pub(super) fn on_rs_data(&mut self, id: u64, offset: u64, data: Bytes) -> Result<(), String> {
        let Some(link) = self.link_id() else {
            return Ok(());
        };
        let expect = self
            .link
            .as_ref()
            .and_then(|l| l.resync_target.as_ref())
            .and_then(|rt| rt.inflight.get(&id).copied());
        let Some((bit, bits)) = expect else {
            return Err(format!("resync data for unknown request {id}"));
        };
        let (o, l) = self.range_of(bit, bits);
        if o != offset || l != data.len() as u64 {
            return Err(format!(
                "resync data {offset}+{} does not match the request",
                data.len()
            ));
        }
        self.counters.resync_received_bytes += l;
        let token = self.token();
        let op = RangeOp::ResyncWrite {
            link,
            req: id,
            offset,
            data,
        };
        if let Some(op) = self.ranges.submit(token, offset, l, op) {
            self.start_op(token, op);
        }
        Ok(())
    }

    pub(super) fn resync_reply_done(&mut self, req: u64, ok: bool, len: u64) {
        let mut done_bytes = 0;
        if let Some(rt) = self.link.as_mut().and_then(|l| l.resync_target.as_mut()) {
            if let Some((_, bits)) = rt.inflight.remove(&req) {
                if ok {
                    rt.progress.done_bits += bits;
                    rt.progress.bytes += len;
                    done_bytes = bits * BYTES_PER_BIT;
                } else {
                    rt.failed_bits += bits;
                }
            }
        }
        self.note_resync_progress(done_bytes);
        self.pump_resync();
    }

    /// Persist the bitmap every [`RESYNC_PERSIST_BYTES`] of resync progress (the
    /// bitmap persist flushes the resynced data first), so that a crash of either
    /// node resumes the resync from there.
    fn note_resync_progress(&mut self, bytes: u64) {
        self.resync_unpersisted_bytes += bytes;
        if self.resync_unpersisted_bytes >= RESYNC_PERSIST_BYTES {
            self.resync_unpersisted_bytes = 0;
            self.persist_bitmap_dirty();
        }
    }

    pub(super) fn on_rs_in_sync(&mut self, id: u64) -> Result<(), String> {
        let got = self
            .link
            .as_ref()
            .and_then(|l| l.resync_target.as_ref())
            .and_then(|rt| rt.inflight.get(&id).copied());
        let Some((bit, bits)) = got else {
            return Err(format!("in-sync reply for unknown request {id}"));
        };
        let (o, l) = self.range_of(bit, bits);
        self.bitmap.clear_range_bytes(o, l);
        self.counters.resync_skipped_bytes += l;
        self.resync_reply_done(id, true, 0);
        Ok(())
    }

    pub(super) fn on_rs_neg_ack(&mut self, id: u64) -> Result<(), String> {
        self.resync_reply_done(id, false, 0);
        Ok(())
    }

    pub(super) fn on_rs_done(&mut self) -> Result<(), String> {
        if !matches!(
            self.conn,
            ConnState::SyncSource | ConnState::PausedSyncSource
        ) {
            return Err("resync done while not sync source".into());
        }
        if let Some(l) = self.link.as_mut() {
            l.resync_source = None;
            l.peer_disk = DiskState::UpToDate;
        }
        self.in_sync_with_peer();
        self.set_conn(ConnState::Connected);
        self.emit(Action::Event(Event::ResyncFinished { source: true }));
        Ok(())
    }

    // ----------------------------------------------------------------- verify

    pub(super) fn start_verify(&mut self) -> Result<(), AdminError> {
        let ok = self.conn == ConnState::Connected
            && self.disk == DiskState::UpToDate
            && self.link.as_ref().is_some_and(|l| {
                l.phase == Phase::Established && l.peer_disk == DiskState::UpToDate
            });
        if !ok {
            return Err(AdminError(
                "verify needs a Connected peer and UpToDate disks on both nodes".into(),
            ));
        }
        let total = self.bitmap.len_bits();
        let now = self.now_ms;
        if let Some(l) = self.link.as_mut() {
            l.verify = Some(Verify {
                next_bit: 0,
                inflight: 0,
                next_req: 1,
                out_of_sync: 0,
                progress: SyncProgress {
                    total_bits: total,
                    ..SyncProgress::default()
                },
                started_ms: now,
            });
        }
        self.set_conn(ConnState::VerifySource);
        self.pump_verify();
        Ok(())
    }

    pub(super) fn pump_verify(&mut self) {
        let Some(link) = self.link_id() else { return };
        let max = self.cfg.resync_requests_max.max(1);
        let total = self.bitmap.len_bits();
        loop {
            let Some(v) = self.link.as_mut().and_then(|l| l.verify.as_mut()) else {
                return;
            };
            if v.inflight >= max {
                return;
            }
            if v.next_bit >= total {
                if v.inflight == 0 {
                    let oos = v.out_of_sync;
                    if let Some(l) = self.link.as_mut() {
                        l.verify = None;
                    }
                    self.send(Message::OvDone);
                    self.set_conn(ConnState::Connected);
                    self.persist_bitmap_dirty();
                    self.emit(Action::Event(Event::VerifyFinished {
                        out_of_sync_bits: oos,
                    }));
                    if oos > 0 {
                        self.emit(Action::RunHandler(Handler::OutOfSync));
                    }
                }
                return;
            }
            let bit = v.next_bit;
            let bits = VERIFY_BITS_PER_REQ.min(total - bit);
            v.next_bit += bits;
            v.inflight += 1;
            let req = v.next_req;
            v.next_req += 1;
            let (offset, len) = self.range_of(bit, bits);
            let token = self.token();
            let op = RangeOp::VerifyRead {
                link,
                req,
                offset,
                len: u32::try_from(len).unwrap_or(u32::MAX),
                source: true,
            };
            if let Some(op) = self.ranges.submit(token, offset, len, op) {
                self.start_op(token, op);
            }
        }
    }

    pub(super) fn verify_read_done(
        &mut self,
        req: u64,
        offset: u64,
        len: u32,
        source: bool,
        data: Option<Bytes>,
    ) {
        if source {
            match data {
                Some(d) => {
                    let digest = crc32c::crc32c(&d);
                    self.send(Message::OvRequest {
                        id: req,
                        offset_bytes: offset,
                        len_bytes: len,
                        digest,
                    });
                }
                None => {
                    // Unreadable here: count it as out of sync without asking.
                    self.bitmap.set_range_bytes(offset, u64::from(len));
                    if let Some(v) = self.link.as_mut().and_then(|l| l.verify.as_mut()) {
                        v.inflight = v.inflight.saturating_sub(1);
                        v.out_of_sync += u64::from(len).div_ceil(BYTES_PER_BIT);
                        v.progress.done_bits += VERIFY_BITS_PER_REQ;
                    }
                    self.pump_verify();
                }
            }
        } else {
            let Some(peer_digest) = self.link.as_mut().and_then(|l| l.ov_pending.remove(&req))
            else {
                return;
            };
            let in_sync = data.is_some_and(|d| crc32c::crc32c(&d) == peer_digest);
            if !in_sync {
                self.bitmap.set_range_bytes(offset, u64::from(len));
                if let Some(l) = self.link.as_mut() {
                    l.verify_target_out_of_sync += u64::from(len).div_ceil(BYTES_PER_BIT);
                }
            }
            self.send(Message::OvReply { id: req, in_sync });
        }
    }

    pub(super) fn on_ov_request(
        &mut self,
        id: u64,
        offset: u64,
        len: u32,
        digest: u32,
    ) -> Result<(), String> {
        if len == 0
            || offset
                .checked_add(u64::from(len))
                .is_none_or(|e| e > self.size_bytes)
            || u64::from(len) > VERIFY_BITS_PER_REQ * BYTES_PER_BIT
        {
            return Err(format!("bad verify request {offset}+{len}"));
        }
        if self.conn == ConnState::Connected {
            self.set_conn(ConnState::VerifyTarget);
        }
        let Some(link) = self.link_id() else {
            return Ok(());
        };
        if let Some(l) = self.link.as_mut() {
            if l.ov_pending.len() >= 4096 {
                return Err("too many verify requests in flight".into());
            }
            l.ov_pending.insert(id, digest);
        }
        let token = self.token();
        let op = RangeOp::VerifyRead {
            link,
            req: id,
            offset,
            len,
            source: false,
        };
        if let Some(op) = self.ranges.submit(token, offset, u64::from(len), op) {
            self.start_op(token, op);
        }
        Ok(())
    }

    pub(super) fn on_ov_reply(&mut self, id: u64, in_sync: bool) -> Result<(), String> {
        let Some(v) = self.link.as_mut().and_then(|l| l.verify.as_mut()) else {
            return Err("verify reply without a verify running".into());
        };
        v.inflight = v.inflight.saturating_sub(1);
        v.progress.done_bits += VERIFY_BITS_PER_REQ;
        let bit = (id - 1) * VERIFY_BITS_PER_REQ;
        if !in_sync {
            let total = self.bitmap.len_bits();
            let bits = VERIFY_BITS_PER_REQ.min(total.saturating_sub(bit));
            v.out_of_sync += bits;
            self.bitmap.set_bits(bit, bits);
        }
        self.pump_verify();
        Ok(())
    }
}
