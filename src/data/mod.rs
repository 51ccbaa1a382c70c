//! Text sources and the fixed-length windows of the calibration/evaluation protocol.

pub mod presets;
pub mod sampler;

use std::path::{Path, PathBuf};

use color_eyre::eyre::{bail, eyre, Result, WrapErr};

/// Which demo text a `demo` argument means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DemoSplit {
    Calib,
    Eval,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TextSource {
    Demo(DemoSplit),
    /// Plain UTF-8 text.
    Txt(PathBuf),
    /// One JSON object per line with a `text` field; documents are joined with "\n\n".
    Jsonl(PathBuf),
    /// Gzip-compressed JSON lines (C4 style): documents, sampled for calibration.
    JsonlGz(PathBuf),
    /// A parquet file with a `text` column (WikiText style): rows joined with "\n\n".
    Parquet(PathBuf),
    /// The paper's calibration set: C4 shard 0 through hf-hub, seeded sampler.
    C4,
    /// The paper's evaluation set: WikiText-2-raw-v1 test through hf-hub.
    WikiText2,
}

impl TextSource {
    /// Parse a data, calibration or evaluation argument: `demo` or a file path.
    pub fn parse(arg: &str, demo: DemoSplit) -> Result<Self> {
        match arg {
            "demo" => return Ok(Self::Demo(demo)),
            "c4" => return Ok(Self::C4),
            "wikitext2" => return Ok(Self::WikiText2),
            _ => {}
        }
        let p = PathBuf::from(arg);
        if !p.is_file() {
            bail!(
                "text file `{arg}` does not exist: pass demo, c4, wikitext2, or the path of a \
                 .txt, .jsonl, .jsonl.gz (or .json.gz) or .parquet file"
            );
        }
        Ok(if arg.ends_with(".jsonl.gz") || arg.ends_with(".json.gz") {
            Self::JsonlGz(p)
        } else if arg.ends_with(".parquet") {
            Self::Parquet(p)
        } else if arg.ends_with(".jsonl") {
            Self::Jsonl(p)
        } else {
            Self::Txt(p)
        })
    }

    pub fn label(&self) -> String {
        match self {
            Self::Demo(DemoSplit::Calib) => "demo:calib (Brown a–j)".into(),
            Self::Demo(DemoSplit::Eval) => "demo:eval (Brown k–r)".into(),
            Self::Txt(p) | Self::Jsonl(p) | Self::JsonlGz(p) | Self::Parquet(p) => {
                p.display().to_string()
            }
            Self::C4 => format!("c4 ({} {})", presets::C4_REPO, presets::C4_FILE),
            Self::WikiText2 => format!(
                "wikitext2 ({} {})",
                presets::WIKITEXT_REPO,
                presets::WIKITEXT_FILE
            ),
        }
    }

    /// Document sources: calibration windows are sampled from documents, not cut from the text.
    pub fn is_sampled(&self) -> bool {
        matches!(self, Self::C4 | Self::JsonlGz(_))
    }

    /// The paper's presets prepend BOS once, as its tokenizer does.
    fn adds_bos(&self) -> bool {
        matches!(self, Self::C4 | Self::WikiText2)
    }

    /// The documents (rows) of a source, fetching presets through hf-hub.
    pub fn documents(&self, status: &mut dyn FnMut(&str)) -> Result<Vec<String>> {
        match self {
            Self::C4 => presets::read_jsonl_gz(&crate::assets::hub::fetch_dataset_file(
                presets::C4_REPO,
                presets::C4_FILE,
                status,
            )?),
            Self::WikiText2 => presets::read_parquet_text(&crate::assets::hub::fetch_dataset_file(
                presets::WIKITEXT_REPO,
                presets::WIKITEXT_FILE,
                status,
            )?),
            Self::JsonlGz(p) => presets::read_jsonl_gz(p),
            Self::Parquet(p) => presets::read_parquet_text(p),
            other => Ok(vec![other.load(status)?]),
        }
    }

    /// The whole text, fetching the demo corpus if needed.
    pub fn load(&self, status: &mut dyn FnMut(&str)) -> Result<String> {
        match self {
            Self::Demo(split) => {
                let (calib, eval) = crate::assets::demo::ensure_corpus(status)?;
                read_text(if *split == DemoSplit::Calib {
                    &calib
                } else {
                    &eval
                })
            }
            Self::Txt(p) => read_text(p),
            Self::Jsonl(p) => read_jsonl(p),
            Self::JsonlGz(_) | Self::Parquet(_) | Self::C4 | Self::WikiText2 => {
                Ok(self.documents(status)?.join("\n\n"))
            }
        }
    }
}

