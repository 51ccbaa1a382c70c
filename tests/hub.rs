//! The Hugging Face Hub path end to end, without the internet: a local server that speaks the
//! routes hf-hub uses (`tests/common/hub_server.rs`), `HF_ENDPOINT` pointing at it, and the real
//! binary. A sharded safetensors model by id and by revision, a gated model (401), a missing id
//! (404), a download cut in the middle (no half file in the cache; the next run completes it),
//! and the `c4` / `wikitext2` presets reading their files from it.

mod common;
#[path = "common/hub_server.rs"]
mod hub_server;

use std::collections::HashMap;
use std::path::Path;
use std::process::Output;

use candle_core::{DType, Device, Tensor};
use common::Tiny;
use hub_server::{serve, Behaviour, Server};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// A sharded safetensors folder of the tiny model (config.json, tokenizer.json, an index and two
/// shards), as files of repo `repo` on the fake hub. Also returns the folder (to compare with).
fn sharded_model(
    dir: &Path,
    repo: &str,
) -> (HashMap<String, (Vec<u8>, String)>, std::path::PathBuf) {
    let (gguf, _) = Tiny::default().gguf_in(dir, 5);
    let m = dlpx::model::load_gguf(&gguf, &Device::Cpu, DType::F32, &mut |_| {}).unwrap();
    let folder = dir.join("folder");
    dlpx::model::save_folder(&m, &folder).unwrap();
    let all =
        candle_core::safetensors::load(folder.join("model.safetensors"), &Device::Cpu).unwrap();
    std::fs::remove_file(folder.join("model.safetensors")).unwrap();
    let mut names: Vec<&String> = all.keys().collect();
    names.sort();
    let mut shards: [HashMap<String, Tensor>; 2] = [HashMap::new(), HashMap::new()];
    let mut map = serde_json::Map::new();
    for (i, n) in names.iter().enumerate() {
        let s = i % 2;
        shards[s].insert((*n).clone(), all[*n].clone());
        map.insert(
            (*n).clone(),
            format!("model-0000{}-of-00002.safetensors", s + 1).into(),
        );
    }
    for (s, t) in shards.iter().enumerate() {
        candle_core::safetensors::save(
            t,
            folder.join(format!("model-0000{}-of-00002.safetensors", s + 1)),
        )
        .unwrap();
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(
        folder.join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let mut files = HashMap::new();
    for e in std::fs::read_dir(&folder).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        files.insert(
            format!("{repo}/{name}"),
            (std::fs::read(&p).unwrap(), COMMIT.to_string()),
        );
    }
    (files, folder)
}

fn text_file(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("text.txt");
    let body: String = (0..300)
        .map(|i| format!("line {i} of some text\n"))
        .collect();
    std::fs::write(&p, body).unwrap();
    p
}

/// Run the binary against the server with a fresh Hugging Face cache at `hf_home`.
fn dlpx(server: &Server, hf_home: &Path, token: Option<&str>, args: &[&str]) -> Output {
    let mut c = server.dlpx(hf_home);
    if let Some(t) = token {
        c.env("HF_TOKEN", t);
    }
    c.args(args).output().unwrap()
}

fn ppl_of(o: &Output) -> f64 {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["ppl"].as_f64().unwrap()
}

fn eval_args<'a>(model: &'a str, text: &'a str) -> Vec<&'a str> {
    vec![
        "eval",
        "--model",
        model,
        "--data",
        text,
        "--seq-len",
        "16",
        "--windows",
        "3",
        "--json",
    ]
}

#[test]
fn a_sharded_model_by_id_and_revision_equals_the_local_folder() {
    let dir = tempfile::tempdir().unwrap();
    let (files, folder) = sharded_model(dir.path(), "org/tiny");
    let server = serve(files, Behaviour::default());
    let text = text_file(dir.path());
    let t = text.to_str().unwrap();
    let local = ppl_of(&dlpx(
        &server,
        &dir.path().join("unused"),
        None,
        &eval_args(folder.to_str().unwrap(), t),
    ));
    let home = dir.path().join("hf");
    let by_id = ppl_of(&dlpx(&server, &home, None, &eval_args("org/tiny", t)));
    assert_eq!(
        by_id, local,
        "the downloaded model differs from the local folder"
    );
    let pinned = format!("org/tiny@{COMMIT}");
    let by_rev = ppl_of(&dlpx(&server, &home, None, &eval_args(&pinned, t)));
    assert_eq!(by_rev, local);
    // Both shards and the index were fetched through the resolve route.
    let got: Vec<String> = server.requests().into_iter().map(|r| r.target).collect();
    for f in [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
    ] {
        assert!(
            got.iter().any(|t| t.ends_with(f)),
            "{f} never requested: {got:?}"
        );
    }
    // A revision the repo does not have: one clear error naming the id and the revision.
    let o = dlpx(
        &server,
        &dir.path().join("hf2"),
        None,
        &eval_args("org/tiny@v9", t),
    );
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && e.contains("org/tiny") && e.contains("v9"),
        "{e}"
    );
}

