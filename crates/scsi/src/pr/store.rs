//! Where persistent reservation records live: the [`ReservationStore`] trait and the
//! two in-tree stores, [`MemReservationStore`] (tests, and LUs whose state must only
//! survive within the process) and [`FileReservationStore`] (a sidecar file).
//!
//! Owns: durability of one opaque record per logical unit. The engine calls
//! [`ReservationStore::save`] with the complete new record before a PERSISTENT RESERVE
//! OUT completes, and [`ReservationStore::load`] once when the LU is created. A store
//! that replicates the record to the peer head synchronously implements the same trait.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

/// Why a store could not load or save a record.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file (or directory) involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The store cannot take or give records now (e.g. the replica is unreachable, or a
    /// test injected a failure).
    #[error("reservation store unavailable: {0}")]
    Unavailable(String),
}

/// Durable storage for one logical unit's persistent reservation record.
pub trait ReservationStore: Send + Sync + std::fmt::Debug {
    /// The last record saved, or `None` if there is none.
    fn load(&self) -> Result<Option<Vec<u8>>, StoreError>;
    /// Replace the record; durable (on stable storage, or replicated) when this returns
    /// `Ok`. On `Err` the old or the new record may be the one a later `load` returns.
    fn save(&self, record: &[u8]) -> Result<(), StoreError>;
}

/// A record kept in memory, with failure injection for tests.
#[derive(Debug, Default)]
pub struct MemReservationStore {
    record: Mutex<Option<Vec<u8>>>,
    fail_saves: AtomicBool,
    saves: AtomicU64,
}

impl MemReservationStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// A store already holding `record` (any bytes, e.g. a corrupt record for tests).
    pub fn with_record(record: Vec<u8>) -> Self {
        let s = Self::default();
        *s.lock() = Some(record);
        s
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Vec<u8>>> {
        self.record.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The record held now.
    pub fn record(&self) -> Option<Vec<u8>> {
        self.lock().clone()
    }

    /// Make every following `save` fail (`true`) or succeed again (`false`).
    pub fn set_fail_saves(&self, fail: bool) {
        self.fail_saves.store(fail, Ordering::SeqCst);
    }

    /// Number of successful saves.
    pub fn saves(&self) -> u64 {
        self.saves.load(Ordering::SeqCst)
    }
}

impl ReservationStore for MemReservationStore {
    fn load(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.record())
    }

    fn save(&self, record: &[u8]) -> Result<(), StoreError> {
        if self.fail_saves.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("injected failure".into()));
        }
        *self.lock() = Some(record.to_vec());
        self.saves.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// A record in a file whose path the caller chooses (e.g. next to the volume's
/// metadata). `save` writes `<path>.tmp`, fsyncs it, renames it over `<path>` and fsyncs
/// the directory, so a crash leaves either the old or the new record, never a torn one.
#[derive(Debug, Clone)]
pub struct FileReservationStore {
    path: PathBuf,
}

impl FileReservationStore {
    /// A store at `path` (the file need not exist yet; its directory must).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The record file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn tmp_path(&self) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(".tmp");
        PathBuf::from(p)
    }

    fn dir(&self) -> &Path {
        match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        }
    }

    fn io(&self, path: &Path) -> impl FnOnce(io::Error) -> StoreError {
        let path = path.to_path_buf();
        move |source| StoreError::Io { path, source }
    }
}

impl ReservationStore for FileReservationStore {
    fn load(&self) -> Result<Option<Vec<u8>>, StoreError> {
        match fs::read(&self.path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io(&self.path)(e)),
        }
    }

    fn save(&self, record: &[u8]) -> Result<(), StoreError> {
        let tmp = self.tmp_path();
        let written = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            f.write_all(record)?;
            f.sync_all()
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(self.io(&tmp)(e));
        }
        if let Err(e) = fs::rename(&tmp, &self.path) {
            let _ = fs::remove_file(&tmp);
            return Err(self.io(&self.path)(e));
        }
        let dir = self.dir();
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(self.io(dir))
    }
}