/// The windows a source gives for one role, and the sha256 of its text. Document sources used
/// for calibration go through the reference's seeded sampler; everything else is cut into the
/// first `n` non-overlapping windows (`n = 0`: all of them, the tail dropped).
pub fn source_windows(
    src: &TextSource,
    m: &crate::model::LoadedModel,
    n: usize,
    seq_len: usize,
    calibration: bool,
    seed: u64,
    status: &mut dyn FnMut(&str),
) -> Result<(Vec<Vec<u32>>, String)> {
    let bos = m.llama.config.bos_token_id.filter(|_| src.adds_bos());
    if calibration && src.is_sampled() {
        let docs = src.documents(status)?;
        let sha = crate::assets::sha256_docs(&docs);
        status(&format!("sampling {n} calibration windows (seed {seed})"));
        let mut enc = |t: &str| -> Result<Vec<u32>> {
            let mut ids: Vec<u32> = bos.into_iter().collect();
            ids.extend(m.encode(t)?);
            Ok(ids)
        };
        let w = presets::sample_windows(&docs, &mut enc, n, seq_len, seed)?;
        return Ok((w, sha));
    }
    let text = src.load(status)?;
    let sha = crate::assets::sha256_bytes(text.as_bytes());
    status("tokenizing");
    let mut ids: Vec<u32> = bos.into_iter().collect();
    // Only the first n windows are used: stop tokenizing once they are there.
    let need = (n > 0).then(|| (n * seq_len).saturating_sub(ids.len()));
    ids.extend(m.encode_long(&text, need)?);
    drop(text);
    Ok((windows(&ids, seq_len, n, &src.label())?, sha))
}

fn read_text(p: &Path) -> Result<String> {
    let bytes = std::fs::read(p).wrap_err_with(|| format!("cannot read `{}`", p.display()))?;
    String::from_utf8(bytes).map_err(|_| eyre!("`{}` is not UTF-8 text", p.display()))
}

fn read_jsonl(p: &Path) -> Result<String> {
    Ok(jsonl_docs(&read_text(p)?, p)?.join("\n\n"))
}

/// The `text` field of every non-empty line of a JSON-lines text read from `p`.
pub(crate) fn jsonl_docs(text: &str, p: &Path) -> Result<Vec<String>> {
    let mut docs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .wrap_err_with(|| format!("`{}` line {}: not valid JSON", p.display(), i + 1))?;
        match v.get("text").and_then(|t| t.as_str()) {
            Some(t) => docs.push(t.to_string()),
            None => bail!("`{}` line {}: no string field `text`", p.display(), i + 1),
        }
    }
    if docs.is_empty() {
        bail!("`{}` has no documents", p.display());
    }
    Ok(docs)
}

/// The first `n` non-overlapping windows of `seq_len` tokens: window k = ids[k·len .. (k+1)·len].
pub fn windows(ids: &[u32], seq_len: usize, n: usize, what: &str) -> Result<Vec<Vec<u32>>> {
    if seq_len < 2 {
        bail!("windows must be at least 2 tokens long (got {seq_len})");
    }
    let available = ids.len() / seq_len;
    let n = if n == 0 { available } else { n };
    if available == 0 {
        bail!(
            "{what} has {} tokens, not enough for one window of {seq_len}",
            ids.len()
        );
    }
    if available < n {
        bail!(
            "{what} has {} tokens, enough for {available} windows of {seq_len}, but {n} were asked: use fewer or shorter windows",
            ids.len()
        );
    }
    Ok(ids
        .chunks_exact(seq_len)
        .take(n)
        .map(|c| c.to_vec())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_non_overlapping_prefix() {
        let ids: Vec<u32> = (0..10).collect();
        assert_eq!(
            windows(&ids, 3, 3, "t").unwrap(),
            vec![vec![0, 1, 2], vec![3, 4, 5], vec![6, 7, 8]]
        );
        assert!(windows(&ids, 3, 4, "t")
            .unwrap_err()
            .to_string()
            .contains("enough for 3 windows"));
    }

    #[test]
    fn jsonl_joins_text_fields() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.jsonl");
        std::fs::write(&p, "{\"text\":\"a b\"}\n\n{\"text\":\"c\",\"x\":1}\n").unwrap();
        assert_eq!(
            TextSource::parse(p.to_str().unwrap(), DemoSplit::Eval)
                .unwrap()
                .load(&mut |_| {})
                .unwrap(),
            "a b\n\nc"
        );
        std::fs::write(&p, "{\"txt\":\"a\"}\n").unwrap();
        assert!(read_jsonl(&p)
            .unwrap_err()
            .to_string()
            .contains("no string field `text`"));
    }
}
