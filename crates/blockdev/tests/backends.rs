//! Tests of the block-device backends through the public API.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use twinsan_blockdev::{
    BlockDevice, BlockError, DirectPreference, EngineKind, EnginePreference, FaultDevice,
    FileDevice, FileOptions, IoBuf, IoOp, MemDevice,
};

const MIB: u64 = 1 << 20;

fn pattern(len: usize, seed: u8) -> IoBuf {
    let mut b = IoBuf::with_capacity(len);
    b.resize(len);
    for (i, x) in b.iter_mut().enumerate() {
        *x = (i as u8).wrapping_mul(31).wrapping_add(seed) | 1;
    }
    b
}

fn zeroed(len: usize) -> IoBuf {
    let mut b = IoBuf::with_capacity(len);
    b.resize(len);
    b
}

/// A directory on a real disk file system (O_DIRECT capable, unlike some tmpfs).
fn disk_tempdir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir under the target dir")
}

fn opts(engine: EnginePreference, direct: DirectPreference, size: u64) -> FileOptions {
    FileOptions {
        create_size_bytes: Some(size),
        engine,
        direct,
        ..FileOptions::default()
    }
}

/// Open with O_DIRECT on, or explain why the file system here cannot.
fn open_direct(path: &Path, engine: EnginePreference, size: u64) -> Option<FileDevice> {
    match FileDevice::open(path, &opts(engine, DirectPreference::On, size)) {
        Ok(d) => {
            assert!(d.direct_io());
            Some(d)
        }
        Err(e) => {
            println!("SKIP: O_DIRECT not supported under {}: {e}", path.display());
            None
        }
    }
}

const ENGINES: [EnginePreference; 2] = [EnginePreference::Sync, EnginePreference::Uring];

fn round_trip(dev: &dyn BlockDevice) {
    let bs = dev.logical_block_size() as usize;
    let data = pattern(8 * bs, 7);
    dev.write_at(&data, 4 * bs as u64, false).expect("write");
    let mut back = zeroed(8 * bs);
    dev.read_at(&mut back, 4 * bs as u64).expect("read");
    assert_eq!(&back[..], &data[..]);
    // FUA write, then flush.
    let data2 = pattern(bs, 99);
    dev.write_at(&data2, 0, true).expect("fua write");
    dev.flush().expect("flush");
    let mut back = zeroed(bs);
    dev.read_at(&mut back, 0).expect("read");
    assert_eq!(&back[..], &data2[..]);
    // Untouched blocks read as zeros; last block is reachable.
    let last = dev.size_bytes() - bs as u64;
    let mut z = pattern(bs, 1);
    dev.read_at(&mut z, last).expect("read last block");
    assert!(z.iter().all(|&x| x == 0));
    dev.write_at(&data2, last, false).expect("write last block");
    dev.read_at(&mut z, last).expect("read last block");
    assert_eq!(&z[..], &data2[..]);
}

#[test]
fn mem_round_trip() {
    let dev = MemDevice::new(8 * MIB, 512);
    assert_eq!(dev.engine(), EngineKind::Memory);
    assert!(!dev.write_cache_enabled());
    round_trip(&dev);
    // Across a chunk boundary.
    let data = pattern(8192, 3);
    dev.write_at(&data, MIB - 4096, false).unwrap();
    let mut back = zeroed(8192);
    dev.read_at(&mut back, MIB - 4096).unwrap();
    assert_eq!(&back[..], &data[..]);
    let dev4k = MemDevice::new(3 * MIB + 4096 + 100, 4096);
    assert_eq!(dev4k.size_bytes(), 3 * MIB + 4096);
    round_trip(&dev4k);
    assert!(MemDevice::try_new(100, 512).is_err());
    assert!(MemDevice::try_new(MIB, 1000).is_err());
}

#[test]
fn file_round_trip_each_engine_buffered() {
    let dir = tempfile::tempdir().unwrap();
    for engine in ENGINES {
        for bs in [512u32, 4096] {
            let path = dir.path().join(format!("rt-{engine}-{bs}.img"));
            let mut o = opts(engine, DirectPreference::Off, 16 * MIB);
            o.logical_block_size = Some(bs);
            let dev = FileDevice::open(&path, &o).unwrap();
            assert_eq!(dev.engine(), expect_kind(engine));
            assert!(!dev.direct_io());
            assert_eq!(dev.logical_block_size(), bs);
            round_trip(&dev);
        }
    }
}

