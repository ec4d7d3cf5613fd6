//! Application writes and flushes, disk completions, timers, admin commands and
//! handler results.

use super::*;

impl Replica {
    pub(super) fn app_write(&mut self, id: u64, offset: u64, data: Bytes, fua: bool) {
        self.last_app_write_ms = Some(self.now_ms);
        if self.role != Role::Primary {
            return self.complete(id, Err(AppError::NotPrimary));
        }
        if self.disk != DiskState::UpToDate {
            return self.complete(id, Err(AppError::DiskNotReady(self.disk)));
        }
        let len = data.len() as u64;
        if len == 0
            || len > u64::from(self.cfg.write_bytes_max)
            || offset.checked_add(len).is_none_or(|e| e > self.size_bytes)
        {
            return self.complete(
                id,
                Err(AppError::BadRequest(format!(
                    "write {offset}+{len} outside the device ({} bytes) or too large",
                    self.size_bytes
                ))),
            );
        }
        if self.app_writes.contains_key(&id) {
            return self.complete(id, Err(AppError::BadRequest(format!("duplicate id {id}"))));
        }
        if self.frozen || self.handshaking() {
            // Frozen by fencing, or a handshake is deciding whether this write must be
            // replicated or marked: hold it until that is settled.
            self.frozen_queue.push_back(Input::Write {
                id,
                offset_bytes: offset,
                data,
                fua,
            });
            return;
        }
        let extents = self.al_activate(offset, len);
        #[cfg(feature = "bug-injection")]
        if self.cfg.injected_bug == Some(InjectedBug::NoRotation) {
            self.rotated = true;
        }
        if !self.replicating() && !self.rotated {
            // First write without the peer: start a new generation so that the peer's
            // data is recognisably older (and a split brain recognisable) later.
            self.rotate_generation();
        }
        self.app_writes.insert(
            id,
            AppWrite {
                offset,
                len,
                local_done: false,
                local_failed: false,
                peer_done: false,
                extents,
            },
        );
        let token = self.token();
        let seen = self
            .link
            .as_ref()
            .map_or((0, 0), |l| (l.id, l.peer_seq_received));
        let op = RangeOp::AppWrite {
            app: id,
            offset,
            data,
            fua,
            seen,
        };
        if let Some(op) = self.ranges.submit(token, offset, len, op) {
            self.start_op(token, op);
        }
    }

    /// Take activity-log references on the extents of `[offset, offset+len)`. An extent
    /// that becomes hot is durable in the AL before any write lands in it; an evicted
    /// extent's bitmap bits (and, through the flush, its data) are durable before it
    /// leaves the AL.
    pub(super) fn al_activate(&mut self, offset: u64, len: u64) -> (u32, u32) {
        let extents = extent_span(offset, len);
        let change = self.hot.activate(extents.0, extents.1);
        for e in &change.evicted {
            let off = u64::from(*e) * AL_EXTENT_BYTES;
            if off < self.size_bytes {
                self.persist_bitmap_range(off, AL_EXTENT_BYTES.min(self.size_bytes - off));
            }
        }
        if !change.added.is_empty() {
            let extents = self.hot.extents();
            self.emit(Action::PersistAl {
                extents,
                flush_data_first: !change.evicted.is_empty(),
            });
        }
        extents
    }

    pub(super) fn app_flush(&mut self, id: u64) {
        if self.app_flushes.contains_key(&id) {
            return self.complete(id, Err(AppError::BadRequest(format!("duplicate id {id}"))));
        }
        if self.disk == DiskState::Diskless {
            return self.complete(id, Err(AppError::DiskNotReady(self.disk)));
        }
        let token = self.token();
        self.disk_ops
            .insert(token, DiskPurpose::AppFlush { flush: id });
        self.emit(Action::DiskFlush { token });
        let replicating = self.replicating();
        self.app_flushes.insert(
            id,
            AppFlush {
                local_done: false,
                peer_done: !replicating,
                failed: false,
            },
        );
        if replicating {
            self.send_peer_flush(Some(id));
        }
    }

