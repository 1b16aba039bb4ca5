//! Weight bytes that are either owned or a window on a mapped model file.
//!
//! A stage maps its GGUF file rather than reading it: a matrix is a window on the mapping, so the
//! pages of layers the stage does not run are never read, and those of a token embedding only as
//! its rows are looked up. The mapping lives as long as the last matrix on it.

use std::ops::{Deref, Range};
use std::path::Path;
use std::sync::Arc;

/// Bytes of weights: owned, or a range of a mapped file.
#[derive(Clone)]
pub struct WeightBytes {
    source: Source,
    range: Range<usize>,
}

#[derive(Clone)]
enum Source {
    Owned(Arc<Vec<u8>>),
    Mapped(Arc<memmap2::Mmap>),
}

impl WeightBytes {
    /// Map the file at `path` read-only.
    ///
    /// The file must not be rewritten in place while mapped (Hearth replaces model files by
    /// renaming a new file over them, which leaves a mapping on the old one intact).
    pub fn map(path: &Path) -> std::io::Result<Self> {
        let file = std::fs::File::open(path)?;
        // SAFETY: the mapping is read-only and model files are replaced by rename, never written in
        // place (see above); a file truncated under the mapping by someone else is outside what the
        // node can guard against, as for any mapped file.
        let map = unsafe { memmap2::Mmap::map(&file)? };
        let len = map.len();
        Ok(Self {
            source: Source::Mapped(Arc::new(map)),
            range: 0..len,
        })
    }

    /// The sub-range `range` of these bytes, sharing their storage; `None` when out of bounds.
    pub fn slice(&self, range: Range<usize>) -> Option<Self> {
        let start = self.range.start.checked_add(range.start)?;
        let end = self.range.start.checked_add(range.end)?;
        (range.start <= range.end && end <= self.range.end).then(|| Self {
            source: self.source.clone(),
            range: start..end,
        })
    }

    /// Whether these bytes are a window on a mapped file.
    pub fn is_mapped(&self) -> bool {
        matches!(self.source, Source::Mapped(_))
    }
}

impl From<Vec<u8>> for WeightBytes {
    fn from(bytes: Vec<u8>) -> Self {
        let len = bytes.len();
        Self {
            source: Source::Owned(Arc::new(bytes)),
            range: 0..len,
        }
    }
}

impl Deref for WeightBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        let all: &[u8] = match &self.source {
            Source::Owned(v) => v,
            Source::Mapped(m) => m,
        };
        &all[self.range.clone()]
    }
}

impl std::fmt::Debug for WeightBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeightBytes")
            .field("mapped", &self.is_mapped())
            .field("range", &self.range)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mapped_file_reads_as_its_bytes_and_slices_stay_in_bounds() {
        let dir = std::env::temp_dir().join(format!("hearth-bytes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("f");
        std::fs::write(&path, b"0123456789").expect("write");
        let mapped = WeightBytes::map(&path).expect("map");
        assert!(mapped.is_mapped());
        assert_eq!(&*mapped, b"0123456789");
        let mid = mapped.slice(2..8).expect("in bounds");
        assert_eq!(&*mid, b"234567");
        assert_eq!(&*mid.slice(1..3).expect("in bounds"), b"34");
        assert!(mid.slice(0..7).is_none());
        assert!(mid.slice(usize::MAX..usize::MAX).is_none());
        let owned = WeightBytes::from(b"abc".to_vec());
        assert!(!owned.is_mapped());
        assert_eq!(&*owned.slice(1..3).expect("in bounds"), b"bc");
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
