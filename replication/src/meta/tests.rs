//! [`MetaStore`] against memory, fault-injecting and file devices.

use std::sync::Arc;

use twinsan_blockdev::{BlockDevice, FaultDevice, FileDevice, FileOptions, MemDevice};

use super::*;
use crate::bitmap::Bitmap;
use crate::types::{AL_EXTENT_BYTES, UUID_JUST_CREATED};

const MIB: u64 = 1 << 20;
const UUID: [u8; 16] = *b"twinsan-volume-1";

fn mem(size_bytes: u64) -> Arc<dyn BlockDevice> {
    Arc::new(MemDevice::new(size_bytes, 512))
}

fn internal_opts() -> CreateOptions {
    CreateOptions::new(UUID, 0, 1, true)
}

fn external_opts(data_size_bytes: u64) -> CreateOptions {
    CreateOptions {
        data_size_bytes: Some(data_size_bytes),
        ..CreateOptions::new(UUID, 1, 0, false)
    }
}

#[test]
fn internal_create_open_round_trip() {
    let dev = mem(64 * MIB);
    let layout = MetaStore::create(dev.clone(), &internal_opts()).unwrap();
    assert_eq!(layout, internal_layout(64 * MIB, DEFAULT_AL_SLOTS).unwrap());
    let (store, m) = MetaStore::open(dev, true).unwrap();
    assert_eq!(store.layout(), &layout);
    assert_eq!(m.layout, layout);
    let sb = m.superblock;
    assert_eq!(sb.flags, 0);
    assert_eq!(sb.volume_uuid, UUID);
    assert_eq!((sb.node_id, sb.peer_node_id), (0, 1));
    assert_eq!(sb.gens.current, UUID_JUST_CREATED);
    assert_eq!((sb.gens.bitmap, sb.gens.history), (0, [0; 4]));
    assert_eq!(sb.al_extents_max, DEFAULT_AL_EXTENTS_MAX);
    assert_eq!(m.bitmap.len_bits(), layout.data_size_bytes / 4096);
    assert_eq!(m.bitmap.weight(), 0);
    assert!(m.bitmap.dirty_pages().is_empty());
    assert!(m.al_extents.is_empty());
    assert_eq!(
        layout.usable_size_bytes(),
        64 * MIB - 4096 - 8 * 4096 - 4096
    );
}

#[test]
fn external_create_open_round_trip() {
    let meta = mem(4 * MIB);
    let layout = MetaStore::create(meta.clone(), &external_opts(10 << 30)).unwrap();
    assert!(!layout.internal);
    assert_eq!(layout.data_size_bytes, 10 << 30);
    assert_eq!(layout.bitmap_bytes, 320 * 1024);
    let (_, m) = MetaStore::open(meta.clone(), false).unwrap();
    assert_eq!(m.layout, layout);
    assert_eq!(m.superblock.node_id, 1);
    // Opening it as internal finds nothing at the end of the device.
    assert!(matches!(
        MetaStore::open(meta, true),
        Err(MetaError::NoMetadata)
    ));
}

#[test]
fn external_too_small_names_the_size() {
    let e = MetaStore::create(mem(64 * 1024), &external_opts(100 << 30)).unwrap_err();
    let need = external_layout(u64::MAX, 100 << 30, 8)
        .unwrap()
        .meta_size_bytes;
    match &e {
        MetaError::DeviceTooSmall {
            need_bytes,
            have_bytes,
        } => assert_eq!((*need_bytes, *have_bytes), (need, 64 * 1024)),
        e => panic!("{e}"),
    }
    assert!(e.to_string().contains(&need.to_string()));
}