    /// Send a Flush covering every write the peer has acknowledged so far.
    pub(super) fn send_peer_flush(&mut self, app: Option<u64>) {
        let Some(l) = self.link.as_mut() else { return };
        let fid = l.next_flush;
        l.next_flush += 1;
        let end = l.epoch_base + l.epoch.len() as u64;
        l.flushes.insert(fid, (app, end));
        self.send(Message::Flush { id: fid });
    }

    /// Start an operation the range queue released.
    pub(super) fn start_op(&mut self, token: u64, op: RangeOp) {
        match op {
            RangeOp::AppWrite {
                app,
                offset,
                data,
                fua,
                seen,
            } => {
                let len = data.len() as u64;
                self.disk_ops.insert(token, DiskPurpose::AppWrite { app });
                self.emit(Action::DiskWrite {
                    token,
                    offset_bytes: offset,
                    data: data.clone(),
                    fua,
                });
                if self.replicating() {
                    let generation = self.gens.current;
                    let now = self.now_ms;
                    let protocol = self.cfg.protocol;
                    let Some(l) = self.link.as_mut() else { return };
                    let seq = l.next_seq;
                    l.next_seq += 1;
                    // What the peer's writes had reached when this write was ordered
                    // here (not now): the dual-primary resolution depends on it.
                    let peer_seq_seen = if seen.0 == l.id { seen.1 } else { 0 };
                    let extents = extent_span(offset, len);
                    l.unacked.insert(
                        seq,
                        Unacked {
                            app: (protocol != Protocol::A).then_some(app),
                            offset,
                            data: data.clone(),
                            sent_ms: now,
                            extents,
                        },
                    );
                    // A second reference (already hot: no AL transaction) for the peer.
                    let _ = self.hot.activate(extents.0, extents.1);
                    self.counters.data_sent_bytes += len;
                    self.send(Message::Data {
                        seq,
                        peer_seq_seen,
                        generation,
                        offset_bytes: offset,
                        fua,
                        data,
                    });
                    #[cfg(feature = "bug-injection")]
                    let protocol = if self.cfg.injected_bug == Some(InjectedBug::AckBeforePeer) {
                        Protocol::A
                    } else {
                        protocol
                    };
                    if protocol == Protocol::A {
                        self.peer_part_done(app);
                    }
                } else {
                    self.bitmap.set_range_bytes(offset, len);
                    self.peer_part_done(app);
                }
            }
            RangeOp::PeerWrite {
                link,
                seq,
                offset,
                data,
                fua,
                extents,
            } => {
                let len = data.len() as u64;
                self.disk_ops.insert(
                    token,
                    DiskPurpose::PeerWrite {
                        link,
                        seq,
                        offset,
                        len,
                        extents,
                    },
                );
                self.emit(Action::DiskWrite {
                    token,
                    offset_bytes: offset,
                    data,
                    fua,
                });
            }
            RangeOp::ResyncWrite {
                link,
                req,
                offset,
                data,
            } => {
                let len = data.len() as u64;
                self.disk_ops.insert(
                    token,
                    DiskPurpose::ResyncWrite {
                        link,
                        req,
                        offset,
                        len,
                    },
                );
                self.emit(Action::DiskWrite {
                    token,
                    offset_bytes: offset,
                    data,
                    fua: false,
                });
            }
            RangeOp::ResyncRead {
                link,
                req,
                offset,
                len,
                digest,
            } => {
                self.disk_ops.insert(
                    token,
                    DiskPurpose::ResyncRead {
                        link,
                        req,
                        offset,
                        digest,
                    },
                );
                self.emit(Action::DiskRead {
                    token,
                    offset_bytes: offset,
                    len_bytes: len,
                });
            }
            RangeOp::CsumRead {
                link,
                req,
                offset,
                len,
            } => {
                self.disk_ops.insert(
                    token,
                    DiskPurpose::CsumRead {
                        link,
                        req,
                        offset,
                        len,
                    },
                );
                self.emit(Action::DiskRead {
                    token,
                    offset_bytes: offset,
                    len_bytes: len,
                });
            }
            RangeOp::VerifyRead {
                link,
                req,
                offset,
                len,
                source,
            } => {
                self.disk_ops.insert(
                    token,
                    DiskPurpose::VerifyRead {
                        link,
                        req,
                        offset,
                        len,
                        source,
                    },
                );
                self.emit(Action::DiskRead {
                    token,
                    offset_bytes: offset,
                    len_bytes: len,
                });
            }
        }
    }

