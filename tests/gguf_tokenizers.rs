//! GGUF tokenizers against llama.cpp's own test vectors: the vocabulary-only GGUF files
//! `ggml-vocab-{llama-spm,llama-bpe,qwen2}.gguf` with their `.inp` inputs and `.out` expected ids,
//! as llama.cpp ships them in `vendor/llama.cpp/models/` of the PyPI sdist
//! `llama-cpp-python==0.3.36` (fetched once with pip into `$DLPX_CACHE/test-assets`, sha256-pinned).
//! Every vector must pass, through the library and through `dlpx tokenize`.

use std::io::Read;
use std::path::{Path, PathBuf};

const SDIST_SPEC: &str = "llama-cpp-python==0.3.36";
const SDIST_FILE: &str = "llama_cpp_python-0.3.36.tar.gz";
const SDIST_SHA256: &str = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e";
const MEMBER_DIR: &str = "llama_cpp_python-0.3.36/vendor/llama.cpp/models/";
const VOCABS: [&str; 3] = ["llama-spm", "llama-bpe", "qwen2"];
/// The separator of the `.inp` files (llama.cpp's tests/test-tokenizer-0.cpp).
const SEP: &str = "\n__ggml_vocab_test__\n";

/// The folder with the nine files, fetching and extracting them on first use.
fn vocab_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = dlpx::assets::cache_dir()
            .unwrap()
            .join("test-assets/llama-cpp-python-0.3.36");
        let names: Vec<String> = VOCABS
            .iter()
            .flat_map(|v| ["", ".inp", ".out"].map(|e| format!("ggml-vocab-{v}.gguf{e}")))
            .collect();
        if names.iter().all(|n| dir.join(n).is_file()) {
            return dir;
        }
        std::fs::create_dir_all(&dir).unwrap();
        let sdist = dlpx::assets::fetch_package(
            dlpx::assets::python_program(),
            "llama.cpp's tokenizer test vectors; install Python with pip",
            &[
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-binary=llama-cpp-python",
                "--disable-pip-version-check",
                "-q",
                SDIST_SPEC,
            ],
            SDIST_FILE,
            &dir,
            &mut |s| eprintln!("{s}"),
        )
        .unwrap();
        dlpx::assets::verify_pinned(&sdist, SDIST_SHA256).unwrap();
        let gz = flate2::read::GzDecoder::new(std::fs::File::open(&sdist).unwrap());
        for entry in tar::Archive::new(gz).entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().to_string();
            let Some(name) = path.strip_prefix(MEMBER_DIR) else {
                continue;
            };
            if names.iter().any(|n| n == name) {
                let mut bytes = Vec::new();
                entry.read_to_end(&mut bytes).unwrap();
                dlpx::assets::write_atomic(&dir.join(name), &bytes).unwrap();
            }
        }
        // The extracted files are all the tests need.
        std::fs::remove_file(&sdist).ok();
        for n in &names {
            assert!(dir.join(n).is_file(), "{n} is not in {SDIST_FILE}");
        }
        dir
    })
    .clone()
}

/// The inputs and expected ids, read as test-tokenizer-0.cpp reads them.
fn vectors(dir: &Path, vocab: &str) -> Vec<(String, Vec<u32>)> {
    let raw = std::fs::read(dir.join(format!("ggml-vocab-{vocab}.gguf.inp"))).unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let mut inputs = vec![];
    let mut pos = 0;
    while pos < raw.len() {
        match raw[pos..].find(SEP) {
            Some(n) => {
                inputs.push(raw[pos..pos + n].to_string());
                pos += n + SEP.len();
            }
            None => {
                inputs.push(raw[pos..].to_string());
                break;
            }
        }
    }
    let out = std::fs::read_to_string(dir.join(format!("ggml-vocab-{vocab}.gguf.out"))).unwrap();
    let ids: Vec<Vec<u32>> = out
        .strip_suffix('\n')
        .unwrap_or(&out)
        .split('\n')
        .map(|l| {
            l.split(' ')
                .filter(|x| !x.is_empty())
                .map(|x| x.parse().unwrap())
                .collect()
        })
        .collect();
    assert_eq!(
        inputs.len(),
        ids.len(),
        "{vocab}: inputs and outputs differ in number"
    );
    inputs.into_iter().zip(ids).collect()
}

#[test]
fn every_llama_cpp_vector_passes() {
    let dir = vocab_dir();
    for vocab in VOCABS {
        let tok =
            dlpx::model::tokenizer_file(&dir.join(format!("ggml-vocab-{vocab}.gguf"))).unwrap();
        let cases = vectors(&dir, vocab);
        assert_eq!(cases.len(), 46, "{vocab}");
        let failed: Vec<String> = cases
            .iter()
            .filter_map(|(text, want)| {
                let got = tok.encode(text.as_str(), false).unwrap().get_ids().to_vec();
                (got != *want).then(|| format!("{text:?}: want {want:?}, got {got:?}"))
            })
            .collect();
        assert!(
            failed.is_empty(),
            "{vocab}: {} of 46 fail:\n{}",
            failed.len(),
            failed.join("\n")
        );
        // Decoding gives the text back.
        for (text, want) in &cases {
            assert_eq!(&tok.decode(want, false).unwrap(), text, "{vocab}: decode");
        }
    }
}

#[test]
fn dlpx_tokenize_on_a_vocabulary_only_gguf() {
    let dir = vocab_dir();
    let run = |vocab: &str, text: &str, extra: &[&str]| -> serde_json::Value {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_dlpx"))
            .args(["tokenize", "--tokenizer"])
            .arg(dir.join(format!("ggml-vocab-{vocab}.gguf")))
            .args(["--text", text, "--json"])
            .args(extra)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    for vocab in VOCABS {
        // The long mixed-whitespace vector, without special tokens, gives exactly llama.cpp's ids.
        let (text, want) = vectors(&dir, vocab).pop().unwrap();
        let got = run(vocab, &text, &["--no-special"]);
        assert_eq!(got["ids"], serde_json::json!(want), "{vocab}");
    }
    // Special tokens as the metadata asks: BOS for Llama 2 (SentencePiece) and Llama 3, none for
    // Qwen2; pieces on request.
    let spm = run("llama-spm", "Hello", &["--pieces"]);
    assert_eq!(spm["ids"], serde_json::json!([1, 15043]));
    assert_eq!(spm["pieces"], serde_json::json!(["<s>", "▁Hello"]));
    assert_eq!(
        run("llama-bpe", "Hello", &[])["ids"],
        serde_json::json!([128000, 9906])
    );
    assert_eq!(run("qwen2", "Hello", &[])["ids"], serde_json::json!([9707]));
}
