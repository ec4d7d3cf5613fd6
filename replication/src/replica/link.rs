//! The replication link: handshake (Hello, plan cross-check, bitmap exchange),
//! messages in the established phase, and what losing the link means.

use super::*;

impl Replica {
    pub(super) fn link_up(&mut self, conn: u64) {
        if self.link.is_some() {
            self.lose_link("replaced by a new connection".into(), false);
        }
        if !self.want_connection {
            self.emit(Action::Close { conn });
            return;
        }
        let id = self.next_link_id;
        self.next_link_id += 1;
        self.link = Some(Link {
            conn,
            id,
            phase: Phase::Hello,
            opened_ms: self.now_ms,
            peer: None,
            my_plan: None,
            peer_plan: None,
            bitmap_sent: false,
            bitmap_received: false,
            peer_role: Role::Secondary,
            peer_disk: DiskState::Diskless,
            next_seq: 1,
            peer_seq_received: 0,
            unacked: BTreeMap::new(),
            epoch: VecDeque::new(),
            epoch_base: 0,
            flushes: HashMap::new(),
            next_flush: 1,
            last_rx_ms: self.now_ms,
            ping_sent_ms: None,
            peer_flush_wait: Vec::new(),
            resync_target: None,
            resync_source: None,
            resync_source_started_ms: 0,
            verify: None,
            verify_target_out_of_sync: 0,
            ov_pending: HashMap::new(),
        });
        let h = self.hello();
        self.send(Message::Hello(h));
    }

    /// Drop the link. `by_admin`: the operator asked (stay StandAlone).
    pub(super) fn lose_link(&mut self, reason: String, by_admin: bool) {
        let Some(mut l) = self.link.take() else {
            return;
        };
        self.emit(Action::Close { conn: l.conn });
        let was_established = l.phase == Phase::Established;
        let peer_was_usable = matches!(l.peer_disk, DiskState::UpToDate | DiskState::Consistent);
        let fence = was_established
            && self.role == Role::Primary
            && peer_was_usable
            && self.cfg.fencing != Fencing::DontCare
            && !by_admin;
        // Under resource-and-stonith nothing the peer has not confirmed is acknowledged
        // until the peer is known fenced (DRBD suspends I/O the same way).
        let freeze = fence && self.cfg.fencing == Fencing::ResourceAndStonith;
        // Writes the peer has not acknowledged, and acknowledged ones it has not yet
        // flushed, may be missing there: mark them out of sync.
        let unacked = std::mem::take(&mut l.unacked);
        // Completing an application write the peer may not have makes this node's data
        // newer than the peer's: start a new generation first (persisted before any
        // of those completions), as for the first write without the peer, so that the
        // next handshake syncs from here and never the other way.
        if !freeze
            && self.role == Role::Primary
            && self.disk == DiskState::UpToDate
            && !self.rotated
            && unacked.values().any(|u| u.app.is_some())
        {
            self.rotate_generation();
        }
        for (_, u) in unacked {
            self.bitmap.set_range_bytes(u.offset, u.data.len() as u64);
            self.hot.release(u.extents.0, u.extents.1);
            if let Some(app) = u.app {
                if freeze {
                    self.frozen_peer_parts.push((false, app));
                } else {
                    self.peer_part_done(app);
                }
            }
        }
        for (off, len) in l.epoch.drain(..) {
            self.bitmap.set_range_bytes(off, len);
        }
        for (_, (app, _)) in l.flushes.drain() {
            if let Some(app) = app {
                if freeze {
                    self.frozen_peer_parts.push((true, app));
                } else {
                    self.peer_flush_done(app);
                }
            }
        }
        let link = l.id;
        let dropped = self.ranges.cancel_waiting(|op| match op {
            RangeOp::PeerWrite { link: x, .. }
            | RangeOp::ResyncWrite { link: x, .. }
            | RangeOp::ResyncRead { link: x, .. }
            | RangeOp::CsumRead { link: x, .. }
            | RangeOp::VerifyRead { link: x, .. } => *x == link,
            RangeOp::AppWrite { .. } => false,
        });
        for (_, op) in dropped {
            if let RangeOp::PeerWrite {
                offset,
                data,
                extents,
                ..
            } = op
            {
                // Not applied here: the sender marks it; mark it here too so that a
                // resync in either direction covers it.
                self.bitmap.set_range_bytes(offset, data.len() as u64);
                self.hot.release(extents.0, extents.1);
            }
        }
        self.persist_bitmap_dirty();
        self.last_disconnect = Some(reason.clone());
        self.emit(Action::Event(Event::Disconnected { reason }));
        let next = if by_admin || !self.want_connection {
            ConnState::StandAlone
        } else {
            ConnState::Connecting
        };
        if self.conn != ConnState::SplitBrain {
            self.set_conn(next);
        }
        if fence {
            if freeze && !self.frozen {
                self.frozen = true;
                self.emit(Action::Event(Event::IoFrozen { frozen: true }));
            }
            self.emit(Action::RunHandler(Handler::FencePeer));
        }
        // Started operations of the dead link still complete; their results are ignored.
        self.run_peer_flushes();
        self.release_held();
    }