#[test]
fn bad_options() {
    let dev = mem(64 * MIB);
    let mut o = internal_opts();
    o.peer_node_id = 0;
    assert!(matches!(
        MetaStore::create(dev.clone(), &o),
        Err(MetaError::InvalidArgument(_))
    ));
    let mut o = internal_opts();
    o.al_extents_max = AL_EXTENTS_CAPACITY + 1;
    assert!(matches!(
        MetaStore::create(dev.clone(), &o),
        Err(MetaError::InvalidArgument(_))
    ));
    let o = CreateOptions::new(UUID, 0, 1, false); // external without a data size
    assert!(matches!(
        MetaStore::create(dev.clone(), &o),
        Err(MetaError::InvalidArgument(_))
    ));
    let o = CreateOptions::new([0; 16], 0, 1, true);
    assert!(matches!(
        MetaStore::create(dev, &o),
        Err(MetaError::InvalidArgument(_))
    ));
    let big_blocks: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(64 * MIB, 8192));
    assert!(matches!(
        MetaStore::create(big_blocks, &internal_opts()),
        Err(MetaError::InvalidArgument(_))
    ));
}

#[test]
fn blank_device_has_no_metadata() {
    assert!(matches!(
        MetaStore::open(mem(64 * MIB), true),
        Err(MetaError::NoMetadata)
    ));
    assert!(matches!(
        MetaStore::open(mem(64 * MIB), false),
        Err(MetaError::NoMetadata)
    ));
}

#[test]
fn create_twice_refuses_without_force() {
    let dev = mem(64 * MIB);
    let layout = MetaStore::create(dev.clone(), &internal_opts()).unwrap();
    let mut o = internal_opts();
    o.volume_uuid = [9; 16];
    let e = MetaStore::create(dev.clone(), &o).unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(&e, MetaError::Exists { offset_bytes, .. } if *offset_bytes == layout.superblock_offset_bytes),
        "{e}"
    );
    assert!(msg.contains("--force"), "{msg}");
    assert!(
        msg.contains("7477696e-7361-6e2d-766f-6c756d652d31"),
        "{msg}"
    );
    assert!(msg.contains("node id 0"), "{msg}");
    // Still the old metadata.
    assert_eq!(
        MetaStore::open(dev.clone(), true)
            .unwrap()
            .1
            .superblock
            .volume_uuid,
        UUID
    );
    o.force = true;
    MetaStore::create(dev.clone(), &o).unwrap();
    assert_eq!(
        MetaStore::open(dev, true).unwrap().1.superblock.volume_uuid,
        [9; 16]
    );
}

#[test]
fn damaged_superblock_also_blocks_create() {
    let dev = mem(64 * MIB);
    let layout = MetaStore::create(dev.clone(), &internal_opts()).unwrap();
    flip_byte(&*dev, layout.superblock_offset_bytes + 100);
    let e = MetaStore::create(dev, &internal_opts()).unwrap_err();
    assert!(matches!(e, MetaError::Exists { .. }), "{e}");
    assert!(e.to_string().contains("damaged"), "{e}");
}

fn flip_byte(dev: &dyn BlockDevice, at: u64) {
    let block = at - at % 4096;
    let mut b = vec![0u8; 4096];
    dev.read_at(&mut b, block).unwrap();
    b[(at - block) as usize] ^= 0x20;
    dev.write_at(&b, block, false).unwrap();
}

#[test]
fn internal_create_refuses_over_data_in_the_tail() {
    let dev = mem(64 * MIB);
    let layout = internal_layout(64 * MIB, DEFAULT_AL_SLOTS).unwrap();
    let at = layout.meta_offset_bytes + 8192;
    dev.write_at(&[0xaa; 512], at, false).unwrap();
    let e = MetaStore::create(dev.clone(), &internal_opts()).unwrap_err();
    match &e {
        MetaError::WouldOverwriteData {
            offset_bytes,
            nonzero_bytes,
            ..
        } => assert_eq!((*offset_bytes, *nonzero_bytes), (at, 512)),
        e => panic!("{e}"),
    }
    let msg = e.to_string();
    for want in [
        "512 non-zero bytes",
        &at.to_string(),
        "external metadata",
        "--force",
    ] {
        assert!(msg.contains(want), "{want:?} missing: {msg}");
    }
    // With force it goes ahead.
    let mut o = internal_opts();
    o.force = true;
    MetaStore::create(dev.clone(), &o).unwrap();
    MetaStore::open(dev, true).unwrap();
}

