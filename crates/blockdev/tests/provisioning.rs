//! Thin provisioning through the public API: `supports_discard` and
//! `provisioning_status` of the file and memory backends.

use std::os::unix::fs::MetadataExt;

use twinsan_blockdev::{
    BlockDevice, DirectPreference, EnginePreference, FaultDevice, FileDevice, FileOptions, IoBuf,
    MemDevice,
};

const MIB: u64 = 1 << 20;

fn filled(len: usize, byte: u8) -> IoBuf {
    let mut b = IoBuf::with_capacity(len);
    b.resize(len);
    b.fill(byte);
    b
}

/// Walk `[0, size)` with `provisioning_status` and return the extents found.
fn extents(dev: &dyn BlockDevice) -> Vec<(bool, u64, u64)> {
    let size = dev.size_bytes();
    let bs = u64::from(dev.logical_block_size());
    let mut out: Vec<(bool, u64, u64)> = Vec::new();
    let mut at = 0;
    while at < size {
        let (mapped, len) = dev.provisioning_status(at, size - at).unwrap();
        assert!(len > 0 && len % bs == 0 && at + len <= size, "{at} {len}");
        match out.last_mut() {
            Some(last) if last.0 == mapped && last.1 + last.2 == at => last.2 += len,
            _ => out.push((mapped, at, len)),
        }
        at += len;
    }
    out
}

#[test]
fn default_is_fully_mapped_and_without_discard() {
    #[derive(Debug)]
    struct Plain;
    impl BlockDevice for Plain {
        fn size_bytes(&self) -> u64 {
            MIB
        }
        fn logical_block_size(&self) -> u32 {
            512
        }
        fn read_at(&self, _: &mut [u8], _: u64) -> twinsan_blockdev::BlockResult<()> {
            Ok(())
        }
        fn write_at(&self, _: &[u8], _: u64, _: bool) -> twinsan_blockdev::BlockResult<()> {
            Ok(())
        }
        fn flush(&self) -> twinsan_blockdev::BlockResult<()> {
            Ok(())
        }
        fn write_cache_enabled(&self) -> bool {
            false
        }
        fn engine(&self) -> twinsan_blockdev::EngineKind {
            twinsan_blockdev::EngineKind::Memory
        }
    }
    assert!(!Plain.supports_discard());
    assert_eq!(Plain.provisioning_status(512, 1024).unwrap(), (true, 1024));
    assert!(Plain.provisioning_status(MIB, 512).is_err());
    assert!(Plain.provisioning_status(100, 512).is_err());
}

#[test]
fn memory_device_reports_chunks() {
    let dev = MemDevice::new(4 * MIB, 512);
    assert!(dev.supports_discard());
    assert_eq!(extents(&dev), vec![(false, 0, 4 * MIB)]);
    dev.write_at(&filled(512, 7), MIB + 512, false).unwrap();
    assert_eq!(
        extents(&dev),
        vec![(false, 0, MIB), (true, MIB, MIB), (false, 2 * MIB, 2 * MIB)]
    );
    // The status is reported from the requested offset, limited to the request.
    assert_eq!(
        dev.provisioning_status(MIB + 4096, 512).unwrap(),
        (true, 512)
    );
    assert_eq!(
        dev.provisioning_status(512, 3 * MIB).unwrap(),
        (false, MIB - 512)
    );
    dev.discard(MIB, MIB).unwrap();
    assert_eq!(extents(&dev), vec![(false, 0, 4 * MIB)]);
    // Through a wrapper.
    let fault = FaultDevice::new(std::sync::Arc::new(MemDevice::new(MIB, 512)));
    assert!(fault.supports_discard());
    assert_eq!(fault.provisioning_status(0, MIB).unwrap(), (false, MIB));
}

#[test]
fn file_device_reports_holes_and_data() {
    let dir = tempfile::tempdir().unwrap();
    for (i, engine) in [EnginePreference::Sync, EnginePreference::Uring]
        .into_iter()
        .enumerate()
    {
        let path = dir.path().join(format!("thin-{i}.img"));
        let opts = FileOptions {
            create_size_bytes: Some(8 * MIB),
            engine,
            direct: DirectPreference::Off,
            ..FileOptions::default()
        };
        let dev = FileDevice::open(&path, &opts).unwrap();
        assert!(dev.supports_discard());
        let probe = extents(&dev);
        if probe != vec![(false, 0, 8 * MIB)] {
            // A file system without SEEK_HOLE support reports everything mapped.
            assert_eq!(probe, vec![(true, 0, 8 * MIB)]);
            println!(
                "SKIP: no SEEK_DATA/SEEK_HOLE under {}",
                dir.path().display()
            );
            return;
        }
        dev.write_at(&filled(2 * MIB as usize, 0xA5), 2 * MIB, false)
            .unwrap();
        dev.flush().unwrap();
        assert_eq!(
            extents(&dev),
            vec![
                (false, 0, 2 * MIB),
                (true, 2 * MIB, 2 * MIB),
                (false, 4 * MIB, 4 * MIB)
            ]
        );
        let blocks_before = std::fs::metadata(&path).unwrap().blocks();
        dev.discard(2 * MIB, MIB).unwrap();
        dev.flush().unwrap();
        assert!(std::fs::metadata(&path).unwrap().blocks() < blocks_before);
        assert_eq!(
            extents(&dev),
            vec![
                (false, 0, 3 * MIB),
                (true, 3 * MIB, MIB),
                (false, 4 * MIB, 4 * MIB)
            ]
        );
        let mut back = filled(MIB as usize, 1);
        dev.read_at(&mut back, 2 * MIB).unwrap();
        assert!(back.iter().all(|&b| b == 0));
        // Queries that start inside an extent, and a range limit inside one.
        assert_eq!(
            dev.provisioning_status(3 * MIB + 512, 4096).unwrap(),
            (true, 4096)
        );
        assert_eq!(dev.provisioning_status(512, MIB).unwrap(), (false, MIB));
        assert!(dev.provisioning_status(8 * MIB, 512).is_err());
    }
}