fn expect_kind(engine: EnginePreference) -> EngineKind {
    match engine {
        EnginePreference::Sync => EngineKind::Sync,
        _ => EngineKind::Uring,
    }
}

#[test]
fn file_round_trip_each_engine_direct() {
    let dir = disk_tempdir();
    for engine in ENGINES {
        let path = dir.path().join(format!("direct-{engine}.img"));
        let Some(dev) = open_direct(&path, engine, 16 * MIB) else {
            return;
        };
        assert_eq!(dev.engine(), expect_kind(engine));
        round_trip(&dev);
        // Data is visible to a fresh buffered open.
        drop(dev);
        let dev = FileDevice::open(&path, &opts(engine, DirectPreference::Off, 16 * MIB)).unwrap();
        let mut back = zeroed(512);
        dev.read_at(&mut back, 0).unwrap();
        assert_eq!(&back[..], &pattern(512, 99)[..]);
    }
}

#[test]
fn auto_engine_and_direct_are_reported() {
    let dir = disk_tempdir();
    let path = dir.path().join("auto.img");
    let dev = FileDevice::open(
        &path,
        &opts(EnginePreference::Auto, DirectPreference::Auto, MIB),
    )
    .unwrap();
    let text = dev.describe();
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(text.contains(&dev.engine().to_string()), "{text}");
    assert!(text.contains("1048576 bytes"), "{text}");
    assert!(text.contains("write cache on"), "{text}");
    println!("{text}");
    round_trip(&dev);
}

#[test]
fn write_cache_setting_tells_the_truth() {
    let dir = tempfile::tempdir().unwrap();
    for engine in ENGINES {
        let path = dir.path().join(format!("wc-{engine}.img"));
        let mut o = opts(engine, DirectPreference::Auto, MIB);
        o.write_cache = false;
        let dev = FileDevice::open(&path, &o).unwrap();
        assert!(!dev.write_cache_enabled());
        assert!(dev.describe().contains("write cache off"));
        round_trip(&dev);
        drop(dev);
        o.write_cache = true;
        let dev = FileDevice::open(&path, &o).unwrap();
        assert!(dev.write_cache_enabled());
    }
}

fn batch_test(dev: &dyn BlockDevice) {
    let bs = dev.logical_block_size() as usize;
    let a = pattern(4 * bs, 11);
    let b = pattern(2 * bs, 22);
    let c = pattern(bs, 33);
    let mut r1 = zeroed(4 * bs);
    let mut r2 = zeroed(2 * bs);
    let mut r3 = zeroed(bs);
    let mut bad = zeroed(bs);
    let size = dev.size_bytes();
    let mut ops = vec![
        IoOp::Write {
            offset_bytes: 0,
            buf: &a,
            fua: false,
        },
        IoOp::Write {
            offset_bytes: 16 * bs as u64,
            buf: &b,
            fua: true,
        },
        // Overlaps the first write: must see its data (batch behaves as if in order).
        IoOp::Read {
            offset_bytes: bs as u64,
            buf: &mut r3,
        },
        IoOp::Read {
            offset_bytes: size,
            buf: &mut bad,
        },
        IoOp::Flush,
        IoOp::Write {
            offset_bytes: 2 * bs as u64,
            buf: &c,
            fua: false,
        },
        IoOp::Read {
            offset_bytes: 0,
            buf: &mut r1,
        },
        IoOp::Read {
            offset_bytes: 16 * bs as u64,
            buf: &mut r2,
        },
    ];
    let mut results: Vec<_> = (0..ops.len()).map(|_| Ok(())).collect();
    dev.submit_batch(&mut ops, &mut results);
    drop(ops);
    for (i, r) in results.iter().enumerate() {
        if i == 3 {
            assert!(
                matches!(r, Err(BlockError::OutOfRange { .. })),
                "op {i}: {r:?}"
            );
        } else {
            assert!(r.is_ok(), "op {i}: {r:?}");
        }
    }
    assert_eq!(&r3[..], &a[bs..2 * bs]);
    let mut expect = a.to_vec();
    expect[2 * bs..3 * bs].copy_from_slice(&c);
    assert_eq!(&r1[..], &expect[..]);
    assert_eq!(&r2[..], &b[..]);
}

