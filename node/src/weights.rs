//! A node serves the model files it holds to peers that fetch layers of them: any range of up to
//! [`WEIGHTS_CHUNK_BYTES_MAX`] bytes, as blocks verified against the model's id
//! ([`hearth_net::weights`]), with its signed statement of what it sent. Reading and hashing run
//! off the event loop; the answers come back to it to be sent.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use hearth_net::weights::Holder;
use hearth_protocol::work::{WEIGHTS_CHUNK_BYTES_MAX, WorkResponse, weights_statement};
use hearth_protocol::{ModelId, SecretKey};
use tokio::sync::mpsc;

/// Ranges being read at once; past it, a request is refused ("busy") rather than queued.
pub(crate) const WEIGHTS_SERVING_MAX: usize = 4;

/// Under `--max-upload-rate`, ranges read and waiting their turn to go out (each at most
/// [`WEIGHTS_CHUNK_BYTES_MAX`] held); past it, a request is refused ("busy").
pub(crate) const WEIGHTS_WAITING_MAX: usize = 32;

/// What this node serves, and the answers on their way back to the event loop.
pub(crate) struct Weights<C> {
    key: SecretKey,
    paths: HashMap<ModelId, PathBuf>,
    /// Models held in part: what is held of them is served too.
    partials: crate::stages::Partials,
    /// Opened files with their outboards (made on first use), shared with the reading tasks.
    holders: Arc<Mutex<HashMap<ModelId, Arc<Holder>>>>,
    answers: mpsc::Sender<(C, WorkResponse)>,
    serving: Arc<std::sync::atomic::AtomicUsize>,
    /// `--fault corrupt-weights`: flip bytes of what is served.
    corrupt: bool,
    /// `--max-upload-rate`: bytes a second, and when the bytes served so far have had their time.
    rate: Option<(u64, Arc<Mutex<std::time::Instant>>)>,
}

impl<C: Send + 'static> Weights<C> {
    /// Serve the models at `paths`, signing with `key`; answers go to `answers`.
    pub(crate) fn new(
        key: SecretKey,
        paths: HashMap<ModelId, PathBuf>,
        partials: crate::stages::Partials,
        answers: mpsc::Sender<(C, WorkResponse)>,
        corrupt: bool,
    ) -> Self {
        Self {
            key,
            paths,
            partials,
            holders: Arc::default(),
            answers,
            serving: Arc::default(),
            corrupt,
            rate: None,
        }
    }

    /// Serve at most `bytes_per_s` bytes a second, all fetchers together (answers wait their
    /// turn; past [`WEIGHTS_SERVING_MAX`] waiting, requests are refused as busy).
    pub(crate) fn with_upload_rate(mut self, bytes_per_s: Option<u64>) -> Self {
        self.rate = bytes_per_s
            .filter(|r| *r > 0)
            .map(|r| (r, Arc::new(Mutex::new(std::time::Instant::now()))));
        self
    }

    /// Serve bytes `start..end` of `model` to whoever waits on `channel`: the answer comes
    /// through the answers channel once read; a request refused at once is handed back with why,
    /// for the caller to answer.
    pub(crate) fn serve(
        &self,
        channel: C,
        model: ModelId,
        start: u64,
        end: u64,
    ) -> Result<(), (C, String)> {
        let partial = self
            .partials
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&model)
            .map(|h| h.path.clone());
        let (path, whole) = match (self.paths.get(&model).cloned(), partial) {
            (Some(path), _) => (path, true),
            (None, Some(path)) => (path, false),
            (None, None) => return Err((channel, format!("model {model} is not held here"))),
        };
        if end <= start || end - start > WEIGHTS_CHUNK_BYTES_MAX {
            return Err((
                channel,
                format!("a range of 1..={WEIGHTS_CHUNK_BYTES_MAX} bytes, not {start}..{end}"),
            ));
        }
        let serving = self.serving.clone();
        let most = if self.rate.is_some() {
            WEIGHTS_WAITING_MAX
        } else {
            WEIGHTS_SERVING_MAX
        };
        if serving.fetch_add(1, std::sync::atomic::Ordering::SeqCst) >= most {
            serving.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            return Err((channel, format!("busy: {most} ranges are being served")));
        }
        let (holders, key, answers, corrupt, rate) = (
            self.holders.clone(),
            self.key.clone(),
            self.answers.clone(),
            self.corrupt,
            self.rate.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let read = if whole { read } else { read_partial };
            let response = read(&holders, &path, model, start, end)
                .map(|(size, end, mut encoded)| {
                    if corrupt {
                        // Past the hashes at the front: the blocks' bytes.
                        let at = encoded.len() / 2;
                        encoded[at] ^= 0x5a;
                    }
                    let statement = weights_statement(&model, size, start, end, &encoded);
                    WorkResponse::Weights {
                        size,
                        end,
                        encoded,
                        signature: key.sign(&statement),
                    }
                })
                .unwrap_or_else(WorkResponse::Rejected);
            if let (Some((per_s, next)), WorkResponse::Weights { encoded, .. }) = (&rate, &response)
            {
                // Its turn: after the bytes served before it have had their time at the rate.
                let wait = {
                    let mut next = next.lock().unwrap_or_else(|e| e.into_inner());
                    let now = std::time::Instant::now();
                    let start = (*next).max(now);
                    let takes =
                        std::time::Duration::from_secs_f64(encoded.len() as f64 / *per_s as f64);
                    *next = start + takes;
                    *next - now
                };
                std::thread::sleep(wait);
            }
            serving.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            let _ = answers.blocking_send((channel, response));
        });
        Ok(())
    }
}

