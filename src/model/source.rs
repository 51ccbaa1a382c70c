//! Where a model comes from: the demo GGUF, a local `.gguf` file, a local safetensors folder, or a
//! Hugging Face model id.

use std::path::{Path, PathBuf};

use color_eyre::eyre::{bail, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// The demo SmolLM2-135M GGUF, fetched into the cache on first use.
    Demo,
    Gguf(PathBuf),
    Folder(PathBuf),
    Hub {
        id: String,
        revision: String,
    },
}

impl ModelSource {
    /// Interpret a model argument. Existing paths win; otherwise something that looks like a
    /// path (ends with .gguf, starts with `.`/`/`/`~`) is reported as missing, and anything of the
    /// form `owner/name[@revision]` is a Hub id.
    pub fn parse(arg: Option<&str>, revision: Option<&str>) -> Result<Self> {
        let Some(arg) = arg else {
            return Ok(Self::Demo);
        };
        if arg == "demo" {
            return Ok(Self::Demo);
        }
        let path = Path::new(arg);
        if path.is_file() {
            return Ok(Self::Gguf(path.to_path_buf()));
        }
        if path.is_dir() {
            return Ok(Self::Folder(path.to_path_buf()));
        }
        let looks_like_path = arg.ends_with(".gguf")
            || arg.ends_with(".safetensors")
            || arg.starts_with('.')
            || arg.starts_with('/')
            || arg.starts_with('~')
            || arg.contains('\\')
            || arg.matches('/').count() > 1;
        if looks_like_path {
            bail!("model file or folder `{arg}` does not exist: check the path (a .gguf file, or a folder with config.json)");
        }
        let (id, rev_in_id) = match arg.split_once('@') {
            Some((i, r)) => (i, Some(r)),
            None => (arg, None),
        };
        let valid = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        let ok = match id.split_once('/') {
            Some((o, n)) => valid(o) && valid(n),
            None => valid(id),
        };
        if !ok {
            bail!("`{arg}` is neither an existing file or folder nor a Hugging Face model id (owner/name[@revision])");
        }
        let revision = rev_in_id.or(revision).unwrap_or("main").to_string();
        Ok(Self::Hub {
            id: id.to_string(),
            revision,
        })
    }

    /// A short human label.
    /// What PEFT's `adapter_config.json` names as the base model (`base_model_name_or_path`,
    /// `revision`), in a form `from_pretrained` accepts: a Hub id (its revision apart), else
    /// the absolute path of the file or folder the model was read from (`loaded`), never a
    /// display name.
    pub fn peft_base(&self, loaded: &Path) -> (String, Option<String>) {
        match self {
            Self::Hub { id, revision } => {
                (id.clone(), (revision != "main").then(|| revision.clone()))
            }
            _ => {
                let abs = std::path::absolute(loaded).unwrap_or_else(|_| loaded.to_path_buf());
                (abs.display().to_string(), None)
            }
        }
    }

    pub fn label(&self) -> String {
        match self {
            Self::Demo => "demo (SmolLM2-135M-Instruct Q4_1 GGUF)".into(),
            Self::Gguf(p) | Self::Folder(p) => p.display().to_string(),
            Self::Hub { id, revision } if revision == "main" => id.clone(),
            Self::Hub { id, revision } => format!("{id}@{revision}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peft_base_is_a_hub_id_or_an_absolute_path() {
        let hub = ModelSource::Hub {
            id: "HuggingFaceTB/SmolLM2-135M".into(),
            revision: "abc".into(),
        };
        let dir = Path::new("/x/y");
        assert_eq!(
            hub.peft_base(dir),
            ("HuggingFaceTB/SmolLM2-135M".into(), Some("abc".into()))
        );
        let main = ModelSource::Hub {
            id: "a/b".into(),
            revision: "main".into(),
        };
        assert_eq!(main.peft_base(dir), ("a/b".into(), None));
        let (demo, rev) = ModelSource::Demo.peft_base(Path::new("cache/demo.gguf"));
        assert!(
            Path::new(&demo).is_absolute() && demo.ends_with("demo.gguf"),
            "{demo}"
        );
        assert_eq!(rev, None);
    }

    #[test]
    fn parses_sources() {
        assert_eq!(ModelSource::parse(None, None).unwrap(), ModelSource::Demo);
        assert_eq!(
            ModelSource::parse(Some("HuggingFaceTB/SmolLM2-135M@abc"), None).unwrap(),
            ModelSource::Hub {
                id: "HuggingFaceTB/SmolLM2-135M".into(),
                revision: "abc".into()
            }
        );
        assert_eq!(
            ModelSource::parse(Some("gpt2"), Some("v1")).unwrap(),
            ModelSource::Hub {
                id: "gpt2".into(),
                revision: "v1".into()
            }
        );
        let e = ModelSource::parse(Some("/nope/model.gguf"), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not exist"), "{e}");
        assert!(ModelSource::parse(Some("a b/c"), None).is_err());
    }
}