    /// The replication part of an application write is satisfied.
    pub(super) fn peer_part_done(&mut self, app: u64) {
        if let Some(w) = self.app_writes.get_mut(&app) {
            w.peer_done = true;
        }
        self.maybe_complete_write(app);
    }

    fn maybe_complete_write(&mut self, app: u64) {
        let done = self
            .app_writes
            .get(&app)
            .is_some_and(|w| w.local_done && w.peer_done);
        if !done {
            return;
        }
        if let Some(w) = self.app_writes.remove(&app) {
            self.hot.release(w.extents.0, w.extents.1);
            let r = if w.local_failed {
                Err(AppError::Io)
            } else {
                Ok(())
            };
            self.complete(app, r);
        }
    }

    fn maybe_complete_flush(&mut self, id: u64) {
        let done = self
            .app_flushes
            .get(&id)
            .is_some_and(|f| f.local_done && f.peer_done);
        if done {
            if let Some(f) = self.app_flushes.remove(&id) {
                let r = if f.failed { Err(AppError::Io) } else { Ok(()) };
                self.complete(id, r);
            }
        }
    }

    pub(super) fn peer_flush_done(&mut self, app: u64) {
        if let Some(f) = self.app_flushes.get_mut(&app) {
            f.peer_done = true;
        }
        self.maybe_complete_flush(app);
    }

    pub(super) fn disk_done(&mut self, token: u64, result: Result<Option<Bytes>, ()>) {
        let Some(purpose) = self.disk_ops.remove(&token) else {
            return;
        };
        let is_range_op = !matches!(
            purpose,
            DiskPurpose::AppFlush { .. } | DiskPurpose::PeerFlush { .. }
        );
        let ok = result.is_ok();
        match purpose {
            DiskPurpose::AppWrite { app } => {
                if let Some(w) = self.app_writes.get_mut(&app) {
                    w.local_done = true;
                    if !ok {
                        w.local_failed = true;
                        let (o, l) = (w.offset, w.len);
                        // The peer may have the data; the local copy is suspect.
                        self.bitmap.set_range_bytes(o, l);
                    }
                }
                if !ok {
                    self.local_io_error();
                }
                self.maybe_complete_write(app);
            }
            DiskPurpose::PeerWrite {
                link,
                seq,
                offset,
                len,
                extents,
            } => {
                self.hot.release(extents.0, extents.1);
                if self.link_id() == Some(link) {
                    if ok {
                        if matches!(
                            self.conn,
                            ConnState::SyncTarget | ConnState::PausedSyncTarget
                        ) {
                            self.bitmap.clear_range_bytes(offset, len);
                        }
                        self.counters.data_received_bytes += len;
                        self.send(Message::WriteAck { seq });
                    } else {
                        self.send(Message::NegAck { seq });
                    }
                } else if !ok {
                    self.bitmap.set_range_bytes(offset, len);
                }
                if !ok {
                    self.bitmap.set_range_bytes(offset, len);
                    self.local_io_error();
                }
            }
            DiskPurpose::ResyncWrite {
                link,
                req,
                offset,
                len,
            } => {
                if ok {
                    self.bitmap.clear_range_bytes(offset, len);
                } else {
                    self.local_io_error();
                }
                if self.link_id() == Some(link) {
                    self.resync_reply_done(req, ok, len);
                }
            }
            DiskPurpose::ResyncRead {
                link,
                req,
                offset,
                digest,
            } => {
                if self.link_id() == Some(link) {
                    self.resync_read_done(req, offset, digest, result.ok().flatten());
                }
                if !ok {
                    self.local_io_error();
                }
            }
            DiskPurpose::CsumRead {
                link,
                req,
                offset,
                len,
            } => {
                if self.link_id() == Some(link) {
                    let digest = result.ok().flatten().map(|d| crc32c::crc32c(&d));
                    self.send(Message::RsRequest {
                        id: req,
                        offset_bytes: offset,
                        len_bytes: len,
                        digest,
                    });
                }
            }
            DiskPurpose::VerifyRead {
                link,
                req,
                offset,
                len,
                source,
            } => {
                if self.link_id() == Some(link) {
                    self.verify_read_done(req, offset, len, source, result.ok().flatten());
                }
            }
            DiskPurpose::AppFlush { flush } => {
                if let Some(f) = self.app_flushes.get_mut(&flush) {
                    f.local_done = true;
                    f.failed |= !ok;
                }
                self.maybe_complete_flush(flush);
            }
            DiskPurpose::PeerFlush { link, id } => {
                if self.link_id() == Some(link) {
                    self.send(Message::FlushAck { id, ok });
                }
            }
        }
        if is_range_op {
            for (t, op) in self.ranges.complete(token) {
                self.start_op(t, op);
            }
            self.run_peer_flushes();
        }
    }

