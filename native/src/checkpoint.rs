//! `--checkpoint DIR`: every verified block of C is recorded durably, so a
//! master killed at any point and run again with the same command resumes.
//!
//! - `DIR/manifest`: what the checkpoint is for: a fingerprint of A and B
//!   (xxh3-128 over their element type, shapes and bytes) and the tile grid
//!   (its row bands, column bands and depth slices, and the layout), written
//!   once the job is planned. A run that resumes keeps that grid.
//! - `DIR/block-NNNNNN`: one verified block of C (a row band by a column band,
//!   summed over depth): a header (magic, fingerprint, index, length,
//!   checksum), then its raw little-endian bytes, column-major.
//!
//! Each file is written under a temporary name, fsynced, renamed into place,
//! and the folder fsynced, so a file under its final name is whole. Blocks read
//! back are checked against their header here, then verified by the scheduler
//! like any worker's result.

use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;

use colonnade_core::DenseMatrix;
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

use crate::io::InputError;

const MANIFEST_MAGIC: &str = "colonnade checkpoint 2";
const BLOCK_MAGIC: &[u8; 8] = b"COLBLK01";
/// Magic, fingerprint, index, length, checksum.
const HEADER: usize = 8 + 16 + 8 + 8 + 8;
const TEMP_PREFIX: &str = ".tmp-";

/// What a checkpoint belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inputs {
    pub fingerprint: u128,
    /// For the person reading an error, e.g. "A 60x50, B 50x64, f64".
    pub description: String,
}

impl Inputs {
    pub fn of(a: &DenseMatrix, b: &DenseMatrix) -> Self {
        let mut hash = Xxh3::new();
        for m in [a, b] {
            hash.update(format!("{} {}x{};", m.dtype(), m.rows(), m.cols()).as_bytes());
            hash.update(m.as_bytes());
        }
        let description = format!("A {}, B {}, {}", a.shape_string(), b.shape_string(), a.dtype());
        Self { fingerprint: hash.digest128(), description }
    }
}

/// A plan's grid as a checkpoint records it: (row bands, column bands, depth
/// slices) and the layout (workers along each).
pub type Grid = ((usize, usize, usize), (usize, usize, usize));

/// An open checkpoint folder.
#[derive(Debug)]
pub struct Checkpoint {
    dir: PathBuf,
    fingerprint: u128,
    description: String,
    /// The grid, once the job has been planned (by this run or an earlier one).
    pub grid: Option<Grid>,
}

/// A block read back from the folder.
#[derive(Debug)]
pub struct SavedBlock {
    pub index: usize,
    pub bytes: Vec<u8>,
}