/// More ops than one submission queue holds, so the engine submits in chunks.
fn big_batch_test(dev: &dyn BlockDevice) {
    let bs = dev.logical_block_size() as usize;
    let n = 300;
    let bufs: Vec<IoBuf> = (0..n).map(|i| pattern(bs, i as u8)).collect();
    let mut ops: Vec<IoOp<'_>> = bufs
        .iter()
        .enumerate()
        .map(|(i, b)| IoOp::Write {
            offset_bytes: (i * bs) as u64,
            buf: b,
            fua: i % 7 == 0,
        })
        .collect();
    let mut results: Vec<_> = (0..n).map(|_| Ok(())).collect();
    dev.submit_batch(&mut ops, &mut results);
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    let mut reads: Vec<IoBuf> = (0..n).map(|_| zeroed(bs)).collect();
    let mut ops: Vec<IoOp<'_>> = reads
        .iter_mut()
        .enumerate()
        .map(|(i, b)| IoOp::Read {
            offset_bytes: (i * bs) as u64,
            buf: b,
        })
        .collect();
    dev.submit_batch(&mut ops, &mut results);
    drop(ops);
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    for i in 0..n {
        assert_eq!(&reads[i][..], &bufs[i][..], "block {i}");
    }
}

#[test]
fn batches_with_mixed_ops() {
    let mem = MemDevice::new(4 * MIB, 512);
    batch_test(&mem);
    big_batch_test(&mem);
    let dir = disk_tempdir();
    for engine in ENGINES {
        for direct in [DirectPreference::Off, DirectPreference::Auto] {
            let path = dir.path().join(format!("batch-{engine}-{direct}.img"));
            let dev = FileDevice::open(&path, &opts(engine, direct, 4 * MIB)).unwrap();
            batch_test(&dev);
            big_batch_test(&dev);
        }
    }
}

#[test]
fn unaligned_buffers_with_direct_on() {
    let dir = disk_tempdir();
    for engine in ENGINES {
        let path = dir.path().join(format!("unaligned-{engine}.img"));
        let Some(dev) = open_direct(&path, engine, 4 * MIB) else {
            return;
        };
        // Buffers at an odd address: O_DIRECT cannot take them directly.
        let mut backing = vec![0u8; 8192 + 1];
        let data = pattern(8192, 5);
        backing[1..].copy_from_slice(&data);
        dev.write_at(&backing[1..], 4096, false).unwrap();
        let mut out = vec![0u8; 8192 + 3];
        dev.read_at(&mut out[3..], 4096).unwrap();
        assert_eq!(&out[3..], &data[..]);
        // An aligned buffer but a length/offset aligned only to 512 bytes.
        let small = pattern(512, 9);
        dev.write_at(&small, 512, true).unwrap();
        let mut back = zeroed(4096);
        dev.read_at(&mut back, 0).unwrap();
        assert_eq!(&back[512..1024], &small[..]);
        // Mixed batch with aligned and unaligned buffers.
        let mut odd = vec![0u8; 4096 + 1];
        let mut al = zeroed(8192);
        let mut ops = vec![
            IoOp::Read {
                offset_bytes: 4096,
                buf: &mut odd[1..],
            },
            IoOp::Read {
                offset_bytes: 4096,
                buf: &mut al,
            },
        ];
        let mut results = vec![Ok(()), Ok(())];
        dev.submit_batch(&mut ops, &mut results);
        drop(ops);
        assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
        assert_eq!(&odd[1..], &data[..4096]);
        assert_eq!(&al[..], &data[..]);
    }
}

