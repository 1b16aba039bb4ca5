//! The embedder's batching never changes a text's bits. Needs the fetched model
//! (`hearth models fetch`; HEARTH_MODELS or ~/.cache/hearth/models).

use std::path::{Path, PathBuf};

use hearth_kernels::{EMBED_BATCH_MAX, Embedder, MINILM};

fn embedder() -> Embedder {
    let dir = std::env::var_os("HEARTH_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/hearth/models")
        });
    let dir = dir.join(Path::new(MINILM.files[0].path).parent().expect("a folder"));
    Embedder::load(&dir, &candle_core::Device::Cpu)
        .unwrap_or_else(|e| panic!("{e}: run `hearth models fetch` first"))
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn equal_length_batches_are_bit_identical_to_texts_alone() {
    let embedder = embedder();
    // Many texts of the same token count (so they share batches, beyond one batch's size), and
    // texts of other lengths between them.
    let mut texts: Vec<String> = (0..EMBED_BATCH_MAX + 5)
        .map(|i| format!("sentence number {i} here"))
        .collect();
    texts.insert(3, "short".into());
    texts.insert(
        10,
        "a much longer sentence that has many more tokens than the others".into(),
    );
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let together = embedder.embed_each(&refs).expect("embed");
    let mut differing = 0;
    for (text, vector) in refs.iter().zip(&together) {
        let alone = embedder.embed(&[text]).expect("embed alone");
        if bits(&alone[0]) != bits(vector) {
            differing += 1;
        }
    }
    assert_eq!(
        differing,
        0,
        "{differing} of {} texts changed with batching",
        texts.len()
    );
    // Padding lengthens the attention products' inner dimension, which nothing promises leaves the
    // sums' bits alone; `embed_each` never pads. What padding did here, for the record:
    let padded = embedder.embed(&refs).expect("embed padded");
    let changed = padded
        .iter()
        .zip(&together)
        .filter(|(a, b)| bits(a) != bits(b))
        .count();
    println!(
        "padded batch: {changed} of {} texts differ in bits",
        texts.len()
    );
}
