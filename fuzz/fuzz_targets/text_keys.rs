//! Fuzz the iSCSI text-key parser, key negotiation and the login state machine.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    twinsan_iscsi::fuzzing::text_keys(data);
});