fn rejects_bad_requests(dev: &dyn BlockDevice) {
    let bs = u64::from(dev.logical_block_size());
    let size = dev.size_bytes();
    let mut buf = zeroed(bs as usize);
    assert!(matches!(
        dev.read_at(&mut buf, size),
        Err(BlockError::OutOfRange { .. })
    ));
    assert!(matches!(
        dev.write_at(&buf, size, false),
        Err(BlockError::OutOfRange { .. })
    ));
    assert!(matches!(
        dev.read_at(&mut buf, u64::MAX - bs + 1),
        Err(BlockError::OutOfRange { .. })
    ));
    let mut two = zeroed(2 * bs as usize);
    assert!(matches!(
        dev.read_at(&mut two, size - bs),
        Err(BlockError::OutOfRange { .. })
    ));
    assert!(matches!(
        dev.read_at(&mut buf, 1),
        Err(BlockError::Unaligned { .. })
    ));
    assert!(matches!(
        dev.write_at(&buf, 100, false),
        Err(BlockError::Unaligned { .. })
    ));
    let mut short = zeroed(bs as usize - 1);
    assert!(matches!(
        dev.read_at(&mut short, 0),
        Err(BlockError::Unaligned { .. })
    ));
    assert!(matches!(
        dev.write_at(&short, 0, false),
        Err(BlockError::Unaligned { .. })
    ));
    assert!(matches!(
        dev.discard(0, bs - 1),
        Err(BlockError::Unaligned { .. })
    ));
    assert!(matches!(
        dev.discard(size, bs),
        Err(BlockError::OutOfRange { .. })
    ));
}

#[test]
fn out_of_range_and_unaligned_rejected() {
    rejects_bad_requests(&MemDevice::new(MIB, 512));
    rejects_bad_requests(&MemDevice::new(MIB, 4096));
    let dir = disk_tempdir();
    for engine in ENGINES {
        let path = dir.path().join(format!("bad-{engine}.img"));
        let dev = FileDevice::open(&path, &opts(engine, DirectPreference::Auto, MIB)).unwrap();
        rejects_bad_requests(&dev);
        let fault = FaultDevice::new(Arc::new(dev));
        rejects_bad_requests(&fault);
    }
}

#[test]
fn sparse_creation_allocates_nothing() {
    let dir = disk_tempdir();
    let path = dir.path().join("sparse.img");
    let size = 256 * MIB;
    let dev = FileDevice::open(
        &path,
        &opts(EnginePreference::Auto, DirectPreference::Auto, size),
    )
    .unwrap();
    assert_eq!(dev.size_bytes(), size);
    let md = std::fs::metadata(&path).unwrap();
    assert_eq!(md.len(), size);
    assert_eq!(md.blocks(), 0, "a new backing file must be sparse");
    // Growing an existing file keeps its data and stays sparse past it.
    let data = pattern(4096, 4);
    dev.write_at(&data, 0, true).unwrap();
    drop(dev);
    let dev = FileDevice::open(
        &path,
        &opts(EnginePreference::Auto, DirectPreference::Auto, 2 * size),
    )
    .unwrap();
    assert_eq!(dev.size_bytes(), 2 * size);
    let mut back = zeroed(4096);
    dev.read_at(&mut back, 0).unwrap();
    assert_eq!(&back[..], &data[..]);
    let md = std::fs::metadata(&path).unwrap();
    assert!(
        md.blocks() * 512 < MIB,
        "grown file allocated {} blocks",
        md.blocks()
    );
}

#[test]
fn refuses_to_shrink_an_existing_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.img");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(2 * MIB)
        .unwrap();
    let err = FileDevice::open(
        &path,
        &opts(EnginePreference::Auto, DirectPreference::Auto, MIB),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("shrink"), "{msg}");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 2 * MIB);
    // Without a create size the existing file is used as it is.
    let dev = FileDevice::open(&path, &FileOptions::default()).unwrap();
    assert_eq!(dev.size_bytes(), 2 * MIB);
}

