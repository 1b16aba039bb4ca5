//! Verified ranges of one model file. A model's id is the blake3 of its file, and BLAKE3 is a
//! tree: a holder can serve any byte range with the tree's hashes along the way, and a fetcher
//! checks every block of it against the id alone, before writing it. `bao-tree` (the iroh team's
//! BLAKE3 verified streaming, used by iroh-blobs) does the tree work; this module keeps each
//! model's outboard (the tree's interior hashes) beside the file, serves ranges from it, and
//! writes what a fetch receives into a partial file that survives a crash.
//!
//! Layout in the models folder:
//! - a whole file `NAME` has its outboard in `.NAME.obao4`, made on first use (one pass of
//!   hashing) and checked against the id;
//! - a file being fetched is `.ID.partial` (sparse: only what was received takes disk) with its
//!   outboard `.ID.partial.obao4`; what in it is verified is recomputed at open, so a fetch
//!   killed at any point resumes with exactly what it had.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use bao_tree::io::outboard::{EmptyOutboard, PreOrderOutboard};
use bao_tree::io::sync::{
    CreateOutboard, WriteAt, decode_ranges, encode_ranges_validated, valid_ranges,
};
use bao_tree::io::{round_up_to_chunks, round_up_to_chunks_groups};
use bao_tree::{BaoTree, BlockSize, ByteRanges, ChunkNum, ChunkRanges};
use hearth_protocol::ModelId;
use range_collections::range_set::RangeSetRange;

/// Blocks of 16 KiB: the smallest piece a fetcher verifies (and the outboard's grain: 64 bytes of
/// hashes per 16 KiB of file, 0.4%).
pub const BLOCK: BlockSize = BlockSize::from_chunk_log(4);

/// Bytes of one block.
pub const BLOCK_BYTES: u64 = 16 << 10;

/// Most bytes of file one request asks for: a chunk of the fetch, spread over holders.
pub const CHUNK_BYTES_MAX: u64 = 1 << 20;

/// Suffix of an outboard's file name.
pub const OUTBOARD_SUFFIX: &str = ".obao4";

/// What went wrong with a verified range.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// Reading or writing a file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The file's blake3 is not the model's id.
    #[error("{path}: its blake3 is {actual}, not the model's id {expected}")]
    WrongFile {
        /// The file.
        path: PathBuf,
        /// Its blake3.
        actual: String,
        /// The id asked for.
        expected: ModelId,
    },
    /// A range outside the file, or larger than a request may ask.
    #[error(
        "bytes {start}..{end} are not a range of at most {CHUNK_BYTES_MAX} bytes within the file's {size}"
    )]
    Range {
        /// First byte.
        start: u64,
        /// One past the last.
        end: u64,
        /// The file's size.
        size: u64,
    },
    /// What a holder sent does not hash to the model's id: nothing of it was kept.
    #[error("the bytes received for {start}..{end} do not verify against the model's id: {reason}")]
    Unverified {
        /// First byte.
        start: u64,
        /// One past the last.
        end: u64,
        /// bao-tree's words.
        reason: String,
    },
    /// The holder's own copy does not verify (its disk is bad, or it was changed).
    #[error("this copy of the model does not verify at {start}..{end}: {reason}")]
    Corrupt {
        /// First byte.
        start: u64,
        /// One past the last.
        end: u64,
        /// bao-tree's words.
        reason: String,
    },
}

type Result<T> = std::result::Result<T, WeightsError>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> WeightsError + '_ {
    move |source| WeightsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn root(id: &ModelId) -> blake3::Hash {
    blake3::Hash::from_bytes(id.0.0)
}

/// The hidden outboard file beside `path`.
pub fn outboard_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}{OUTBOARD_SUFFIX}"))
}

/// The blocks that cover bytes `range` of a file of `size` bytes, whole (the last one as far as
/// the file goes), as bao-tree's chunk ranges: what a request for the range is served and
/// verified as.
fn chunks_of(range: &Range<u64>, size: u64) -> ChunkRanges {
    let blocks =
        round_up_to_chunks_groups(round_up_to_chunks(&ByteRanges::from(range.clone())), BLOCK);
    blocks & ChunkRanges::from(ChunkNum(0)..ChunkNum::chunks(size))
}