fn write_ext4_signature(dev: &dyn BlockDevice, fs_size_bytes: u64) {
    let mut head = vec![0u8; 4096];
    head[1080..1082].copy_from_slice(&0xef53u16.to_le_bytes());
    head[1028..1032].copy_from_slice(&((fs_size_bytes / 4096) as u32).to_le_bytes());
    head[1048..1052].copy_from_slice(&2u32.to_le_bytes());
    dev.write_at(&head, 0, false).unwrap();
}

#[test]
fn internal_create_refuses_a_file_system_that_does_not_fit() {
    let dev = mem(64 * MIB);
    let layout = internal_layout(64 * MIB, DEFAULT_AL_SLOTS).unwrap();
    // A file system spanning the whole device; its tail is still zero.
    write_ext4_signature(&*dev, 64 * MIB);
    let e = MetaStore::create(dev.clone(), &internal_opts()).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, MetaError::WouldOverwriteData { .. }), "{msg}");
    assert!(msg.contains("ext2/3/4"), "{msg}");
    assert!(msg.contains(&layout.data_size_bytes.to_string()), "{msg}");
    // Shrunk to fit: accepted.
    write_ext4_signature(&*dev, layout.data_size_bytes);
    MetaStore::create(dev, &internal_opts()).unwrap();
}

#[test]
fn external_create_refuses_a_used_meta_device() {
    let meta = mem(4 * MIB);
    write_ext4_signature(&*meta, 4 * MIB);
    let e = MetaStore::create(meta.clone(), &external_opts(1 << 30)).unwrap_err();
    assert!(e.to_string().contains("ext2/3/4"), "{e}");
    let mut o = external_opts(1 << 30);
    o.force = true;
    MetaStore::create(meta, &o).unwrap();
}

#[test]
fn superblock_corruption_is_a_bad_checksum() {
    let dev = mem(64 * MIB);
    let layout = MetaStore::create(dev.clone(), &internal_opts()).unwrap();
    flip_byte(&*dev, layout.superblock_offset_bytes + 50);
    let e = MetaStore::open(dev, true).unwrap_err();
    assert!(matches!(e, MetaError::BadChecksum { .. }), "{e}");
    assert!(
        e.to_string()
            .contains(&layout.superblock_offset_bytes.to_string()),
        "{e}"
    );
}

#[test]
fn superblock_updates_persist() {
    let dev = mem(64 * MIB);
    MetaStore::create(dev.clone(), &internal_opts()).unwrap();
    let (mut store, m) = MetaStore::open(dev.clone(), true).unwrap();
    let mut sb = m.superblock;
    sb.set_flag(sb_flag::CONSISTENT | sb_flag::WAS_PRIMARY, true);
    sb.gens.current = 0xdead_beef_0001;
    sb.gens.history = [1, 2, 3, 4];
    sb.primary_since_ms = 42;
    store.write_superblock(&sb).unwrap();
    assert_eq!(MetaStore::open(dev, true).unwrap().1.superblock, sb);
    // Layout and volume cannot change through it.
    let mut other = sb;
    other.layout.al_slots = 9;
    assert!(matches!(
        store.write_superblock(&other),
        Err(MetaError::InvalidArgument(_))
    ));
    let mut other = sb;
    other.peer_node_id = other.node_id;
    assert!(matches!(
        store.write_superblock(&other),
        Err(MetaError::InvalidArgument(_))
    ));
    let mut other = sb;
    other.volume_uuid = [3; 16];
    assert!(matches!(
        store.write_superblock(&other),
        Err(MetaError::InvalidArgument(_))
    ));
}

