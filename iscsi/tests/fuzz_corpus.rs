//! Replays the cargo-fuzz corpora of the PDU decoder and the text-key parser (kept in
//! fuzz/corpus/) through the same entry points the fuzz targets use, so every CI run
//! exercises every input the fuzzer ever found interesting, without nightly tools.

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
fn pdu_decode_corpus_replays_without_panic() {
    for input in corpus("pdu_decode") {
        twinsan_iscsi::fuzzing::pdu_decode(&input);
    }
}

#[test]
fn text_keys_corpus_replays_without_panic() {
    for input in corpus("text_keys") {
        twinsan_iscsi::fuzzing::text_keys(&input);
    }
}