    pub(super) fn link_id(&self) -> Option<u64> {
        self.link.as_ref().map(|l| l.id)
    }

    /// Start peer flushes whose earlier writes are all on disk.
    pub(super) fn run_peer_flushes(&mut self) {
        let Some(l) = self.link.as_ref() else { return };
        if l.peer_flush_wait.is_empty() {
            return;
        }
        let link = l.id;
        let waits = l.peer_flush_wait.clone();
        let mut ready = Vec::new();
        for (id, barrier) in waits {
            let ops = &self.disk_ops;
            let blocked = self.ranges.any_before(barrier, |t| {
                !matches!(ops.get(&t), Some(DiskPurpose::AppWrite { .. }))
            });
            if !blocked {
                ready.push(id);
            }
        }
        if let Some(l) = self.link.as_mut() {
            l.peer_flush_wait.retain(|(id, _)| !ready.contains(id));
        }
        for id in ready {
            let token = self.token();
            self.disk_ops
                .insert(token, DiskPurpose::PeerFlush { link, id });
            self.emit(Action::DiskFlush { token });
        }
    }

    pub(super) fn local_io_error(&mut self) {
        match self.cfg.on_io_error {
            OnIoError::PassOn => {}
            OnIoError::Detach | OnIoError::CallLocalIoError => {
                if self.cfg.on_io_error == OnIoError::CallLocalIoError {
                    self.emit(Action::RunHandler(Handler::LocalIoError));
                }
                if self.disk != DiskState::Diskless {
                    // Detached: this node no longer has usable data. Reading and
                    // writing through the peer (DRBD's diskless mode) is not
                    // implemented, so it also leaves the peer until the disk is
                    // attached again (a restart of the volume).
                    self.disk = DiskState::Diskless;
                    self.persist_bitmap_dirty();
                    self.state_event();
                    if self.link.is_some() {
                        self.send(Message::Goodbye {
                            reason: "local disk failed; detached".into(),
                        });
                        self.lose_link("local disk failed; detached".into(), true);
                    }
                    self.want_connection = false;
                    self.emit(Action::WantConnection(false));
                    self.set_conn(ConnState::StandAlone);
                }
            }
        }
    }

    pub(super) fn tick(&mut self) {
        let now = self.now_ms;
        let Some(l) = self.link.as_ref() else { return };
        if l.phase != Phase::Established {
            if now >= l.opened_ms + self.cfg.timeout_ms {
                self.lose_link("handshake timed out".into(), false);
            }
            return;
        }
        if let Some((_, u)) = l.unacked.iter().next() {
            let ko = self.cfg.timeout_ms * u64::from(self.cfg.ko_count.max(1));
            if now >= u.sent_ms + ko {
                self.lose_link(
                    format!("peer did not acknowledge a write within {ko} ms (ko-count)"),
                    false,
                );
                return;
            }
        }
        match l.ping_sent_ms {
            Some(p) if now >= p + self.cfg.ping_timeout_ms => {
                self.lose_link("ping timeout: peer is not answering".into(), false);
                return;
            }
            None if now >= l.last_rx_ms + self.cfg.ping_int_ms => {
                if let Some(l) = self.link.as_mut() {
                    l.ping_sent_ms = Some(now);
                }
                self.send(Message::Ping);
            }
            _ => {}
        }
        self.pump_resync();
        self.pump_verify();
    }