/// A whole model file a peer holds, ready to serve ranges of.
#[derive(Debug)]
pub struct Holder {
    path: PathBuf,
    file: File,
    outboard: PreOrderOutboard<Vec<u8>>,
}

impl Holder {
    /// Open `path`, the model `id`: its outboard is read from beside it, or made (hashing the
    /// whole file once) and kept there when the folder can be written. A file whose blake3 is
    /// not `id` is refused.
    pub fn open(path: &Path, id: ModelId) -> Result<Self> {
        let file = File::open(path).map_err(io(path))?;
        let size = file.metadata().map_err(io(path))?.len();
        let tree = BaoTree::new(size, BLOCK);
        let kept = outboard_path(path);
        let stored = std::fs::read(&kept)
            .ok()
            .filter(|b| b.len() as u64 == tree.outboard_size());
        let outboard = match stored {
            Some(data) => PreOrderOutboard {
                root: root(&id),
                tree,
                data,
            },
            None => {
                let made = PreOrderOutboard::<Vec<u8>>::create(&file, BLOCK).map_err(io(path))?;
                if made.root != root(&id) {
                    return Err(WeightsError::WrongFile {
                        path: path.to_path_buf(),
                        actual: made.root.to_hex().to_string(),
                        expected: id,
                    });
                }
                // Kept for next time; a folder this process may not write to (models mounted
                // read-only) costs a hashing pass at each start, not the serving.
                if let Err(e) = write_atomically(&kept, &made.data) {
                    tracing::warn!(error = %e, "the model's outboard could not be kept beside it");
                }
                made
            }
        };
        Ok(Self {
            path: path.to_path_buf(),
            file,
            outboard,
        })
    }

    /// The file's size.
    pub fn size(&self) -> u64 {
        self.outboard.tree.size()
    }

    /// The verified encoding of bytes `range` (at most [`CHUNK_BYTES_MAX`]): the blocks that
    /// cover it with the hashes from the root down to them. Each block is checked against the
    /// outboard before it goes out, so a disk that rotted is noticed here, not by the fetcher.
    pub fn serve(&self, range: Range<u64>) -> Result<Vec<u8>> {
        encode(&self.file, &self.outboard, range, &self.path)
    }
}

/// The verified encoding of bytes `range` of `file` (whose tree `outboard` holds, as far as it
/// is known): every block is checked against the outboard before it goes out.
fn encode(
    file: &File,
    outboard: &impl bao_tree::io::sync::Outboard,
    range: Range<u64>,
    path: &Path,
) -> Result<Vec<u8>> {
    let size = outboard.tree().size();
    check_range(&range, size)?;
    let mut encoded = Vec::new();
    encode_ranges_validated(file, outboard, &chunks_of(&range, size), &mut encoded).map_err(
        |e| WeightsError::Corrupt {
            start: range.start,
            end: range.end,
            reason: format!("{e} ({})", path.display()),
        },
    )?;
    Ok(encoded)
}

fn check_range(range: &Range<u64>, size: u64) -> Result<()> {
    if range.start >= range.end || range.end > size || range.end - range.start > CHUNK_BYTES_MAX {
        return Err(WeightsError::Range {
            start: range.start,
            end: range.end,
            size,
        });
    }
    Ok(())
}

/// Write `bytes` to `path` through a temporary file and a rename, so a crash leaves the old file
/// or the new one, never half of one.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    // A name of this process and call alone: nodes sharing a models folder may make the same
    // outboard at once, and each must rename a whole file of its own.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("{}-{n}.tmp", std::process::id()));
    let mut f = File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// Check `encoded`, a holder's answer for bytes `range` of model `id` (a file of `size` bytes),
/// with no copy of the model: what anyone holding the holder's signed statement of it can do, so a
/// bad answer is evidence against the holder and a good one never is.
pub fn verify_range(id: ModelId, size: u64, range: Range<u64>, encoded: &[u8]) -> Result<()> {
    check_range(&range, size)?;
    let outboard = EmptyOutboard {
        tree: BaoTree::new(size, BLOCK),
        root: root(&id),
    };
    decode_ranges(encoded, &chunks_of(&range, size), Discard, outboard).map_err(|e| {
        WeightsError::Unverified {
            start: range.start,
            end: range.end,
            reason: e.to_string(),
        }
    })
}