#[test]
fn bitmap_pages_survive_reopen() {
    // 300 MiB of data: three bitmap pages.
    let dev = mem(300 * MIB);
    MetaStore::create(dev.clone(), &internal_opts()).unwrap();
    let (mut store, mut m) = MetaStore::open(dev.clone(), true).unwrap();
    assert_eq!(m.bitmap.page_count(), 3);
    let b = &mut m.bitmap;
    b.set_range_bytes(0, 3 * 4096);
    b.set_range_bytes(200 * MIB, 1);
    b.set_bits(b.len_bits() - 1, 1);
    assert_eq!(b.dirty_pages(), vec![0, 1, 2]);
    store.write_bitmap_page(b, 0).unwrap();
    assert_eq!(b.dirty_pages(), vec![1, 2]);
    // Page 1 stays unwritten: its bit is lost on reopen; pages 0 and 2 survive.
    store.write_bitmap_page(b, 2).unwrap();
    let (_, m2) = MetaStore::open(dev.clone(), true).unwrap();
    assert_eq!(m2.bitmap.weight(), 4);
    assert!(m2.bitmap.test(b.len_bits() - 1));
    assert!(!m2.bitmap.test(200 * MIB / 4096));
    assert_eq!(store.write_bitmap_dirty(b).unwrap(), 1);
    assert!(b.dirty_pages().is_empty());
    let (_, m3) = MetaStore::open(dev.clone(), true).unwrap();
    assert_eq!(m3.bitmap.words(), b.words());
    assert!(m3.bitmap.dirty_pages().is_empty());
    // write_bitmap_all after clearing.
    b.clear_all();
    b.set_bits(12345, 1);
    store.write_bitmap_all(b).unwrap();
    let (_, m4) = MetaStore::open(dev, true).unwrap();
    assert_eq!(m4.bitmap.words(), b.words());
    // A bitmap of another size is refused.
    assert!(matches!(
        store.write_bitmap_all(&mut Bitmap::new(10)),
        Err(MetaError::InvalidArgument(_))
    ));
    assert!(matches!(
        store.write_bitmap_page(b, 3),
        Err(MetaError::InvalidArgument(_))
    ));
}

#[test]
fn activity_log_recovers_after_wrapping() {
    let dev = mem(1 << 30);
    let layout = MetaStore::create(dev.clone(), &internal_opts()).unwrap();
    let (mut store, _) = MetaStore::open(dev.clone(), true).unwrap();
    // 20 transactions through 8 slots; transaction t (1-based) holds {t, t+100}.
    for t in 1..=20u32 {
        store.write_al(&[t, t + 100]).unwrap();
    }
    let (mut store, m) = MetaStore::open(dev.clone(), true).unwrap();
    assert_eq!(m.al_extents, vec![20, 120]);
    // Writing continues after the newest, then a torn newest slot falls back one.
    store.write_al(&[7]).unwrap(); // transaction 21, slot 4
    let (_, m) = MetaStore::open(dev.clone(), true).unwrap();
    assert_eq!(m.al_extents, vec![7]);
    flip_byte(&*dev, layout.al_slot_offset_bytes(4) + 3000);
    let (mut store, m) = MetaStore::open(dev.clone(), true).unwrap();
    assert_eq!(m.al_extents, vec![20, 120]);
    // The next transaction goes into the torn slot and wins again.
    store.write_al(&[]).unwrap();
    let (_, m) = MetaStore::open(dev.clone(), true).unwrap();
    assert!(m.al_extents.is_empty());
    // Every slot garbage: empty set.
    for s in 0..layout.al_slots {
        dev.write_at(&[0x5a; 4096], layout.al_slot_offset_bytes(s), false)
            .unwrap();
    }
    let (_, m) = MetaStore::open(dev, true).unwrap();
    assert!(m.al_extents.is_empty());
}