    pub(super) fn on_message(&mut self, msg: Message) -> Result<(), String> {
        let phase = match &self.link {
            Some(l) => match l.phase {
                Phase::Hello => 0,
                Phase::Plan => 1,
                Phase::Bitmaps => 2,
                Phase::Established => 3,
            },
            None => return Ok(()),
        };
        if let Message::Goodbye { reason } = msg {
            self.lose_link(format!("peer said goodbye: {reason}"), false);
            return Ok(());
        }
        match (phase, msg) {
            (0, Message::Hello(h)) => self.on_hello(h),
            (1, Message::Plan(code)) => self.on_plan(code),
            (
                2,
                Message::Bitmap {
                    first_word,
                    words,
                    last,
                },
            ) => {
                let max_words = self.bitmap.words().len() as u64;
                if first_word.saturating_add(words.len() as u64) > max_words {
                    return Err("bitmap chunk beyond the device".into());
                }
                self.bitmap.merge_words(first_word, &words);
                if last {
                    if let Some(l) = self.link.as_mut() {
                        l.bitmap_received = true;
                    }
                    self.maybe_finish_bitmaps();
                }
                Ok(())
            }
            (3, m) => self.on_established(m),
            (_, m) => Err(format!("unexpected {} during the handshake", m.kind())),
        }
    }

    fn on_hello(&mut self, h: Hello) -> Result<(), String> {
        if h.protocol_version != PROTOCOL_VERSION {
            return self.refuse_hello(format!(
                "peer speaks protocol version {}, this node {}",
                h.protocol_version, PROTOCOL_VERSION
            ));
        }
        if h.node_id != self.cfg.peer_node_id {
            return self.refuse_hello(format!(
                "peer says it is node {}, expected node {}",
                h.node_id, self.cfg.peer_node_id
            ));
        }
        if h.volume_uuid != self.cfg.volume_uuid {
            return self.refuse_hello("peer replicates a different volume (uuid mismatch)".into());
        }
        if h.protocol != self.cfg.protocol {
            return self.refuse_hello(format!(
                "protocol mismatch: peer {}, this node {}",
                h.protocol, self.cfg.protocol
            ));
        }
        let peer_two = h.flags & hello_flag::ALLOW_TWO_PRIMARIES != 0;
        if peer_two != self.cfg.policies.allow_two_primaries {
            return self.refuse_hello("allow-two-primaries differs between the nodes".into());
        }
        if h.size_bytes != self.size_bytes {
            return self.refuse_hello(format!(
                "size mismatch: peer {} bytes, this node {} bytes (resize both first)",
                h.size_bytes, self.size_bytes
            ));
        }
        let peer = NodeView {
            node_id: h.node_id,
            node_name: h.node_name.clone(),
            role: h.role,
            disk: h.disk,
            gens: h.gens,
            crashed_primary: h.flags & hello_flag::CRASHED_PRIMARY != 0,
            discard_my_data: h.flags & hello_flag::DISCARD_MY_DATA != 0,
            bitmap_weight_bits: h.bitmap_weight_bits,
            primary_since_ms: h.primary_since_ms,
        };
        let plan = gens::plan(&self.my_view(), &peer, &self.cfg.policies);
        let code = plan.code();
        if let Some(l) = self.link.as_mut() {
            l.peer_role = h.role;
            l.peer_disk = h.disk;
            l.peer = Some(h);
            l.my_plan = Some(plan);
            l.phase = Phase::Plan;
        }
        self.send(Message::Plan(code));
        Ok(())
    }