/// The file's size, the end served (`end`, cut at the file's), and the encoding of bytes
/// `start..end` of `model` at `path`, its holder opened (and its outboard made) on first use.
fn read(
    holders: &Mutex<HashMap<ModelId, Arc<Holder>>>,
    path: &std::path::Path,
    model: ModelId,
    start: u64,
    end: u64,
) -> Result<(u64, u64, Vec<u8>), String> {
    let held = holders
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&model)
        .cloned();
    let holder = match held {
        Some(holder) => holder,
        None => {
            let holder = Arc::new(Holder::open(path, model).map_err(|e| e.to_string())?);
            holders
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(model, holder.clone());
            holder
        }
    };
    let size = holder.size();
    let end = end.min(size);
    let encoded = holder.serve(start..end).map_err(|e| {
        if matches!(e, hearth_net::weights::WeightsError::Corrupt { .. }) {
            // The file or its kept outboard changed under us: both are looked at afresh next
            // time (a file that no longer hashes to its id is then refused at open).
            holders
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&model);
            let _ = std::fs::remove_file(hearth_net::weights::outboard_path(path));
        }
        e.to_string()
    })?;
    Ok((size, end, encoded))
}

/// As [`read`], from a file held in part (its held blocks are verified again as it opens; a
/// range not held is refused).
fn read_partial(
    _holders: &Mutex<HashMap<ModelId, Arc<Holder>>>,
    path: &std::path::Path,
    model: ModelId,
    start: u64,
    end: u64,
) -> Result<(u64, u64, Vec<u8>), String> {
    let size = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    let partial =
        hearth_net::weights::Partial::open(dir, model, size).map_err(|e| e.to_string())?;
    let end = end.min(size);
    if !partial.holds(&(start..end)) {
        return Err(format!(
            "bytes {start}..{end} of model {model} are not held here"
        ));
    }
    let encoded = partial.serve(start..end).map_err(|e| e.to_string())?;
    Ok((size, end, encoded))
}

#[cfg(test)]
mod tests {
    use hearth_net::weights::Partial;

    use super::*;

