//! Replays the cargo-fuzz corpus of the CDB decoder (fuzz/corpus/cdb_decode) through
//! the fuzz target's entry point: decode, then execute against a small in-memory LUN
//! with the engine's invariants checked (`fuzzing::run_one`).

use std::path::PathBuf;

#[test]
fn cdb_decode_corpus_replays_without_panic() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/cdb_decode");
    let mut n = 0;
    let (map, disk) = twinsan_scsi::fuzzing::small_target(64);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {} missing: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    files.sort();
    for f in files {
        let input = std::fs::read(&f).expect("read corpus file");
        let _ = twinsan_scsi::decode_cdb(&input);
        twinsan_scsi::fuzzing::run_one(&map, &disk, &input);
        n += 1;
    }
    assert!(n >= 10, "corpus {} has only {n} inputs", dir.display());
}