    fn refuse_hello(&mut self, reason: String) -> Result<(), String> {
        self.send(Message::Goodbye {
            reason: reason.clone(),
        });
        self.want_connection = false;
        self.emit(Action::WantConnection(false));
        self.lose_link(format!("refused: {reason}"), true);
        Ok(())
    }

    fn on_plan(&mut self, code: PlanCode) -> Result<(), String> {
        let Some(l) = self.link.as_mut() else {
            return Ok(());
        };
        let Some(plan) = l.my_plan.clone() else {
            return Err("plan before hello".into());
        };
        l.peer_plan = Some(code);
        if plan.code() != code {
            return Err(format!(
                "the nodes disagree on the handshake (this node {:?}, peer {:?}); check that \
                 both have the same policies",
                plan.code(),
                code
            ));
        }
        self.execute_plan(plan);
        Ok(())
    }

    fn execute_plan(&mut self, plan: Plan) {
        self.execute_plan_inner(plan);
        self.release_held();
    }

    fn execute_plan_inner(&mut self, plan: Plan) {
        let me = self.cfg.node_id;
        self.emit(Action::Event(Event::Handshake {
            plan: format!("{plan:?}"),
        }));
        match plan {
            Plan::NoSync { rule } => {
                let peer_disk = self
                    .link
                    .as_ref()
                    .map_or(DiskState::Diskless, |l| l.peer_disk);
                let consistent =
                    |d: DiskState| matches!(d, DiskState::UpToDate | DiskState::Consistent);
                let both_usable = matches!(
                    self.disk,
                    DiskState::UpToDate | DiskState::Consistent | DiskState::Outdated
                ) && matches!(
                    peer_disk,
                    DiskState::UpToDate | DiskState::Consistent | DiskState::Outdated
                );
                if let Some(l) = self.link.as_mut() {
                    l.phase = Phase::Established;
                }
                if rule == gens::Rule::Equal
                    && both_usable
                    && (consistent(self.disk) || consistent(peer_disk))
                {
                    if let Some(l) = self.link.as_mut() {
                        l.peer_disk = DiskState::UpToDate;
                    }
                    self.in_sync_with_peer();
                    self.set_disk(DiskState::UpToDate);
                }
                self.set_conn(ConnState::Connected);
            }
            Plan::Sync {
                source,
                full,
                split_brain_policy,
                call_pri_lost_on,
                ..
            } => {
                if let Some(policy) = split_brain_policy {
                    self.counters.split_brains += 1;
                    let victim = if source == me {
                        self.cfg.peer_node_id
                    } else {
                        me
                    };
                    self.emit(Action::Event(Event::SplitBrain {
                        resolved_by: Some(policy.to_string()),
                        victim: Some(victim),
                    }));
                    self.emit(Action::RunHandler(Handler::SplitBrain));
                }
                if call_pri_lost_on == Some(me) {
                    self.emit(Action::RunHandler(Handler::PriLostAfterSb));
                }
                if full {
                    if source == me {
                        self.begin_sync_source(true);
                    } else {
                        self.begin_sync_target(true);
                    }
                } else {
                    if let Some(l) = self.link.as_mut() {
                        l.phase = Phase::Bitmaps;
                    }
                    self.send_bitmap();
                    self.maybe_finish_bitmaps();
                }
            }
            Plan::SplitBrainDisconnect { reason } => {
                self.counters.split_brains += 1;
                self.split_brain = true;
                self.emit(Action::Event(Event::SplitBrain {
                    resolved_by: None,
                    victim: None,
                }));
                self.emit(Action::RunHandler(Handler::SplitBrain));
                self.send(Message::Goodbye {
                    reason: reason.clone(),
                });
                self.want_connection = false;
                self.emit(Action::WantConnection(false));
                self.lose_link(reason, true);
                self.set_conn(ConnState::SplitBrain);
            }
            Plan::Refuse {
                reason,
                retry,
                call_pri_lost_on,
            } => {
                if call_pri_lost_on == Some(me) {
                    self.emit(Action::RunHandler(Handler::PriLost));
                }
                self.send(Message::Goodbye {
                    reason: reason.clone(),
                });
                if !retry {
                    self.want_connection = false;
                    self.emit(Action::WantConnection(false));
                }
                self.lose_link(format!("refused: {reason}"), !retry);
            }
        }
    }