/// A target that keeps nothing: [`verify_range`] only checks.
struct Discard;

impl WriteAt for Discard {
    fn write_at(&mut self, _pos: u64, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A model file being fetched: the blocks received so far, each verified against the id.
#[derive(Debug)]
pub struct Partial {
    path: PathBuf,
    file: File,
    outboard: PreOrderOutboard<File>,
    /// Blocks held, verified.
    have: ChunkRanges,
}

impl Partial {
    /// The partial file of model `id` (`size` bytes) in `dir`: created empty, or opened with what
    /// it holds, each block verified again (a fetch killed mid-write keeps exactly the blocks
    /// that check).
    pub fn open(dir: &Path, id: ModelId, size: u64) -> Result<Self> {
        let path = Self::path_in(dir, id);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io(&path))?;
        file.set_len(size).map_err(io(&path))?;
        let tree = BaoTree::new(size, BLOCK);
        let ob_path = outboard_path(&path);
        let ob_file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&ob_path)
            .map_err(io(&ob_path))?;
        ob_file
            .set_len(tree.outboard_size())
            .map_err(io(&ob_path))?;
        let outboard = PreOrderOutboard {
            root: root(&id),
            tree,
            data: ob_file,
        };
        let mut have = ChunkRanges::empty();
        for range in valid_ranges(&outboard, &file, &ChunkRanges::all()) {
            let range = range.map_err(io(&path))?;
            have |= ChunkRanges::from(range);
        }
        Ok(Self {
            path,
            file,
            outboard,
            have,
        })
    }

    /// The file's size.
    pub fn size(&self) -> u64 {
        self.outboard.tree.size()
    }

    /// Where the partial file of model `id` is kept in `dir`.
    pub fn path_in(dir: &Path, id: ModelId) -> PathBuf {
        dir.join(format!(".{id}.partial"))
    }

    /// Bytes held, verified.
    pub fn bytes_held(&self) -> u64 {
        let size = self.size();
        self.have
            .iter()
            .map(|r| match r {
                RangeSetRange::Range(r) => {
                    r.end.to_bytes().min(size) - r.start.to_bytes().min(size)
                }
                RangeSetRange::RangeFrom(r) => size.saturating_sub(r.start.to_bytes()),
            })
            .sum()
    }

    /// How many bytes from the start of the file are held without a gap.
    pub fn held_prefix(&self) -> u64 {
        let size = self.size();
        match self.have.iter().next() {
            Some(RangeSetRange::Range(r)) if *r.start == ChunkNum(0) => r.end.to_bytes().min(size),
            Some(RangeSetRange::RangeFrom(r)) if *r.start == ChunkNum(0) => size,
            _ => 0,
        }
    }

    /// Whether every byte of `range` is held.
    pub fn holds(&self, range: &Range<u64>) -> bool {
        chunks_of(range, self.size()).is_subset(&self.have)
    }

    /// The pieces of `range` not yet held, each within one block-aligned request of at most
    /// [`CHUNK_BYTES_MAX`]: what a fetch still asks for.
    pub fn missing(&self, range: Range<u64>) -> Vec<Range<u64>> {
        let size = self.size();
        let start = range.start / CHUNK_BYTES_MAX * CHUNK_BYTES_MAX;
        (start..range.end.min(size))
            .step_by(CHUNK_BYTES_MAX as usize)
            .map(|s| s.max(range.start)..(s + CHUNK_BYTES_MAX).min(range.end).min(size))
            .filter(|r| !r.is_empty() && !self.holds(r))
            .map(|r| self.trim(r))
            .collect()
    }

    /// `range` without the blocks at either end that are held already (it holds a gap).
    fn trim(&self, mut r: Range<u64>) -> Range<u64> {
        while r.start < r.end {
            let block_end = ((r.start / BLOCK_BYTES + 1) * BLOCK_BYTES).min(r.end);
            if !self.holds(&(r.start..block_end)) {
                break;
            }
            r.start = block_end;
        }
        while r.start < r.end {
            let block_start = ((r.end - 1) / BLOCK_BYTES * BLOCK_BYTES).max(r.start);
            if !self.holds(&(block_start..r.end)) {
                break;
            }
            r.end = block_start;
        }
        r
    }

