//! The paper's data protocol (C4 calibration, WikiText-2 evaluation; README, "Pruning") as named presets, and the document formats behind
//! them: `c4` calibration (shard `en/c4-train.00000-of-01024.json.gz` of `allenai/c4`, windows
//! drawn by the reference's seeded sampler) and `wikitext2` evaluation (WikiText-2-raw-v1 test
//! split, joined with "\n\n", non-overlapping windows, tail dropped), fetched through hf-hub and
//! cached, usable offline once cached.

use std::io::Read;
use std::path::Path;

use color_eyre::eyre::{bail, eyre, Result, WrapErr};

use super::sampler::PyRandom;

pub const C4_REPO: &str = "allenai/c4";
pub const C4_FILE: &str = "en/c4-train.00000-of-01024.json.gz";
pub const WIKITEXT_REPO: &str = "Salesforce/wikitext";
pub const WIKITEXT_FILE: &str = "wikitext-2-raw-v1/test-00000-of-00001.parquet";

/// The `text` field of every line of a (gzip-compressed) JSON-lines file.
pub fn read_jsonl_gz(p: &Path) -> Result<Vec<String>> {
    let f = std::fs::File::open(p).wrap_err_with(|| format!("cannot open `{}`", p.display()))?;
    let mut text = String::new();
    flate2::read::MultiGzDecoder::new(f)
        .read_to_string(&mut text)
        .map_err(|e| {
            eyre!(
                "`{}` is not gzip-compressed UTF-8 JSON lines: {e}",
                p.display()
            )
        })?;
    super::jsonl_docs(&text, p)
}

/// The `text` column of a parquet file, row by row.
pub fn read_parquet_text(p: &Path) -> Result<Vec<String>> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::RowAccessor;
    let f = std::fs::File::open(p).wrap_err_with(|| format!("cannot open `{}`", p.display()))?;
    let reader = SerializedFileReader::new(f)
        .map_err(|e| eyre!("`{}` is not a readable parquet file: {e}", p.display()))?;
    let schema = reader.metadata().file_metadata().schema_descr_ptr();
    let col = (0..schema.num_columns())
        .find(|&i| schema.column(i).name() == "text")
        .ok_or_else(|| eyre!("`{}` has no `text` column", p.display()))?;
    let mut out = Vec::new();
    for row in reader
        .get_row_iter(None)
        .map_err(|e| eyre!("`{}`: {e}", p.display()))?
    {
        let row = row.map_err(|e| eyre!("`{}`: {e}", p.display()))?;
        out.push(
            row.get_string(col)
                .map_err(|e| eyre!("`{}`: text column: {e}", p.display()))?
                .clone(),
        );
    }
    Ok(out)
}

/// The reference's calibration sampler: `n` times, draw documents with `randint` until one has
/// more than `seq_len` tokens, then a random window of it. Deterministic for a seed (and equal to
/// Python's draws for the same document order and token counts).
pub fn sample_windows(
    docs: &[String],
    encode: &mut dyn FnMut(&str) -> Result<Vec<u32>>,
    n: usize,
    seq_len: usize,
    seed: u64,
) -> Result<Vec<Vec<u32>>> {
    if docs.is_empty() {
        bail!("no documents to sample calibration windows from");
    }
    let mut rng = PyRandom::new(seed);
    let mut out = Vec::with_capacity(n);
    // A bound on fruitless draws, so a corpus of short documents is an error, not a hang.
    let max_draws = 1000 * n.max(1) + docs.len();
    let mut draws = 0;
    while out.len() < n {
        let ids = loop {
            draws += 1;
            if draws > max_draws {
                bail!(
                    "found only {} documents longer than {seq_len} tokens after {max_draws} draws: use shorter windows",
                    out.len()
                );
            }
            let d = rng.randint(0, docs.len() as u64 - 1) as usize;
            let ids = encode(&docs[d])?;
            if ids.len() > seq_len {
                break ids;
            }
        };
        let i = rng.randint(0, (ids.len() - seq_len - 1) as u64) as usize;
        out.push(ids[i..i + seq_len].to_vec());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampler_is_deterministic_and_skips_short_documents() {
        let docs: Vec<String> = (0..50)
            .map(|i| {
                let len = if i % 3 == 0 { 5 } else { 40 + i };
                (0..len)
                    .map(|k| format!("w{}", k + i))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        let mut enc = |t: &str| -> Result<Vec<u32>> {
            Ok(t.split(' ')
                .map(|w| w[1..].parse::<u32>().unwrap())
                .collect())
        };
        let a = sample_windows(&docs, &mut enc, 6, 16, 0).unwrap();
        let b = sample_windows(&docs, &mut enc, 6, 16, 0).unwrap();
        let c = sample_windows(&docs, &mut enc, 6, 16, 1).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a
            .iter()
            .all(|w| w.len() == 16 && w.windows(2).all(|p| p[1] == p[0] + 1)));
        assert!(sample_windows(&docs, &mut enc, 2, 500, 0).is_err());
    }
}