    /// Both replicas hold the same data: the bitmap generation ends.
    pub(super) fn in_sync_with_peer(&mut self) {
        if self.gens.bitmap != 0 {
            let b = self.gens.bitmap;
            self.push_history(b);
            self.gens.bitmap = 0;
        }
        if self.bitmap.weight() > 0 {
            self.bitmap.clear_all();
            self.persist_bitmap_dirty();
        }
        self.crashed_primary = false;
        self.discard_my_data = false;
        self.rotated = false;
        self.split_brain = false;
        self.persist_state(false);
    }

    fn send_bitmap(&mut self) {
        let chunk = self.cfg.bitmap_chunk_words.max(1) as usize;
        let words = self.bitmap.words().to_vec();
        let n = words.len();
        let mut first = 0;
        loop {
            let end = (first + chunk).min(n);
            let last = end == n;
            self.send(Message::Bitmap {
                first_word: first as u64,
                words: words[first..end].to_vec(),
                last,
            });
            if last {
                break;
            }
            first = end;
        }
        if let Some(l) = self.link.as_mut() {
            l.bitmap_sent = true;
        }
    }

    fn maybe_finish_bitmaps(&mut self) {
        let Some(l) = self.link.as_ref() else { return };
        if l.phase != Phase::Bitmaps || !l.bitmap_sent || !l.bitmap_received {
            return;
        }
        let Some(Plan::Sync { source, .. }) = l.my_plan.clone() else {
            return;
        };
        if source == self.cfg.node_id {
            self.begin_sync_source(false);
        } else {
            self.begin_sync_target(false);
        }
        self.release_held();
    }

    pub(super) fn begin_sync_source(&mut self, full: bool) {
        if full {
            self.bitmap.set_all();
        }
        // From now on the bitmap means "possibly different on the peer, which has
        // adopted my current generation": it no longer tracks an older bitmap
        // generation. A disconnect during the resync then starts a new generation whose
        // bitmap UUID is the one the target adopted, and the next handshake resumes
        // from both bitmaps (rule Bitmap) instead of falling back to a full sync.
        if self.gens.bitmap != 0 {
            let b = self.gens.bitmap;
            self.push_history(b);
            self.gens.bitmap = 0;
            self.persist_state(false);
        }
        let total = self.bitmap.weight();
        let now = self.now_ms;
        let current = self.gens.current;
        if let Some(l) = self.link.as_mut() {
            // The target adopts this node's current generation now (see
            // `begin_sync_target`): its later writes carry it.
            if let Some(h) = l.peer.as_mut() {
                h.gens.current = current;
            }
            l.phase = Phase::Established;
            l.peer_disk = DiskState::Inconsistent;
            l.resync_source = Some(SyncProgress {
                total_bits: total,
                ..SyncProgress::default()
            });
            l.resync_source_started_ms = now;
        }
        self.rotated = false;
        self.persist_bitmap_dirty();
        self.set_conn(ConnState::SyncSource);
        self.emit(Action::Event(Event::ResyncStarted {
            source: true,
            bits: total,
            full,
        }));
    }

    pub(super) fn begin_sync_target(&mut self, full: bool) {
        if full {
            self.bitmap.set_all();
        }
        let peer_current = self
            .link
            .as_ref()
            .and_then(|l| l.peer.as_ref())
            .map(|h| h.gens.current)
            .unwrap_or(self.gens.current);
        // Adopt the source's generation now, Inconsistent: if the resync is interrupted,
        // the next handshake sees equal generations and resumes from the bitmap.
        if !uuid_eq(self.gens.current, peer_current) {
            let old = self.gens.current;
            self.push_history(old);
            if self.gens.bitmap != 0 {
                let b = self.gens.bitmap;
                self.push_history(b);
            }
            self.gens.current = peer_current;
            self.gens.bitmap = 0;
        }
        self.disk = DiskState::Inconsistent;
        self.rotated = false;
        self.discard_my_data = false;
        self.persist_bitmap_dirty();
        self.persist_state(false);
        let total = self.bitmap.weight();
        let now = self.now_ms;
        if let Some(l) = self.link.as_mut() {
            l.phase = Phase::Established;
            l.peer_disk = DiskState::UpToDate;
            l.resync_target = Some(ResyncTarget {
                next_bit: 0,
                inflight: HashMap::new(),
                next_req: 1,
                progress: SyncProgress {
                    total_bits: total,
                    ..SyncProgress::default()
                },
                started_ms: now,
                tokens_bytes: 0.0,
                refill_ms: now,
                waiting_handler: true,
                failed_bits: 0,
            });
        }
        self.set_conn(ConnState::SyncTarget);
        self.state_event();
        self.emit(Action::Event(Event::ResyncStarted {
            source: false,
            bits: total,
            full,
        }));
        let (role, disk) = (self.role, self.disk);
        self.send(Message::State { role, disk });
        self.emit(Action::RunHandler(Handler::BeforeResyncTarget));
    }