    /// Take `encoded`, a holder's answer for bytes `range`: every block is verified against the
    /// model's id before it is written; the first that does not verify stops it (the blocks
    /// before it, verified, are kept).
    pub fn receive(&mut self, range: Range<u64>, encoded: &[u8]) -> Result<()> {
        check_range(&range, self.size())?;
        let chunks = chunks_of(&range, self.size());
        let result = decode_ranges(encoded, &chunks, &mut self.file, &mut self.outboard);
        // What is held now: recomputed over the blocks the range touches (a failed decode may
        // have written some of them).
        let valid: Vec<Range<ChunkNum>> = valid_ranges(&self.outboard, &self.file, &chunks)
            .into_iter()
            .collect::<std::io::Result<_>>()
            .map_err(io(&self.path))?;
        for r in valid {
            self.have |= ChunkRanges::from(r);
        }
        result.map_err(|e| WeightsError::Unverified {
            start: range.start,
            end: range.end,
            reason: e.to_string(),
        })
    }

    /// The verified encoding of bytes `range` from what this partial file holds, to serve it on
    /// to others ([`Holder::serve`]'s answer).
    pub fn serve(&self, range: Range<u64>) -> Result<Vec<u8>> {
        encode(&self.file, &self.outboard, range, &self.path)
    }