    #[tokio::test]
    async fn a_served_range_verifies_and_is_signed_and_a_corrupting_node_is_caught() {
        let dir = tempfile::tempdir().expect("tmp");
        let bytes: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let path = dir.path().join("m.gguf");
        std::fs::write(&path, &bytes).expect("write");
        let model = ModelId::of_bytes(&bytes);
        let key = SecretKey::from_bytes(&[4; 32]);
        for corrupt in [false, true] {
            let (tx, mut rx) = mpsc::channel(4);
            let weights = Weights::new(
                key.clone(),
                HashMap::from([(model, path.clone())]),
                Default::default(),
                tx,
                corrupt,
            );
            weights
                .serve(1u8, model, 1_000_000, 1_500_000)
                .expect("taken");
            let (channel, response) = rx.recv().await.expect("answered");
            assert_eq!(channel, 1);
            let WorkResponse::Weights {
                size,
                end,
                encoded,
                signature,
            } = response
            else {
                panic!("{response:?}");
            };
            assert_eq!((size, end), (3_000_000, 1_500_000));
            // The statement is the holder's, over exactly these bytes.
            let statement = weights_statement(&model, size, 1_000_000, end, &encoded);
            assert!(key.public().verify(&statement, &signature).is_ok());
            let fetch = dir.path().join(format!("fetch-{corrupt}"));
            std::fs::create_dir(&fetch).expect("dir");
            let mut partial = Partial::open(&fetch, model, bytes.len() as u64).expect("partial");
            let got = partial.receive(1_000_000..1_500_000, &encoded);
            assert_eq!(got.is_ok(), !corrupt, "{got:?}");
        }
        // Not held, too large, or past the end: refused; a range over the end is cut there.
        let (tx, mut rx) = mpsc::channel(4);
        let weights = Weights::new(
            key,
            HashMap::from([(model, path)]),
            Default::default(),
            tx,
            false,
        );
        for (channel, refused) in [
            weights.serve(2u8, ModelId::of_bytes(b"other"), 0, 10),
            weights.serve(3u8, model, 0, WEIGHTS_CHUNK_BYTES_MAX + 1),
        ]
        .into_iter()
        .enumerate()
        {
            let (back, why) = refused.expect_err("refused at once");
            assert_eq!(usize::from(back), channel + 2, "{why}");
        }
        weights
            .serve(4u8, model, 3_000_000, 3_000_100)
            .expect("taken");
        let (_, response) = rx.recv().await.expect("answered");
        assert!(
            matches!(response, WorkResponse::Rejected(_)),
            "{response:?}"
        );
        weights
            .serve(5u8, model, 2_500_000, 3_500_000)
            .expect("taken");
        let (_, response) = rx.recv().await.expect("answered");
        assert!(
            matches!(response, WorkResponse::Weights { end: 3_000_000, .. }),
            "{response:?}"
        );
    }

    #[tokio::test]
    async fn a_kept_outboard_that_went_bad_is_made_again() {
        let dir = tempfile::tempdir().expect("tmp");
        let bytes: Vec<u8> = (0..2_000_000u32).map(|i| (i * 13 % 241) as u8).collect();
        let path = dir.path().join("m.gguf");
        std::fs::write(&path, &bytes).expect("write");
        let model = ModelId::of_bytes(&bytes);
        // An outboard of the right length and the wrong hashes, as a crash or a bad disk leaves.
        let kept = hearth_net::weights::outboard_path(&path);
        Holder::open(&path, model).expect("made");
        let len = std::fs::metadata(&kept).expect("kept").len() as usize;
        std::fs::write(&kept, vec![7u8; len]).expect("spoil");
        let (tx, mut rx) = mpsc::channel(4);
        let weights = Weights::new(
            SecretKey::from_bytes(&[5; 32]),
            HashMap::from([(model, path.clone())]),
            Default::default(),
            tx,
            false,
        );
        weights.serve(1u8, model, 0, 100_000).expect("taken");
        let (_, first) = rx.recv().await.expect("answered");
        assert!(matches!(first, WorkResponse::Rejected(_)), "{first:?}");
        weights.serve(2u8, model, 0, 100_000).expect("taken");
        let (_, second) = rx.recv().await.expect("answered");
        let WorkResponse::Weights { encoded, .. } = second else {
            panic!("{second:?}");
        };
        assert!(
            hearth_net::weights::verify_range(model, bytes.len() as u64, 0..100_000, &encoded)
                .is_ok()
        );
    }
}