#[test]
fn activity_log_limits() {
    let dev = mem(64 * MIB);
    let mut o = internal_opts();
    o.al_extents_max = 3;
    MetaStore::create(dev.clone(), &o).unwrap();
    let (mut store, m) = MetaStore::open(dev, true).unwrap();
    let e = store.write_al(&[0, 1, 2, 3]).unwrap_err();
    assert!(
        matches!(e, MetaError::TooManyExtents { count: 4, max: 3 }),
        "{e}"
    );
    // 64 MiB of data minus metadata: extents 0..=15.
    assert_eq!(m.layout.al_extent_count(), 16);
    store.write_al(&[15]).unwrap();
    assert!(matches!(
        store.write_al(&[16]),
        Err(MetaError::InvalidArgument(_))
    ));
    // Raising the limit through the superblock.
    let mut sb = m.superblock;
    sb.al_extents_max = 4;
    store.write_superblock(&sb).unwrap();
    store.write_al(&[0, 1, 2, 3]).unwrap();
}

#[test]
fn applying_the_activity_log_marks_whole_extents() {
    let dev = mem(64 * MIB);
    MetaStore::create(dev.clone(), &internal_opts()).unwrap();
    let (mut store, _) = MetaStore::open(dev.clone(), true).unwrap();
    store.write_al(&[1, 15]).unwrap();
    let (_, mut m) = MetaStore::open(dev, true).unwrap();
    let per_extent = AL_EXTENT_BYTES / 4096;
    // Extent 15 is the last one and partly beyond the data.
    let last_bits = m.bitmap.len_bits() - 15 * per_extent;
    assert_eq!(m.apply_al_to_bitmap(), per_extent + last_bits);
    assert_eq!(m.bitmap.next_set(0), Some(per_extent));
    assert_eq!(m.bitmap.run_len(per_extent, u64::MAX), per_extent);
    assert_eq!(m.bitmap.dirty_pages(), vec![0]);
}

#[test]
fn interrupted_create_leaves_no_valid_superblock() {
    let mem_dev = mem(64 * MIB);
    let layout = MetaStore::create(mem_dev.clone(), &internal_opts()).unwrap();
    let fault = Arc::new(FaultDevice::new(mem_dev.clone()));
    // The bitmap area cannot be written: create fails after zeroing the old superblock.
    fault.fail_writes(layout.bitmap_offset_bytes / 512, 8);
    let mut o = internal_opts();
    o.force = true;
    let e = MetaStore::create(fault.clone(), &o).unwrap_err();
    assert!(matches!(e, MetaError::Io(_)), "{e}");
    assert!(matches!(
        MetaStore::open(mem_dev, true),
        Err(MetaError::NoMetadata)
    ));
}

#[test]
fn file_device_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.img");
    let open = |create: bool| -> Arc<dyn BlockDevice> {
        let opts = FileOptions {
            create_size_bytes: create.then_some(200 * MIB),
            ..FileOptions::default()
        };
        Arc::new(FileDevice::open(&path, &opts).unwrap())
    };
    let layout = MetaStore::create(open(true), &internal_opts()).unwrap();
    let (mut store, mut m) = MetaStore::open(open(false), true).unwrap();
    m.bitmap.set_range_bytes(150 * MIB, 5 * 4096);
    store.write_bitmap_dirty(&mut m.bitmap).unwrap();
    store.write_al(&[3, 4]).unwrap();
    let mut sb = m.superblock;
    sb.set_flag(sb_flag::CONSISTENT, true);
    store.write_superblock(&sb).unwrap();
    drop(store);
    let (store, m2) = MetaStore::open(open(false), true).unwrap();
    assert_eq!(store.layout(), &layout);
    assert_eq!(m2.bitmap.words(), m.bitmap.words());
    assert_eq!(m2.bitmap.weight(), 5);
    assert_eq!(m2.al_extents, vec![3, 4]);
    assert!(m2.superblock.has(sb_flag::CONSISTENT));
}
