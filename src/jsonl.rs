//! Reading JSONL inputs: every line checked before any work starts, errors naming the line.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use anyhow::{Context, bail};
use serde_json::Value;

/// Longest input line accepted; a sentence or prompt is far shorter, and this bounds memory per line.
pub(crate) const LINE_BYTES_MAX: usize = 1 << 20;

/// The `(id, text)` of every line of `path`, where `text` is the string in field `field`. Refuses
/// the whole file on the first bad line (not JSON, not an object, no `id`, no string `field`, over
/// [`LINE_BYTES_MAX`]) or if it has no lines.
pub(crate) fn read_inputs(path: &Path, field: &str) -> anyhow::Result<Vec<(Value, String)>> {
    let file = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
    let mut inputs = Vec::new();
    let mut reader = BufReader::new(file);
    let mut line = String::new();
    let mut number = 0;
    loop {
        line.clear();
        number += 1;
        let read = (&mut reader)
            .take(LINE_BYTES_MAX as u64 + 1)
            .read_line(&mut line)
            .with_context(|| format!("{}:{number}", path.display()))?;
        if read == 0 {
            break;
        }
        if line.len() > LINE_BYTES_MAX && !line.ends_with('\n') {
            bail!(
                "{}:{number}: line longer than {LINE_BYTES_MAX} bytes",
                path.display()
            );
        }
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(trimmed)
            .map_err(|e| anyhow::anyhow!("{}:{number}: not JSON ({e})", path.display()))?;
        let Value::Object(mut object) = value else {
            bail!(
                "{}:{number}: expected an object with \"id\" and \"{field}\"",
                path.display()
            );
        };
        let id = object
            .remove("id")
            .with_context(|| format!("{}:{number}: no \"id\"", path.display()))?;
        let text = match object.remove(field) {
            Some(Value::String(text)) => text,
            Some(_) => bail!("{}:{number}: \"{field}\" is not a string", path.display()),
            None => bail!("{}:{number}: no \"{field}\"", path.display()),
        };
        inputs.push((id, text));
    }
    if inputs.is_empty() {
        bail!("{}: no input lines", path.display());
    }
    Ok(inputs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> anyhow::Result<Vec<(Value, String)>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("in.jsonl");
        std::fs::write(&path, text).expect("write");
        read_inputs(&path, "text")
    }

    #[test]
    fn good_lines_in_order_and_bad_ones_by_number() {
        let ok = read("{\"id\": 1, \"text\": \"a\"}\n\n{\"id\": \"b\", \"text\": \"b\"}\n")
            .expect("valid");
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[1], (Value::from("b"), "b".to_string()));
        for (text, wanted) in [
            ("{\"id\": 1, \"text\": \"a\"}\nnot json\n", ":2: not JSON"),
            ("{\"id\": 1}\n", ":1: no \"text\""),
            ("{\"text\": \"a\"}\n", ":1: no \"id\""),
            ("{\"id\": 1, \"text\": 5}\n", ":1: \"text\" is not a string"),
            ("[1, 2]\n", ":1: expected an object"),
            ("", "no input lines"),
        ] {
            let error = read(text).expect_err(text).to_string();
            assert!(error.contains(wanted), "{error} lacks {wanted}");
        }
        let long = format!(
            "{{\"id\": 1, \"text\": \"{}\"}}\n",
            "x".repeat(LINE_BYTES_MAX)
        );
        assert!(
            read(&long)
                .expect_err("long")
                .to_string()
                .contains("longer than")
        );
    }
}