    pub(super) fn admin(&mut self, cmd: AdminCmd) -> Result<(), AdminError> {
        let err = |s: String| Err(AdminError(s));
        match cmd {
            AdminCmd::Primary { force } => {
                if self.role == Role::Primary {
                    return Ok(());
                }
                let connected = self.link.as_ref().filter(|l| l.phase == Phase::Established);
                if let Some(l) = connected {
                    if l.peer_role == Role::Primary && !self.cfg.policies.allow_two_primaries {
                        return err(
                            "the peer is Primary and allow-two-primaries is off; demote it \
                             first"
                                .into(),
                        );
                    }
                    if l.resync_target.is_some() && !force {
                        return err("this node is a sync target (Inconsistent)".into());
                    }
                }
                if self.disk == DiskState::Diskless {
                    return err("no local disk (Diskless)".into());
                }
                if self.disk != DiskState::UpToDate {
                    if !force {
                        return err(format!(
                            "local disk is {}; promoting it could serve stale data \
                             (use --force to make this node's data the newest)",
                            self.disk
                        ));
                    }
                    self.disk = DiskState::UpToDate;
                    self.role = Role::Primary;
                    self.primary_since_ms = self.now_ms.max(1);
                    // The forced data is a new generation the peer must fully sync from.
                    self.rotate_generation();
                    if self.gens.bitmap == UUID_JUST_CREATED {
                        self.gens.bitmap = 0;
                    }
                    self.bitmap.set_all();
                    self.persist_bitmap_dirty();
                    self.persist_state(false);
                    self.state_event();
                    if self.link.is_some() {
                        // Re-handshake: the peer now sees newer data here.
                        self.lose_link("forced promotion; reconnecting to resync".into(), false);
                    }
                    return Ok(());
                }
                self.role = Role::Primary;
                self.primary_since_ms = self.now_ms.max(1);
                self.persist_state(false);
                self.state_event();
                let (role, disk) = (self.role, self.disk);
                self.send(Message::State { role, disk });
                Ok(())
            }
            AdminCmd::Secondary => {
                if self.role == Role::Secondary {
                    return Ok(());
                }
                if !self.idle() || !self.frozen_queue.is_empty() {
                    return err("application I/O in progress; stop it first".into());
                }
                self.role = Role::Secondary;
                self.persist_bitmap_dirty();
                self.persist_state(false);
                self.state_event();
                let (role, disk) = (self.role, self.disk);
                self.send(Message::State { role, disk });
                Ok(())
            }
            AdminCmd::Connect { discard_my_data } => {
                if self.conn.is_connected() || self.conn == ConnState::Connecting {
                    if discard_my_data {
                        self.discard_my_data = true;
                    }
                    return Ok(());
                }
                self.discard_my_data = discard_my_data;
                self.split_brain = false;
                self.want_connection = true;
                self.set_conn(ConnState::Connecting);
                self.emit(Action::WantConnection(true));
                Ok(())
            }
            AdminCmd::Disconnect => {
                self.want_connection = false;
                if self.link.is_some() {
                    self.send(Message::Goodbye {
                        reason: "disconnect requested by the operator".into(),
                    });
                    self.lose_link("disconnect requested by the operator".into(), true);
                }
                self.set_conn(ConnState::StandAlone);
                self.emit(Action::WantConnection(false));
                Ok(())
            }
            AdminCmd::Invalidate => {
                let ok = self.link.as_ref().is_some_and(|l| {
                    l.phase == Phase::Established
                        && l.peer_disk == DiskState::UpToDate
                        && l.resync_target.is_none()
                        && l.resync_source.is_none()
                });
                if !ok {
                    return err(
                        "invalidate needs a connected peer with UpToDate data and no resync \
                         running"
                            .into(),
                    );
                }
                if self.role == Role::Primary {
                    return err("invalidate on a Primary is refused; demote first".into());
                }
                // Every block out of sync and the disk Inconsistent; the re-handshake
                // then resyncs everything from the peer.
                self.bitmap.set_all();
                self.persist_bitmap_dirty();
                self.set_disk(DiskState::Inconsistent);
                self.lose_link(
                    "invalidate: reconnecting to resync from the peer".into(),
                    false,
                );
                Ok(())
            }
            AdminCmd::Verify => self.start_verify(),
            AdminCmd::Outdate => {
                if self.role == Role::Primary {
                    return err("a Primary cannot be outdated".into());
                }
                if matches!(self.disk, DiskState::UpToDate | DiskState::Consistent) {
                    self.set_disk(DiskState::Outdated);
                }
                Ok(())
            }
            AdminCmd::ResumeIo => {
                self.unfreeze();
                Ok(())
            }
            AdminCmd::DropFrozenIo => {
                self.drop_frozen_io();
                Ok(())
            }
            AdminCmd::Down => {
                if !self.idle() {
                    return err("application I/O in progress".into());
                }
                if self.link.is_some() {
                    self.send(Message::Goodbye {
                        reason: "peer is going down".into(),
                    });
                    self.lose_link("going down".into(), true);
                }
                self.want_connection = false;
                self.emit(Action::WantConnection(false));
                self.role = Role::Secondary;
                self.persist_bitmap_dirty();
                if self.hot.clear_idle() {
                    let extents = self.hot.extents();
                    self.emit(Action::PersistAl {
                        extents,
                        flush_data_first: true,
                    });
                }
                self.persist_state(true);
                self.set_conn(ConnState::StandAlone);
                Ok(())
            }
        }
    }