    fn on_established(&mut self, msg: Message) -> Result<(), String> {
        match msg {
            Message::Data {
                seq,
                peer_seq_seen,
                generation,
                offset_bytes,
                fua,
                data,
            } => self.on_peer_data(seq, peer_seq_seen, generation, offset_bytes, fua, data),
            Message::RecvAck { seq } => {
                let app = self
                    .link
                    .as_mut()
                    .and_then(|l| l.unacked.get_mut(&seq))
                    .and_then(|u| u.app.take());
                if let Some(app) = app {
                    self.peer_part_done(app);
                }
                Ok(())
            }
            Message::WriteAck { seq } | Message::NegAck { seq } => {
                let neg = matches!(msg, Message::NegAck { .. });
                let Some(l) = self.link.as_mut() else {
                    return Ok(());
                };
                let Some(u) = l.unacked.remove(&seq) else {
                    return Err(format!("ack for unknown write {seq}"));
                };
                let len = u.data.len() as u64;
                self.hot.release(u.extents.0, u.extents.1);
                if neg {
                    self.bitmap.set_range_bytes(u.offset, len);
                } else {
                    l.epoch.push_back((u.offset, len));
                }
                let epoch_full = l.epoch.len() >= self.cfg.epoch_writes_max as usize
                    && l.flushes.values().all(|(a, _)| a.is_some());
                if let Some(app) = u.app {
                    self.peer_part_done(app);
                }
                if epoch_full {
                    self.send_peer_flush(None);
                }
                Ok(())
            }
            Message::Flush { id } => {
                let barrier = self.next_token;
                self.next_token += 1;
                if let Some(l) = self.link.as_mut() {
                    l.peer_flush_wait.push((id, barrier));
                }
                self.run_peer_flushes();
                Ok(())
            }
            Message::FlushAck { id, ok } => {
                let Some(l) = self.link.as_mut() else {
                    return Ok(());
                };
                let Some((app, end)) = l.flushes.remove(&id) else {
                    return Err(format!("flush ack for unknown flush {id}"));
                };
                let mut failed = Vec::new();
                while l.epoch_base < end {
                    match l.epoch.pop_front() {
                        Some(r) => {
                            if !ok {
                                failed.push(r);
                            }
                        }
                        None => break,
                    }
                    l.epoch_base += 1;
                }
                for (o, n) in failed {
                    self.bitmap.set_range_bytes(o, n);
                }
                if let Some(app) = app {
                    self.peer_flush_done(app);
                }
                Ok(())
            }
            Message::State { role, disk } => {
                if role == Role::Primary
                    && self.role == Role::Primary
                    && !self.cfg.policies.allow_two_primaries
                {
                    return Err("peer became Primary while this node is Primary".into());
                }
                if let Some(l) = self.link.as_mut() {
                    l.peer_role = role;
                    l.peer_disk = disk;
                }
                Ok(())
            }
            Message::Outdate => {
                if self.role == Role::Secondary
                    && matches!(self.disk, DiskState::UpToDate | DiskState::Consistent)
                {
                    self.set_disk(DiskState::Outdated);
                }
                self.send(Message::OutdateAck);
                Ok(())
            }
            Message::OutdateAck | Message::PingAck => Ok(()),
            Message::Ping => {
                self.send(Message::PingAck);
                Ok(())
            }
            Message::RsRequest {
                id,
                offset_bytes,
                len_bytes,
                digest,
            } => self.on_rs_request(id, offset_bytes, len_bytes, digest),
            Message::RsData {
                id,
                offset_bytes,
                data,
            } => self.on_rs_data(id, offset_bytes, data),
            Message::RsInSync { id } => self.on_rs_in_sync(id),
            Message::RsNegAck { id } => self.on_rs_neg_ack(id),
            Message::RsDone => self.on_rs_done(),
            Message::OvRequest {
                id,
                offset_bytes,
                len_bytes,
                digest,
            } => self.on_ov_request(id, offset_bytes, len_bytes, digest),
            Message::OvReply { id, in_sync } => self.on_ov_reply(id, in_sync),
            Message::OvDone => {
                if self.conn == ConnState::VerifyTarget {
                    self.set_conn(ConnState::Connected);
                }
                Ok(())
            }
            m => Err(format!("unexpected {} after the handshake", m.kind())),
        }
    }

