//! Fuzz the incremental iSCSI PDU decoder (with and without digests) and the
//! full-feature session state machine fed with whatever decodes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    twinsan_iscsi::fuzzing::pdu_decode(data);
});
