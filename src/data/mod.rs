//! Text sources and the fixed-length windows of the calibration/evaluation protocol.

pub mod demo;

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
}

impl TextSource {
    /// Parse a `--data`/`--calib`/`--eval` argument: `demo` or a file path.
    pub fn parse(arg: &str, demo: DemoSplit) -> Result<Self> {
        if arg == "demo" {
            return Ok(Self::Demo(demo));
        }
        let p = PathBuf::from(arg);
        if !p.is_file() {
            bail!("text file `{arg}` does not exist: pass `demo` or the path of a .txt or .jsonl file");
        }
        if arg.ends_with(".jsonl") {
            Ok(Self::Jsonl(p))
        } else {
            Ok(Self::Txt(p))
        }
    }

    pub fn label(&self) -> String {
        match self {
            Self::Demo(DemoSplit::Calib) => "demo:calib (Brown a–j)".into(),
            Self::Demo(DemoSplit::Eval) => "demo:eval (Brown k–r)".into(),
            Self::Txt(p) | Self::Jsonl(p) => p.display().to_string(),
        }
    }

    /// The whole text, fetching the demo corpus if needed.
    pub fn load(&self, status: &mut dyn FnMut(&str)) -> Result<String> {
        match self {
            Self::Demo(split) => {
                let (calib, eval) = demo::ensure_corpus(status)?;
                read_text(if *split == DemoSplit::Calib {
                    &calib
                } else {
                    &eval
                })
            }
            Self::Txt(p) => read_text(p),
            Self::Jsonl(p) => read_jsonl(p),
        }
    }
}

fn read_text(p: &Path) -> Result<String> {
    let bytes = std::fs::read(p).wrap_err_with(|| format!("cannot read `{}`", p.display()))?;
    String::from_utf8(bytes).map_err(|_| eyre!("`{}` is not UTF-8 text", p.display()))
}

fn read_jsonl(p: &Path) -> Result<String> {
    let text = read_text(p)?;
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
    Ok(docs.join("\n\n"))
}

/// The first `n` non-overlapping windows of `seq_len` tokens: window k = ids[k·len .. (k+1)·len].
pub fn windows(ids: &[u32], seq_len: usize, n: usize, what: &str) -> Result<Vec<Vec<u32>>> {
    if seq_len < 2 {
        bail!("--seq-len must be at least 2 (got {seq_len})");
    }
    if n == 0 {
        bail!("the number of windows must be at least 1");
    }
    let available = ids.len() / seq_len;
    if available < n {
        bail!(
            "{what} has {} tokens, enough for {available} windows of {seq_len}, but {n} were asked: use fewer windows or a shorter --seq-len",
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