#[test]
fn size_rules() {
    let dir = tempfile::tempdir().unwrap();
    // Missing file without a create size: error naming the path.
    let missing = dir.path().join("missing.img");
    let err = FileDevice::open(&missing, &FileOptions::default()).unwrap_err();
    assert!(err.to_string().contains("missing.img"), "{err}");
    // Smaller than one block.
    let tiny = dir.path().join("tiny.img");
    std::fs::write(&tiny, [1u8; 100]).unwrap();
    let err = FileDevice::open(&tiny, &FileOptions::default()).unwrap_err();
    assert!(err.to_string().contains("tiny.img"), "{err}");
    // Rounded down to whole blocks.
    let odd = dir.path().join("odd.img");
    std::fs::write(&odd, vec![0u8; 4096 + 1000]).unwrap();
    let dev = FileDevice::open(&odd, &FileOptions::default()).unwrap();
    assert_eq!(dev.size_bytes(), 4096 + 512);
    let o = FileOptions {
        logical_block_size: Some(4096),
        ..FileOptions::default()
    };
    let dev = FileDevice::open(&odd, &o).unwrap();
    assert_eq!(dev.size_bytes(), 4096);
    // Bad block size.
    let o = FileOptions {
        logical_block_size: Some(1000),
        ..FileOptions::default()
    };
    assert!(FileDevice::open(&odd, &o).is_err());
    // Read-only cannot create.
    let o = FileOptions {
        read_only: true,
        create_size_bytes: Some(MIB),
        ..FileOptions::default()
    };
    assert!(FileDevice::open(dir.path().join("ro-new.img"), &o).is_err());
}

#[test]
fn reads_past_eof_of_a_truncated_file_return_zeros() {
    let dir = tempfile::tempdir().unwrap();
    for engine in ENGINES {
        let path = dir.path().join(format!("eof-{engine}.img"));
        let dev = FileDevice::open(&path, &opts(engine, DirectPreference::Off, MIB)).unwrap();
        dev.write_at(&pattern(8192, 1), 0, false).unwrap();
        // Someone truncates the file behind the device's back.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(4096 + 512)
            .unwrap();
        let mut buf = pattern(8192, 2);
        dev.read_at(&mut buf, 0).unwrap();
        assert_eq!(&buf[..4608], &pattern(8192, 1)[..4608]);
        assert!(buf[4608..].iter().all(|&x| x == 0));
        let mut buf = pattern(4096, 2);
        dev.read_at(&mut buf, MIB - 4096).unwrap();
        assert!(buf.iter().all(|&x| x == 0));
    }
}

fn discard_test(dev: &dyn BlockDevice) {
    let bs = dev.logical_block_size() as u64;
    let len = 3 * MIB as usize;
    let data = pattern(len, 8);
    dev.write_at(&data, 0, false).unwrap();
    // A range that is not aligned to anything larger than the block size.
    let (off, dlen) = (bs * 3, 2 * MIB + bs * 5);
    dev.discard(off, dlen).unwrap();
    let mut back = zeroed(len);
    dev.read_at(&mut back, 0).unwrap();
    let (o, e) = (off as usize, (off + dlen) as usize);
    assert_eq!(&back[..o], &data[..o]);
    assert!(
        back[o..e].iter().all(|&x| x == 0),
        "discarded range reads zeros"
    );
    assert_eq!(&back[e..], &data[e..]);
}

#[test]
fn discard_returns_zeros() {
    discard_test(&MemDevice::new(4 * MIB, 512));
    let mem = MemDevice::new(4 * MIB, 4096);
    discard_test(&mem);
    mem.discard(0, 4 * MIB).unwrap();
    assert_eq!(mem.allocated_bytes(), 0);
    let dir = disk_tempdir();
    for engine in ENGINES {
        for direct in [DirectPreference::Off, DirectPreference::Auto] {
            let path = dir.path().join(format!("discard-{engine}-{direct}.img"));
            let dev = FileDevice::open(&path, &opts(engine, direct, 4 * MIB)).unwrap();
            discard_test(&dev);
            dev.flush().unwrap();
            let before = std::fs::metadata(&path).unwrap().blocks();
            dev.discard(0, 4 * MIB).unwrap();
            let after = std::fs::metadata(&path).unwrap().blocks();
            assert!(after < before, "hole punched: {before} -> {after} blocks");
        }
    }
}

