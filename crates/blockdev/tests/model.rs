//! Property test: random writes, reads, discards, flushes and batches on every backend
//! agree with a plain `Vec<u8>` model.

use proptest::prelude::*;
use twinsan_blockdev::{
    BlockDevice, DirectPreference, EnginePreference, FileDevice, FileOptions, IoBuf, IoOp,
    MemDevice,
};

const BS: u64 = 512;
const BLOCKS: u64 = 512; // 256 KiB device

#[derive(Debug, Clone)]
enum Op {
    Write {
        lba: u64,
        blocks: u64,
        seed: u8,
        fua: bool,
        misalign: bool,
    },
    Read {
        lba: u64,
        blocks: u64,
        misalign: bool,
    },
    Discard {
        lba: u64,
        blocks: u64,
    },
    Flush,
    /// Two writes and a read in one batch.
    Batch {
        w1: u64,
        w2: u64,
        r: u64,
        blocks: u64,
        seed: u8,
    },
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let range = (0..BLOCKS).prop_flat_map(|lba| (Just(lba), 1..=(BLOCKS - lba).min(40)));
    prop_oneof![
        4 => (range.clone(), any::<u8>(), any::<bool>(), any::<bool>())
            .prop_map(|((lba, blocks), seed, fua, misalign)| Op::Write { lba, blocks, seed, fua, misalign }),
        4 => (range.clone(), any::<bool>()).prop_map(|((lba, blocks), misalign)| Op::Read { lba, blocks, misalign }),
        1 => range.prop_map(|(lba, blocks)| Op::Discard { lba, blocks }),
        1 => Just(Op::Flush),
        2 => (0..BLOCKS - 8, 0..BLOCKS - 8, 0..BLOCKS - 8, 1..=8u64, any::<u8>())
            .prop_map(|(w1, w2, r, blocks, seed)| Op::Batch { w1, w2, r, blocks, seed }),
    ]
}

fn fill(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_add(seed).rotate_left(3))
        .collect()
}

/// A buffer of `len` bytes, at an aligned address or deliberately at an odd one.
struct Buf {
    store: IoBuf,
    start: usize,
    len: usize,
}

impl Buf {
    fn new(len: usize, misalign: bool) -> Self {
        let start = usize::from(misalign);
        let mut store = IoBuf::with_capacity(len + 1);
        store.resize(len + start);
        Self { store, start, len }
    }
    fn get(&self) -> &[u8] {
        &self.store[self.start..self.start + self.len]
    }
    fn get_mut(&mut self) -> &mut [u8] {
        &mut self.store[self.start..self.start + self.len]
    }
}

fn check(dev: &dyn BlockDevice, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut model = vec![0u8; (BS * BLOCKS) as usize];
    for op in ops {
        match *op {
            Op::Write {
                lba,
                blocks,
                seed,
                fua,
                misalign,
            } => {
                let data = fill((blocks * BS) as usize, seed);
                let mut b = Buf::new(data.len(), misalign);
                b.get_mut().copy_from_slice(&data);
                dev.write_at(b.get(), lba * BS, fua)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let o = (lba * BS) as usize;
                model[o..o + data.len()].copy_from_slice(&data);
            }
            Op::Read {
                lba,
                blocks,
                misalign,
            } => {
                let mut b = Buf::new((blocks * BS) as usize, misalign);
                b.get_mut().fill(0xEE);
                dev.read_at(b.get_mut(), lba * BS)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let o = (lba * BS) as usize;
                prop_assert_eq!(b.get(), &model[o..o + b.len]);
            }
            Op::Discard { lba, blocks } => {
                dev.discard(lba * BS, blocks * BS)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let o = (lba * BS) as usize;
                model[o..o + (blocks * BS) as usize].fill(0);
            }
            Op::Flush => dev
                .flush()
                .map_err(|e| TestCaseError::fail(e.to_string()))?,
            Op::Batch {
                w1,
                w2,
                r,
                blocks,
                seed,
            } => {
                let len = (blocks * BS) as usize;
                let d1 = fill(len, seed);
                let d2 = fill(len, seed.wrapping_add(1));
                let mut rb = vec![0u8; len];
                let mut ops = vec![
                    IoOp::Write {
                        offset_bytes: w1 * BS,
                        buf: &d1,
                        fua: false,
                    },
                    IoOp::Write {
                        offset_bytes: w2 * BS,
                        buf: &d2,
                        fua: true,
                    },
                    IoOp::Read {
                        offset_bytes: r * BS,
                        buf: &mut rb,
                    },
                ];
                let mut results = vec![Ok(()), Ok(()), Ok(())];
                dev.submit_batch(&mut ops, &mut results);
                drop(ops);
                for r in &results {
                    prop_assert!(r.is_ok(), "{:?}", r);
                }
                // The batch behaves as if run in order.
                model[(w1 * BS) as usize..(w1 * BS) as usize + len].copy_from_slice(&d1);
                model[(w2 * BS) as usize..(w2 * BS) as usize + len].copy_from_slice(&d2);
                prop_assert_eq!(&rb[..], &model[(r * BS) as usize..(r * BS) as usize + len]);
            }
        }
    }
    let mut all = vec![0u8; model.len()];
    dev.read_at(&mut all, 0)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert!(all == model, "final contents differ");
    Ok(())
}

fn file_dev(
    dir: &std::path::Path,
    engine: EnginePreference,
    direct: DirectPreference,
) -> FileDevice {
    let path = dir.join("model.img");
    let _ = std::fs::remove_file(&path);
    FileDevice::open(
        &path,
        &FileOptions {
            create_size_bytes: Some(BS * BLOCKS),
            engine,
            direct,
            ..FileOptions::default()
        },
    )
    .expect("open model file")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn backends_agree_with_model(ops in prop::collection::vec(op_strategy(), 1..40)) {
        let mem = MemDevice::new(BS * BLOCKS, BS as u32);
        check(&mem, &ops)?;
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
        for engine in [EnginePreference::Sync, EnginePreference::Uring] {
            for direct in [DirectPreference::Off, DirectPreference::Auto] {
                let dev = file_dev(dir.path(), engine, direct);
                check(&dev, &ops)?;
            }
        }
    }
}
