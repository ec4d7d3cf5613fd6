//! Fuzz target: decode arbitrary CDBs and execute them, with arbitrary data-out and
//! data-in limits, against a small in-memory LUN. Checks the engine's invariants (see
//! `twinsan_scsi::fuzzing::run_one`): no panic, data-in within the transport's limit,
//! sense with every CHECK CONDITION, no I/O outside the device.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use twinsan_scsi::fuzzing::{run_one, small_target, MemDisk};
use twinsan_scsi::LunMap;

fn target() -> &'static (LunMap, std::sync::Arc<MemDisk>) {
    static T: OnceLock<(LunMap, std::sync::Arc<MemDisk>)> = OnceLock::new();
    T.get_or_init(|| small_target(64))
}

fuzz_target!(|data: &[u8]| {
    let _ = twinsan_scsi::decode_cdb(data);
    let (map, disk) = target();
    run_one(map, disk, data);
});
