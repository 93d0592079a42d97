//! Jobs on disk: each job's inputs, checkpoint, result and record live in
//! `DIR/jobs/<id>/`, so a master killed at any moment starts again where it was.
//!
//! The record (`job.json`) is written to a temporary file and renamed, and C
//! is renamed into place before the record says "done": a record never
//! claims what the disk does not hold.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::io::{Format, InputError};

/// Where a job is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Stored, waiting for room to run.
    Queued,
    /// Its tiles are being computed.
    Running,
    /// C is stored.
    Done,
    Cancelled,
    Failed,
}

impl State {
    /// Whether the job will still change by itself.
    pub fn is_live(self) -> bool {
        matches!(self, State::Queued | State::Running)
    }

    pub fn name(self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Running => "running",
            State::Done => "done",
            State::Cancelled => "cancelled",
            State::Failed => "failed",
        }
    }
}

/// What is known of a job across restarts.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub state: State,
    /// The inputs' file names in the job's folder (their extensions name their formats).
    pub a: String,
    pub b: String,
    /// C = A·B is m×n, with inner dimension k.
    pub m: usize,
    pub k: usize,
    pub n: usize,
    /// A larger share of the pool than a job of priority 1 (the default).
    pub priority: u32,
    /// Seconds since the Unix epoch (to the microsecond: jobs are listed in submission order).
    pub submitted: f64,
    pub finished: Option<f64>,
    /// Why it failed, for a failed job.
    pub error: Option<String>,
    /// Whether every entry of A and B is an integer (C is then written as integers).
    pub integer: bool,
}

/// The jobs folder.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// Opens (creating) `dir/jobs`.
    pub fn open(dir: &Path) -> Result<Self, InputError> {
        let root = dir.join("jobs");
        fs::create_dir_all(&root).map_err(|e| InputError::new(dir, format!("cannot create the data folder: {e}")))?;
        Ok(Self { root })
    }

    /// A new job's folder, empty, and durably listed (AlreadyExists if the id is taken).
    pub fn create(&self, id: &str) -> std::io::Result<PathBuf> {
        let dir = self.folder(id);
        fs::create_dir(&dir)?;
        fs::File::open(&self.root)?.sync_all()?;
        Ok(dir)
    }

    pub fn folder(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    pub fn checkpoint(&self, id: &str) -> PathBuf {
        self.folder(id).join("checkpoint")
    }

    /// Where C is kept, in `.npy`; other formats are made from it on request.
    pub fn result(&self, id: &str, format: Format) -> PathBuf {
        self.folder(id).join(format!("c.{}", format.extension()))
    }

    pub fn input(&self, record: &Record, which: char) -> PathBuf {
        self.folder(&record.id).join(if which == 'a' { &record.a } else { &record.b })
    }

    /// Writes `record` durably: a temporary file, synced, renamed over the old.
    pub fn save(&self, record: &Record) -> anyhow::Result<()> {
        let dir = self.folder(&record.id);
        let tmp = dir.join(".job.json.tmp");
        let text = serde_json::to_vec_pretty(record)?;
        let write = || -> std::io::Result<()> {
            let file = fs::File::create(&tmp)?;
            std::io::Write::write_all(&mut &file, &text)?;
            file.sync_all()?;
            fs::rename(&tmp, dir.join("job.json"))?;
            fs::File::open(&dir)?.sync_all()
        };
        write().with_context(|| format!("cannot record job {} in {}", record.id, dir.display()))
    }

    /// Every job recorded, oldest first. A folder with no record at all (a
    /// submission cut short) is removed; one whose record cannot be read is
    /// left alone, with a warning: it may hold someone's C.
    pub fn load_all(&self) -> anyhow::Result<Vec<Record>> {
        let mut records = Vec::new();
        for entry in fs::read_dir(&self.root).with_context(|| format!("cannot list {}", self.root.display()))? {
            let dir = entry?.path();
            let bytes = match fs::read(dir.join("job.json")) {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    tracing::warn!("removing {}: an unfinished submission", dir.display());
                    let _ = fs::remove_dir_all(&dir);
                    continue;
                }
                Err(e) => {
                    tracing::warn!("skipping {}: cannot read its record: {e}", dir.display());
                    continue;
                }
            };
            match serde_json::from_slice::<Record>(&bytes) {
                Ok(r) if dir.file_name().is_some_and(|n| *n == *r.id) => records.push(r),
                Ok(r) => tracing::warn!("skipping {}: its record is job {}'s", dir.display(), r.id),
                Err(e) => tracing::warn!("skipping {}: its record is damaged: {e}", dir.display()),
            }
        }
        records.sort_by(|x, y| x.submitted.total_cmp(&y.submitted).then_with(|| x.id.cmp(&y.id)));
        Ok(records)
    }

    /// Removes a job's folder and all it holds.
    pub fn remove(&self, id: &str) {
        let _ = fs::remove_dir_all(self.folder(id));
    }
}

pub fn now_secs() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, submitted: f64) -> Record {
        Record {
            id: id.into(),
            state: State::Queued,
            a: "a.npy".into(),
            b: "b.csv".into(),
            m: 2,
            k: 3,
            n: 4,
            priority: 1,
            submitted,
            finished: None,
            error: None,
            integer: true,
        }
    }

    #[test]
    fn records_survive_a_reopen_in_order_and_half_submissions_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for (id, t) in [("bbbb", 20.0), ("aaaa", 10.0)] {
            store.create(id).unwrap();
            store.save(&record(id, t)).unwrap();
        }
        store.create("cut-short").unwrap();
        let mut done = record("bbbb", 20.0);
        done.state = State::Done;
        store.save(&done).unwrap();
        let again = Store::open(dir.path()).unwrap().load_all().unwrap();
        let seen: Vec<(&str, State)> = again.iter().map(|r| (r.id.as_str(), r.state)).collect();
        assert_eq!(seen, [("aaaa", State::Queued), ("bbbb", State::Done)]);
        assert!(!store.folder("cut-short").exists());
    }

    #[test]
    fn a_record_for_another_folder_or_a_damaged_one_is_not_trusted_nor_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.create("real").unwrap();
        store.save(&record("real", 1.0)).unwrap();
        fs::rename(store.folder("real"), store.folder("moved")).unwrap();
        store.create("torn").unwrap();
        fs::write(store.folder("torn").join("job.json"), b"{\"id\": \"torn\", \"sta").unwrap();
        assert!(store.load_all().unwrap().is_empty());
        assert!(store.folder("moved").exists() && store.folder("torn").exists(), "kept for a person to look at");
        assert_eq!(store.create("torn").unwrap_err().kind(), std::io::ErrorKind::AlreadyExists);
    }
}