    fn on_peer_data(
        &mut self,
        seq: u64,
        peer_seq_seen: u64,
        generation: u64,
        offset: u64,
        fua: bool,
        data: Bytes,
    ) -> Result<(), String> {
        let len = data.len() as u64;
        let Some(l) = self.link.as_ref() else {
            return Ok(());
        };
        let expected = l.peer.as_ref().map_or(0, |h| h.gens.current);
        let last_seq = l.peer_seq_received;
        let link = l.id;
        if !uuid_eq(generation, expected) {
            return Err(format!(
                "write from generation {generation:016X}, expected {expected:016X} (stale \
                 generation refused)"
            ));
        }
        if seq <= last_seq {
            return Err(format!("write sequence {seq} repeated or out of order"));
        }
        if len == 0 || offset.checked_add(len).is_none_or(|e| e > self.size_bytes) {
            return Err(format!("write {offset}+{len} outside the device"));
        }
        if self.role == Role::Primary && !self.cfg.policies.allow_two_primaries {
            return Err("received a write while Primary without allow-two-primaries".into());
        }
        if self.cfg.protocol == Protocol::B {
            self.send(Message::RecvAck { seq });
        }
        if self.disk == DiskState::Diskless {
            self.bitmap.set_range_bytes(offset, len);
            self.send(Message::NegAck { seq });
            return Ok(());
        }
        let winner = self.cfg.node_id < self.cfg.peer_node_id;
        let mut data = data;
        if let (Role::Primary, Some(l)) = (self.role, self.link.as_ref()) {
            // Dual-primary: own writes the peer had not seen when it issued this one
            // are concurrent with it. Both nodes order them the same way: on the node
            // with the lower id its own data wins the overlap, on the other node the
            // peer's write (applied after its own) wins too.
            let mut merged: Option<Vec<u8>> = None;
            let mut conflicts = 0;
            // Own writes already sent that the peer had not seen, then own writes
            // ordered here but not started yet (they will be sent with an older
            // `peer_seq_seen`): later ones win per byte, as they will on disk.
            let sent = l
                .unacked
                .range(peer_seq_seen + 1..)
                .map(|(_, u)| (u.offset, &u.data));
            let queued = self.ranges.pending().filter_map(|op| match op {
                RangeOp::AppWrite { offset, data, .. } => Some((*offset, data)),
                _ => None,
            });
            for (uoff, udata) in sent.chain(queued) {
                let ulen = udata.len() as u64;
                if let Some((a, b)) = overlap(offset, len, uoff, ulen) {
                    conflicts += 1;
                    if winner {
                        let buf = merged.get_or_insert_with(|| data.to_vec());
                        let dst = (a - offset) as usize..(b - offset) as usize;
                        let src = (a - uoff) as usize..(b - uoff) as usize;
                        buf[dst].copy_from_slice(&udata[src]);
                    }
                }
            }
            if conflicts > 0 {
                self.counters.write_conflicts += conflicts;
            }
            if let Some(m) = merged {
                data = Bytes::from(m);
            }
        }
        if let Some(l) = self.link.as_mut() {
            l.peer_seq_received = seq;
        }
        // The secondary keeps an activity log too: after its own crash, the extents
        // whose writes may still have been in its volatile cache are resynced.
        let extents = self.al_activate(offset, len);
        let token = self.token();
        let op = RangeOp::PeerWrite {
            link,
            seq,
            offset,
            data,
            fua,
            extents,
        };
        if let Some(op) = self.ranges.submit(token, offset, len, op) {
            self.start_op(token, op);
        }
        Ok(())
    }
}
