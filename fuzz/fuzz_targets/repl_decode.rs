//! Fuzz the replication link: the incremental frame decoder (every accepted message
//! must re-encode to the bytes it came from) and the authentication handshake, whose
//! leftover bytes after a successful handshake go to the frame decoder.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    twinsan_replication::wire::fuzz_decode(data);
    twinsan_replication::auth::fuzz_handshake(data);
});