impl Checkpoint {
    /// Opens `dir` for `inputs`. A folder with a manifest for other inputs is
    /// refused; one with none starts a checkpoint, whose manifest [`Self::begin`] writes.
    pub fn open(dir: &Path, inputs: &Inputs) -> Result<Self, InputError> {
        let err = |problem: String| InputError::new(dir, problem);
        const START_OVER: &str = "use another --checkpoint folder, or delete this one to start over";
        fs::create_dir_all(dir).map_err(|e| err(format!("cannot create the checkpoint folder: {e}")))?;
        let fresh = Self { dir: dir.to_owned(), fingerprint: inputs.fingerprint, description: inputs.description.clone(), grid: None };
        match fs::read_to_string(dir.join("manifest")) {
            Ok(text) => {
                let (fingerprint, description, grid) = parse_manifest(&text)
                    .ok_or_else(|| err(format!("the manifest is damaged, or not a Colonnade checkpoint's; {START_OVER}")))?;
                if fingerprint != inputs.fingerprint {
                    let these = &inputs.description;
                    return Err(err(format!("this checkpoint belongs to other inputs (it has {description}; these are {these}); {START_OVER}")));
                }
                Ok(Self { grid: Some(grid), ..fresh })
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(fresh),
            Err(e) => Err(err(format!("cannot read the manifest: {e}"))),
        }
    }

    /// Whether a job was planned into `dir` (its manifest is written), so that
    /// opening it for the same inputs resumes. Cheap: the inputs are not needed.
    pub fn has_begun(dir: &Path) -> bool {
        dir.join("manifest").exists()
    }

    /// Records the job's grid, once it is planned: from here on a restart resumes.
    pub fn begin(&mut self, grid: Grid) -> Result<(), InputError> {
        let ((pr, pc, pk), (wr, wc, wk)) = grid;
        let text = format!(
            "{MANIFEST_MAGIC}\ninputs {:032x}\ngrid {pr}x{pc}x{pk} layout {wr}x{wc}x{wk}\ndescription {}\n",
            self.fingerprint, self.description
        );
        write_durably(&self.dir, "manifest", &[text.as_bytes()]).map_err(|e| InputError::new(&self.dir, format!("cannot write the manifest: {e}")))?;
        self.grid = Some(grid);
        Ok(())
    }

    /// The saved blocks that are whole and belong here. `block_len(i)` is the
    /// byte length of block i, or `None` if there is no such block. Anything
    /// else (a damaged block, a leftover temporary file) is removed, with a warning.
    pub fn saved_blocks(&self, block_len: impl Fn(usize) -> Option<usize>) -> Vec<SavedBlock> {
        let mut blocks = Vec::new();
        let Ok(entries) = fs::read_dir(&self.dir) else { return blocks };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if name.starts_with(TEMP_PREFIX) {
                let _ = fs::remove_file(&path); // a write cut short
                continue;
            }
            let Some(index) = name.strip_prefix("block-").and_then(|i| i.parse::<usize>().ok()) else { continue };
            let checked = fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|bytes| parse_block(&bytes, self.fingerprint, index, block_len(index)).map(|()| bytes));
            match checked {
                Ok(mut bytes) => {
                    bytes.drain(..HEADER);
                    blocks.push(SavedBlock { index, bytes });
                }
                Err(problem) => {
                    tracing::warn!("checkpoint: discarding {} ({problem}); it will be computed again", path.display());
                    let _ = fs::remove_file(&path);
                }
            }
        }
        blocks.sort_by_key(|b| b.index);
        blocks
    }

    /// Removes block `index`, e.g. one that failed verification when read back.
    pub fn discard(&self, index: usize) {
        let _ = fs::remove_file(self.dir.join(format!("block-{index:06}")));
    }

    /// Starts the thread that records blocks, so the driver never waits on the disk.
    pub fn writer(&self) -> Writer {
        let (tx, rx) = mpsc::channel::<(usize, Vec<u8>)>();
        let (dir, fingerprint) = (self.dir.clone(), self.fingerprint);
        let thread = std::thread::spawn(move || {
            let mut written = 0;
            for (index, bytes) in rx {
                let header = block_header(fingerprint, index, &bytes);
                match write_durably(&dir, &format!("block-{index:06}"), &[&header, &bytes]) {
                    Ok(()) => written += 1,
                    Err(e) => tracing::warn!("checkpoint: cannot record block {index} ({e}); the job goes on, but a restart would compute it again"),
                }
            }
            written
        });
        Writer { tx, thread }
    }
}

/// Records blocks in the background; [`Writer::finish`] waits for the last one.
#[derive(Debug)]
pub struct Writer {
    tx: mpsc::Sender<(usize, Vec<u8>)>,
    thread: JoinHandle<usize>,
}

impl Writer {
    pub fn save(&self, index: usize, bytes: &[u8]) {
        let _ = self.tx.send((index, bytes.to_vec()));
    }

    /// Waits until every block handed over is on disk; returns how many were recorded.
    pub fn finish(self) -> usize {
        drop(self.tx);
        self.thread.join().unwrap_or(0)
    }
}

fn parse_manifest(text: &str) -> Option<(u128, String, Grid)> {
    let mut lines = text.lines();
    if lines.next()? != MANIFEST_MAGIC {
        return None;
    }
    let fingerprint = u128::from_str_radix(lines.next()?.strip_prefix("inputs ")?, 16).ok()?;
    let (grid, layout) = lines.next()?.strip_prefix("grid ")?.split_once(" layout ")?;
    let description = lines.next()?.strip_prefix("description ")?.to_owned();
    Some((fingerprint, description, (parse_triple(grid)?, parse_triple(layout)?)))
}

/// `AxBxC`, each at least 1.
fn parse_triple(text: &str) -> Option<(usize, usize, usize)> {
    let mut parts = text.split('x').map(|p| p.parse::<usize>().ok().filter(|&x| x > 0));
    let triple = (parts.next()??, parts.next()??, parts.next()??);
    parts.next().is_none().then_some(triple)
}

fn block_header(fingerprint: u128, index: usize, bytes: &[u8]) -> Vec<u8> {
    let mut header = Vec::with_capacity(HEADER);
    header.extend_from_slice(BLOCK_MAGIC);
    header.extend_from_slice(&fingerprint.to_le_bytes());
    header.extend_from_slice(&(index as u64).to_le_bytes());
    header.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    header.extend_from_slice(&xxh3_64(bytes).to_le_bytes());
    header
}