#[test]
fn read_only_refuses_writes() {
    let mem = MemDevice::new(MIB, 512);
    mem.set_read_only(true);
    let buf = zeroed(512);
    assert!(matches!(
        mem.write_at(&buf, 0, false),
        Err(BlockError::ReadOnly)
    ));
    assert!(matches!(mem.discard(0, 512), Err(BlockError::ReadOnly)));
    assert!(mem.read_only());

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ro.img");
    drop(
        FileDevice::open(
            &path,
            &opts(EnginePreference::Auto, DirectPreference::Auto, MIB),
        )
        .unwrap(),
    );
    for engine in ENGINES {
        let o = FileOptions {
            read_only: true,
            engine,
            ..FileOptions::default()
        };
        let dev = FileDevice::open(&path, &o).unwrap();
        assert!(dev.read_only());
        assert!(dev.describe().contains("read-only"));
        assert!(matches!(
            dev.write_at(&buf, 0, false),
            Err(BlockError::ReadOnly)
        ));
        assert!(matches!(
            dev.write_at(&buf, 0, true),
            Err(BlockError::ReadOnly)
        ));
        assert!(matches!(dev.discard(0, 512), Err(BlockError::ReadOnly)));
        let mut ops = vec![IoOp::Write {
            offset_bytes: 0,
            buf: &buf,
            fua: false,
        }];
        let mut results = vec![Ok(())];
        dev.submit_batch(&mut ops, &mut results);
        assert!(matches!(results[0], Err(BlockError::ReadOnly)));
        let mut r = zeroed(512);
        dev.read_at(&mut r, 0).unwrap();
        dev.flush().unwrap();
    }
}

fn is_eio(r: &Result<(), BlockError>) -> bool {
    matches!(r, Err(BlockError::Io { source, .. }) if source.raw_os_error() == Some(libc::EIO))
}

#[test]
fn fault_device_injects_eio_exactly_on_configured_lbas() {
    let mem = Arc::new(MemDevice::new(MIB, 512));
    let dev = FaultDevice::new(mem.clone());
    dev.fail_reads(10, 3);
    dev.fail_writes(100, 1);
    let mut buf = zeroed(512);
    for lba in 0..200u64 {
        let r = dev.read_at(&mut buf, lba * 512);
        assert_eq!(is_eio(&r), (10..13).contains(&lba), "read lba {lba}: {r:?}");
        if !(10..13).contains(&lba) {
            r.unwrap();
        }
        let w = dev.write_at(&buf, lba * 512, false);
        assert_eq!(is_eio(&w), lba == 100, "write lba {lba}: {w:?}");
    }
    // Multi-block requests touching a failing LBA fail; ones ending just before do not.
    let mut big = zeroed(512 * 4);
    assert!(is_eio(&dev.read_at(&mut big, 512 * 12)));
    assert!(is_eio(&dev.read_at(&mut big, 512 * 7)));
    dev.read_at(&mut big, 512 * 6).unwrap();
    dev.read_at(&mut big, 512 * 13).unwrap();
    assert!(is_eio(&dev.discard(512 * 98, 512 * 4)));
    dev.discard(512 * 101, 512 * 4).unwrap();
    // Batches fail exactly the faulted ops and run the others.
    let data = pattern(512, 77);
    let mut r_ok = zeroed(512);
    let mut r_bad = zeroed(512);
    let mut ops = vec![
        IoOp::Write {
            offset_bytes: 0,
            buf: &data,
            fua: false,
        },
        IoOp::Read {
            offset_bytes: 11 * 512,
            buf: &mut r_bad,
        },
        IoOp::Read {
            offset_bytes: 0,
            buf: &mut r_ok,
        },
        IoOp::Write {
            offset_bytes: 100 * 512,
            buf: &data,
            fua: true,
        },
        IoOp::Flush,
    ];
    let mut results: Vec<_> = (0..ops.len()).map(|_| Ok(())).collect();
    dev.submit_batch(&mut ops, &mut results);
    drop(ops);
    assert!(
        results[0].is_ok() && results[2].is_ok() && results[4].is_ok(),
        "{results:?}"
    );
    assert!(is_eio(&results[1]) && is_eio(&results[3]), "{results:?}");
    assert_eq!(&r_ok[..], &data[..]);
    // The inner device itself is untouched by the faults.
    mem.read_at(&mut buf, 11 * 512).unwrap();

    dev.set_fail_flush(true);
    assert!(is_eio(&dev.flush()));
    dev.set_fail_flush(false);
    dev.flush().unwrap();

    dev.set_not_ready(Some("demoting".into()));
    assert!(
        matches!(dev.read_at(&mut buf, 0), Err(BlockError::NotReady(ref m)) if m == "demoting")
    );
    assert!(matches!(dev.flush(), Err(BlockError::NotReady(_))));
    dev.set_not_ready(None);
    dev.read_at(&mut buf, 0).unwrap();

    dev.clear_lba_faults();
    dev.read_at(&mut buf, 11 * 512).unwrap();
    assert!(dev.injected_errors() > 0);

    dev.set_latency_us(20_000);
    let t = Instant::now();
    dev.read_at(&mut buf, 0).unwrap();
    assert!(t.elapsed() >= Duration::from_millis(20));
    dev.clear_all();
    assert_eq!(dev.latency_us(), 0);
}