#[test]
fn gated_and_missing_models_are_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let (files, _) = sharded_model(dir.path(), "org/gated");
    let mut b = Behaviour::default();
    b.gated.insert("org/gated".into());
    b.token = "hf_secret".into();
    let server = serve(files, b);
    let text = text_file(dir.path());
    let t = text.to_str().unwrap();

    let o = dlpx(
        &server,
        &dir.path().join("a"),
        None,
        &eval_args("org/gated", t),
    );
    let e = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success(), "{e}");
    assert!(
        e.contains("401") && e.contains("HF_TOKEN") && e.contains("org/gated"),
        "{e}"
    );
    assert_eq!(
        e.lines().filter(|l| l.starts_with("error:")).count(),
        1,
        "{e}"
    );
    // With the token it loads.
    let ok = dlpx(
        &server,
        &dir.path().join("b"),
        Some("hf_secret"),
        &eval_args("org/gated", t),
    );
    assert!(ppl_of(&ok) > 1.0);

    let o = dlpx(
        &server,
        &dir.path().join("c"),
        None,
        &eval_args("org/missing", t),
    );
    let e = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(
        !o.status.success() && e.contains("404") && e.contains("org/missing"),
        "{e}"
    );
}

#[test]
fn an_interrupted_download_leaves_no_half_file_and_completes_next_time() {
    let dir = tempfile::tempdir().unwrap();
    let (files, folder) = sharded_model(dir.path(), "org/tiny");
    let shard = std::fs::read(folder.join("model-00001-of-00002.safetensors")).unwrap();
    let b = Behaviour {
        cut_after: Some(shard.len() / 2),
        ..Default::default()
    };
    let server = serve(files, b);
    let text = text_file(dir.path());
    let t = text.to_str().unwrap();
    let home = dir.path().join("hf");
    let o = dlpx(&server, &home, None, &eval_args("org/tiny", t));
    let e = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success(), "the cut went unnoticed: {e}");
    assert!(e.contains("org/tiny"), "{e}");
    // Nothing under snapshots/ is a partial file: every file there is complete.
    // config.json comes first and is smaller than the cut, so the snapshot folder exists; the
    // cut file is not in it.
    let snap = home.join("hub/models--org--tiny/snapshots").join(COMMIT);
    assert!(snap.is_dir(), "no snapshot folder at {}", snap.display());
    let mut names = vec![];
    for f in std::fs::read_dir(&snap).unwrap() {
        let p = f.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        let want = std::fs::read(folder.join(&name)).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), want, "{name} is not whole");
        names.push(name);
    }
    assert!(names.iter().any(|n| n == "config.json"), "{names:?}");
    // The cut falls on the first body over half a shard: the first shard or an earlier file.
    assert!(
        !names
            .iter()
            .any(|n| n == "model-00001-of-00002.safetensors"),
        "{names:?}"
    );
    // The next run resumes (or restarts) and gives the same model as the local folder.
    let local = ppl_of(&dlpx(
        &server,
        &dir.path().join("unused"),
        None,
        &eval_args(folder.to_str().unwrap(), t),
    ));
    let again = ppl_of(&dlpx(&server, &home, None, &eval_args("org/tiny", t)));
    assert_eq!(again, local);
}

#[test]
fn c4_and_wikitext2_presets_read_their_files_from_the_hub() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let docs: Vec<String> = (0..30)
        .map(|i| {
            format!(
                "document {i}: {}",
                "lorem ipsum dolor sit amet ".repeat(3 + i % 4)
            )
        })
        .collect();
    let gz = d.join("c4.json.gz");
    common::write_jsonl_gz(&gz, &docs);
    let rows: Vec<String> = (0..25)
        .map(|i| format!(" = Section {i} = \n Some wiki text, line {i}. "))
        .collect();
    let pq = d.join("wiki.parquet");
    common::write_parquet_text(&pq, &rows);
    let mut files = HashMap::new();
    let put = |files: &mut HashMap<_, _>, repo: &str, file: &str, p: &Path| {
        files.insert(
            format!("datasets/{repo}/{file}"),
            (std::fs::read(p).unwrap(), COMMIT.to_string()),
        );
    };
    use dlpx::data::presets::{C4_FILE, C4_REPO, WIKITEXT_FILE, WIKITEXT_REPO};
    put(&mut files, C4_REPO, C4_FILE, &gz);
    put(&mut files, WIKITEXT_REPO, WIKITEXT_FILE, &pq);
    let server = serve(files, Behaviour::default());
    let (model, _) = Tiny::default().gguf_in(d, 3);
    let home = d.join("hf");
    let run = |eval_windows: &str| {
        let o = dlpx(
            &server,
            &home,
            None,
            &[
                "prune",
                "--model",
                model.to_str().unwrap(),
                "--calib",
                "c4",
                "--eval",
                "wikitext2",
                "--calib-samples",
                "4",
                "--seq-len",
                "16",
                "--eval-windows",
                eval_windows,
                "--mode",
                "preview",
                "--json",
            ],
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    let r = run("0");
    // The report names the presets and hashes the text that was read.
    assert_eq!(r["data"]["calib"]["source"], "c4");
    assert_eq!(r["data"]["eval"]["source"], "wikitext2");
    // sha256 of the documents joined with "\n\n", computed here from the joined text.
    let docs_sha: String = {
        use sha2::Digest;
        sha2::Sha256::digest(docs.join("\n\n").as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    assert_eq!(docs_sha.len(), 64);
    assert_eq!(r["data"]["calib"]["sha256"], docs_sha);
    let rows_sha: String = {
        use sha2::Digest;
        sha2::Sha256::digest(rows.join("\n\n").as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    assert_eq!(r["data"]["eval"]["sha256"], rows_sha);
    assert!(r["ppl"]["dense"].as_f64().unwrap() > 1.0);
    // The second run reads the files from the Hugging Face cache: no new requests.
    let before = server.requests().len();
    run("2");
    assert_eq!(server.requests().len(), before, "presets downloaded again");
}