    pub(super) fn unfreeze(&mut self) {
        if !self.frozen {
            return;
        }
        self.frozen = false;
        self.emit(Action::Event(Event::IoFrozen { frozen: false }));
        // The peer is fenced: what it never confirmed is now safely this node's alone —
        // and this node's data newer than the peer's (see `lose_link`).
        if self.role == Role::Primary
            && self.disk == DiskState::UpToDate
            && !self.rotated
            && self.frozen_peer_parts.iter().any(|(is_flush, _)| !is_flush)
        {
            self.rotate_generation();
        }
        for (is_flush, app) in std::mem::take(&mut self.frozen_peer_parts) {
            if is_flush {
                self.peer_flush_done(app);
            } else {
                self.peer_part_done(app);
            }
        }
        self.release_held();
    }

    /// [`AdminCmd::DropFrozenIo`].
    fn drop_frozen_io(&mut self) {
        if !self.frozen {
            return;
        }
        for i in std::mem::take(&mut self.frozen_queue) {
            if let Input::Write { id, .. } = i {
                self.complete(id, Err(AppError::Io));
            }
        }
        for (is_flush, app) in std::mem::take(&mut self.frozen_peer_parts) {
            if is_flush {
                if let Some(f) = self.app_flushes.get_mut(&app) {
                    f.failed = true;
                }
                self.peer_flush_done(app);
            } else {
                if let Some(w) = self.app_writes.get_mut(&app) {
                    // Written here, never confirmed by the peer: report it failed.
                    w.local_failed = true;
                }
                self.peer_part_done(app);
            }
        }
        self.frozen = false;
        self.emit(Action::Event(Event::IoFrozen { frozen: false }));
    }

    /// A handshake is in progress on the link.
    pub(super) fn handshaking(&self) -> bool {
        self.link
            .as_ref()
            .is_some_and(|l| l.phase != Phase::Established)
    }

    /// Replay writes held by a freeze or a handshake, once neither applies.
    pub(super) fn release_held(&mut self) {
        if self.frozen || self.handshaking() || self.frozen_queue.is_empty() {
            return;
        }
        let queued: Vec<Input> = self.frozen_queue.drain(..).collect();
        for i in queued {
            if let Input::Write {
                id,
                offset_bytes,
                data,
                fua,
            } = i
            {
                self.app_write(id, offset_bytes, data, fua);
            }
        }
    }

    pub(super) fn handler_done(&mut self, handler: Handler, exit_code: i32) {
        match handler {
            Handler::FencePeer => {
                // DRBD's exit codes: 3 peer Inconsistent, 4 peer Outdated, 7 peer fenced
                // (STONITH) all make it safe to write alone; 5 (unreachable) only under
                // resource-only.
                let ok = matches!(exit_code, 3 | 4 | 7)
                    || (exit_code == 5 && self.cfg.fencing == Fencing::ResourceOnly);
                if ok {
                    self.unfreeze();
                }
            }
            Handler::BeforeResyncTarget => {
                if let Some(rt) = self.link.as_mut().and_then(|l| l.resync_target.as_mut()) {
                    rt.waiting_handler = false;
                }
                self.pump_resync();
            }
            _ => {}
        }
    }
}