#[test]
fn concurrent_io_from_many_threads() {
    let dir = disk_tempdir();
    let mut devs: Vec<Arc<dyn BlockDevice>> = vec![Arc::new(MemDevice::new(16 * MIB, 512))];
    for engine in ENGINES {
        let path = dir.path().join(format!("conc-{engine}.img"));
        devs.push(Arc::new(
            FileDevice::open(&path, &opts(engine, DirectPreference::Auto, 16 * MIB)).unwrap(),
        ));
    }
    for dev in devs {
        let threads: Vec<_> = (0..8u8)
            .map(|t| {
                let dev = dev.clone();
                std::thread::spawn(move || {
                    let base = u64::from(t) * 2 * MIB;
                    for i in 0..64u64 {
                        let data = pattern(16384, t.wrapping_add(i as u8));
                        let off = base + i * 16384;
                        dev.write_at(&data, off, i % 8 == 0).unwrap();
                        let mut back = zeroed(16384);
                        dev.read_at(&mut back, off).unwrap();
                        assert_eq!(&back[..], &data[..]);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }
}

/// Block devices need root and a loop device: run with `--ignored` where available.
#[test]
#[ignore]
fn loop_device_round_trip() {
    let dir = disk_tempdir();
    let img = dir.path().join("loop.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(64 * MIB)
        .unwrap();
    let out = std::process::Command::new("losetup")
        .args(["--find", "--show", "--sector-size", "4096"])
        .arg(&img)
        .output();
    let Ok(out) = out else {
        println!("SKIP: losetup not available");
        return;
    };
    if !out.status.success() {
        println!(
            "SKIP: losetup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    let loopdev = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().to_string());
    let result = std::panic::catch_unwind(|| {
        for engine in ENGINES {
            let o = FileOptions {
                engine,
                ..FileOptions::default()
            };
            let dev = FileDevice::open(&loopdev, &o).unwrap();
            println!("{}", dev.describe());
            assert!(dev.is_block_device());
            assert_eq!(dev.size_bytes(), 64 * MIB);
            assert_eq!(dev.logical_block_size(), 4096);
            // Start from zeros (the previous engine's run wrote to it).
            dev.discard(0, dev.size_bytes()).unwrap();
            round_trip(&dev);
            discard_test(&dev);
            // The device is claimed exclusively while open.
            assert!(FileDevice::open(&loopdev, &FileOptions::default()).is_err());
            drop(dev);
            let o = FileOptions {
                create_size_bytes: Some(MIB),
                ..FileOptions::default()
            };
            assert!(FileDevice::open(&loopdev, &o).is_err());
            let o = FileOptions {
                logical_block_size: Some(512),
                ..FileOptions::default()
            };
            assert!(FileDevice::open(&loopdev, &o).is_err());
        }
    });
    let _ = std::process::Command::new("losetup")
        .arg("-d")
        .arg(&loopdev)
        .status();
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
}