/// Checks a block file against what its name and the checkpoint say it must be.
fn parse_block(file: &[u8], fingerprint: u128, index: usize, len: Option<usize>) -> Result<(), String> {
    let len = len.ok_or("no such block in this job's plan")?;
    if file.len() < HEADER || &file[..8] != BLOCK_MAGIC {
        return Err("not a block file".into());
    }
    let field = |at: usize| u64::from_le_bytes(file[at..at + 8].try_into().expect("8 bytes"));
    let body = &file[HEADER..];
    if u128::from_le_bytes(file[8..24].try_into().expect("16 bytes")) != fingerprint || field(24) != index as u64 {
        return Err("it belongs to another checkpoint or block".into());
    }
    if field(32) != len as u64 || body.len() != len {
        return Err(format!("{} bytes where the block has {len}", body.len()));
    }
    if field(40) != xxh3_64(body) {
        return Err("its checksum does not match its contents".into());
    }
    Ok(())
}

/// Writes `parts` to `dir/name` so that the name only ever holds a whole file.
fn write_durably(dir: &Path, name: &str, parts: &[&[u8]]) -> std::io::Result<()> {
    let tmp = dir.join(format!("{TEMP_PREFIX}{name}"));
    let mut file = File::create(&tmp)?;
    for part in parts {
        file.write_all(part)?;
    }
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, dir.join(name))?;
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use colonnade_core::Matrix;

    fn inputs(seed: f64) -> Inputs {
        let m = DenseMatrix::F64(Matrix::from_fn(3, 2, |i, j| seed + (i * 2 + j) as f64));
        Inputs::of(&m, &m)
    }

    #[test]
    fn blocks_survive_a_reopen_and_damage_is_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let mut cp = Checkpoint::open(dir.path(), &inputs(0.0)).unwrap();
        assert_eq!(cp.grid, None);
        assert!(!Checkpoint::has_begun(dir.path()), "opened, not begun");
        cp.begin(((1, 3, 1), (1, 1, 1))).unwrap();
        assert!(Checkpoint::has_begun(dir.path()));
        let writer = cp.writer();
        writer.save(0, &[1; 16]);
        writer.save(2, &[2; 8]);
        writer.save(1, &[3; 16]);
        assert_eq!(writer.finish(), 3);
        // A torn temporary file, a block that lost a byte, a stranger's file.
        fs::write(dir.path().join(".tmp-block-000003"), [9; 5]).unwrap();
        let block1 = dir.path().join("block-000001");
        let mut damaged = fs::read(&block1).unwrap();
        damaged[HEADER + 3] ^= 1;
        fs::write(&block1, damaged).unwrap();
        fs::write(dir.path().join("notes.txt"), "mine").unwrap();

        let again = Checkpoint::open(dir.path(), &inputs(0.0)).unwrap();
        assert_eq!(again.grid, Some(((1, 3, 1), (1, 1, 1))), "the checkpoint's own plan wins");
        let len = |i: usize| [Some(16), Some(16), Some(8)].get(i).copied().flatten();
        let saved = again.saved_blocks(len);
        let got: Vec<_> = saved.iter().map(|b| (b.index, b.bytes.clone())).collect();
        assert_eq!(got, vec![(0, vec![1; 16]), (2, vec![2; 8])]);
        let mut left: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        assert_eq!(left, ["block-000000", "block-000002", "manifest", "notes.txt"]);
    }

    #[test]
    fn a_checkpoint_for_other_inputs_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        Checkpoint::open(dir.path(), &inputs(0.0)).unwrap().begin(((2, 2, 1), (1, 2, 1))).unwrap();
        let err = Checkpoint::open(dir.path(), &inputs(0.5)).unwrap_err().to_string();
        assert!(err.contains("belongs to other inputs (it has A 3x2, B 3x2, f64; these are A 3x2, B 3x2, f64)"), "{err}");
        fs::write(dir.path().join("manifest"), "hello").unwrap();
        let err = Checkpoint::open(dir.path(), &inputs(0.0)).unwrap_err().to_string();
        assert!(err.contains("the manifest is damaged"), "{err}");
        fs::write(dir.path().join("manifest"), format!("{MANIFEST_MAGIC}\ninputs 00\ngrid 2x0x1 layout 1x1x1\ndescription x\n")).unwrap();
        assert!(Checkpoint::open(dir.path(), &inputs(0.0)).is_err(), "a zero in the grid");
    }
}
