//! Replays the cargo-fuzz corpus of the replication link decoder (kept in
//! fuzz/corpus/repl_decode/) through the same entry points the fuzz target uses, so
//! every test run exercises every input the fuzzer found interesting, without nightly
//! tools.

use std::path::PathBuf;

fn corpus(name: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(name);
    let mut inputs: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {} missing: {e}", dir.display()))
        .map(|e| std::fs::read(e.expect("dir entry").path()).expect("read corpus file"))
        .collect();
    assert!(
        inputs.len() >= 10,
        "corpus {} has only {} inputs",
        dir.display(),
        inputs.len()
    );
    inputs.sort();
    inputs
}

#[test]
fn repl_decode_corpus_replays_without_panic() {
    for input in corpus("repl_decode") {
        twinsan_replication::wire::fuzz_decode(&input);
        twinsan_replication::auth::fuzz_handshake(&input);
    }
}

/// The seed transcript must still complete the handshake of the fuzz node, or the
/// fuzzer loses its way past authentication into the frame decoder.
#[test]
fn seed_transcript_still_authenticates() {
    use twinsan_replication::auth::Authenticator;
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/repl_decode");
    let transcript = std::fs::read(dir.join("auth-transcript-then-frames")).expect("seed");
    let mut node =
        Authenticator::new(0, 1, [0x42; 16], b"fuzz-secret-0123", [0xc0; 32]).expect("node");
    let done = node
        .feed(&transcript)
        .expect("handshake")
        .done
        .expect("done");
    let mut d = twinsan_replication::wire::Decoder::new(4096);
    d.feed(&done.leftover);
    let mut n = 0;
    while d.next_message().expect("frame").is_some() {
        n += 1;
    }
    assert_eq!(n, 23, "every message kind follows the handshake");
}