    /// Read bytes `range` of what is held (the caller checked [`Partial::holds`]).
    pub fn read(&mut self, range: Range<u64>) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; (range.end - range.start) as usize];
        self.file
            .seek(std::io::SeekFrom::Start(range.start))
            .map_err(io(&self.path))?;
        self.file.read_exact(&mut buf).map_err(io(&self.path))?;
        Ok(buf)
    }

    /// Where the partial file is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file of `n` bytes that is not all one pattern, and its id.
    fn model(dir: &Path, n: usize) -> (PathBuf, ModelId, Vec<u8>) {
        let bytes: Vec<u8> = (0..n)
            .map(|i| {
                (i as u64)
                    .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    .rotate_left(17) as u8
            })
            .collect();
        let path = dir.join("m.gguf");
        std::fs::write(&path, &bytes).expect("write");
        (path, ModelId::of_bytes(&bytes), bytes)
    }

    #[test]
    fn a_range_fetched_from_a_holder_verifies_against_the_id_alone() {
        let dir = tempfile::tempdir().expect("tmp");
        let (path, id, bytes) = model(dir.path(), 3 * CHUNK_BYTES_MAX as usize + 12_345);
        let holder = Holder::open(&path, id).expect("holder");
        assert!(
            outboard_path(&path).exists(),
            "the outboard is kept beside the file"
        );
        let fetch_dir = dir.path().join("fetch");
        std::fs::create_dir(&fetch_dir).expect("dir");
        let mut partial = Partial::open(&fetch_dir, id, holder.size()).expect("partial");
        assert_eq!(partial.bytes_held(), 0);
        // An unaligned range in the middle, and the file's ragged end.
        let mid = 1_500_000..2_000_000;
        partial
            .receive(mid.clone(), &holder.serve(mid.clone()).expect("serve"))
            .expect("verified");
        assert!(partial.holds(&mid));
        assert_eq!(
            partial.read(mid.clone()).expect("read"),
            bytes[1_500_000..2_000_000]
        );
        let end = holder.size() - 100..holder.size();
        partial
            .receive(end.clone(), &holder.serve(end.clone()).expect("serve"))
            .expect("verified");
        assert!(partial.holds(&end));
        assert!(!partial.holds(&(0..10)));
        // What is held: the blocks covering the two ranges, no more.
        assert!(partial.bytes_held() < 600_000, "{}", partial.bytes_held());
        // Served on from the partial copy, it verifies again.
        let again = dir.path().join("again");
        std::fs::create_dir(&again).expect("dir");
        let mut second = Partial::open(&again, id, holder.size()).expect("partial");
        second
            .receive(mid.clone(), &partial.serve(mid.clone()).expect("serve on"))
            .expect("verified");
        assert!(second.holds(&mid));
    }

    #[test]
    fn a_flipped_byte_is_refused_and_a_wrong_file_is_not_served() {
        let dir = tempfile::tempdir().expect("tmp");
        let (path, id, _) = model(dir.path(), 2 * CHUNK_BYTES_MAX as usize);
        let holder = Holder::open(&path, id).expect("holder");
        let range = 100_000..900_000;
        let mut encoded = holder.serve(range.clone()).expect("serve");
        let last = encoded.len() - 1;
        encoded[last] ^= 1;
        let fetch_dir = dir.path().join("fetch");
        std::fs::create_dir(&fetch_dir).expect("dir");
        let mut partial = Partial::open(&fetch_dir, id, holder.size()).expect("partial");
        let err = partial
            .receive(range.clone(), &encoded)
            .expect_err("flipped");
        assert!(matches!(err, WeightsError::Unverified { .. }), "{err}");
        assert!(!partial.holds(&range), "the bad block is not kept");
        // A file that is not the model: refused at open.
        let other = dir.path().join("other.gguf");
        std::fs::write(&other, b"not the model").expect("write");
        assert!(matches!(
            Holder::open(&other, id),
            Err(WeightsError::WrongFile { .. })
        ));
        // Ranges past the end, empty or too large.
        assert!(holder.serve(0..CHUNK_BYTES_MAX + 1).is_err());
        assert!(holder.serve(5..5).is_err());
        assert!(holder.serve(holder.size() - 1..holder.size() + 1).is_err());
    }

    #[test]
    fn a_fetch_killed_midway_resumes_with_what_it_had() {
        let dir = tempfile::tempdir().expect("tmp");
        let (path, id, bytes) = model(dir.path(), 4 * CHUNK_BYTES_MAX as usize);
        let holder = Holder::open(&path, id).expect("holder");
        let fetch_dir = dir.path().join("fetch");
        std::fs::create_dir(&fetch_dir).expect("dir");
        let all = 0..holder.size();
        {
            let mut partial = Partial::open(&fetch_dir, id, holder.size()).expect("partial");
            let pieces = partial.missing(all.clone());
            assert_eq!(pieces.len(), 4);
            for piece in pieces.iter().take(2) {
                partial
                    .receive(piece.clone(), &holder.serve(piece.clone()).expect("serve"))
                    .expect("verified");
            }
            // Killed here: dropped without anything more.
        }
        let mut partial = Partial::open(&fetch_dir, id, holder.size()).expect("reopened");
        assert_eq!(partial.bytes_held(), 2 * CHUNK_BYTES_MAX);
        let left = partial.missing(all.clone());
        assert_eq!(
            left,
            vec![
                2 * CHUNK_BYTES_MAX..3 * CHUNK_BYTES_MAX,
                3 * CHUNK_BYTES_MAX..4 * CHUNK_BYTES_MAX
            ]
        );
        // A block scribbled over on disk while it was down is fetched again.
        {
            let mut f = OpenOptions::new()
                .write(true)
                .open(partial.path())
                .expect("open");
            f.seek(std::io::SeekFrom::Start(5)).expect("seek");
            f.write_all(b"junk").expect("write");
        }
        let partial_again = Partial::open(&fetch_dir, id, holder.size()).expect("reopened");
        assert_eq!(partial_again.missing(all.clone()).len(), 3);
        assert_eq!(
            partial_again.missing(0..CHUNK_BYTES_MAX)[0],
            0..BLOCK_BYTES,
            "only the scribbled block is asked again"
        );
        // A range whose first blocks are held is asked from its first missing block.
        let from = CHUNK_BYTES_MAX + 5 * BLOCK_BYTES + 7;
        assert_eq!(
            partial_again.missing(from..3 * CHUNK_BYTES_MAX - 3),
            vec![2 * CHUNK_BYTES_MAX..3 * CHUNK_BYTES_MAX - 3]
        );
        for piece in left {
            partial
                .receive(piece.clone(), &holder.serve(piece.clone()).expect("serve"))
                .expect("verified");
        }
        assert_eq!(
            partial.read(3_000_000..3_000_016).expect("read"),
            bytes[3_000_000..3_000_016]
        );
    }
}
