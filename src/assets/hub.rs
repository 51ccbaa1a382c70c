//! Hugging Face Hub downloads (hf-hub's blocking API, no progress bars of its own).
//!
//! Honours `HF_HOME` (cache), `HF_ENDPOINT`, `HF_TOKEN` and `HF_HUB_OFFLINE=1`.

use std::path::PathBuf;

use color_eyre::eyre::{bail, eyre, Result};
use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};

/// Fetches one file of the repo (from the cache or the network).
type Getter<'a> = Box<dyn Fn(&str) -> Result<PathBuf> + 'a>;

fn offline() -> bool {
    matches!(
        std::env::var("HF_HUB_OFFLINE").as_deref(),
        Ok("1") | Ok("true") | Ok("TRUE") | Ok("yes")
    )
}

/// The blocking API with `HF_TOKEN` (or the cached token) and no progress bars of its own.
fn api(cache: &Cache) -> std::result::Result<hf_hub::api::sync::Api, hf_hub::api::sync::ApiError> {
    let token = std::env::var("HF_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
        .or_else(|| cache.token());
    ApiBuilder::from_env()
        .with_progress(false)
        .with_token(token)
        .build()
}

/// Fetches files of model `id` at `revision`: from the cache with `HF_HUB_OFFLINE=1`, else
/// through the API; errors name the id, the revision, HF_TOKEN and the cache.
fn model_getter<'a>(id: &'a str, revision: &'a str) -> Result<Getter<'a>> {
    let cache = Cache::from_env();
    let cache_path = cache.path().clone();
    let repo = Repo::with_revision(id.to_string(), RepoType::Model, revision.to_string());
    let explain = move |file: &str, err: String| {
        eyre!(
            "could not get `{file}` of Hugging Face model `{id}` (revision {revision}): {err}. \
             Check the id, the network, or HF_TOKEN for gated models; the cache is {}",
            cache_path.display()
        )
    };
    if offline() {
        let cached = cache.repo(repo);
        let cache_path = cache.path().clone();
        return Ok(Box::new(move |file: &str| {
            cached.get(file).ok_or_else(|| {
                eyre!(
                    "Hugging Face model `{id}` (revision {revision}) has no `{file}` in the cache at {} and \
                     HF_HUB_OFFLINE is set: run once with network access, or unset HF_HUB_OFFLINE",
                    cache_path.display()
                )
            })
        }));
    }
    let api = api(&cache).map_err(|e| explain("(api)", e.to_string()))?;
    let r = api.repo(repo);
    Ok(Box::new(move |file: &str| {
        r.get(file).map_err(|e| explain(file, e.to_string()))
    }))
}

/// One file of model `id` (from the cache, or downloaded into it), e.g. its tokenizer.json.
pub fn fetch_model_file(
    id: &str,
    revision: &str,
    file: &str,
    status: &mut dyn FnMut(&str),
) -> Result<PathBuf> {
    status(&format!("fetching {file} of {id}"));
    model_getter(id, revision)?(file)
}

/// Download (or find in the cache) what a model folder needs and return the snapshot folder that
/// holds config.json, tokenizer.json and the safetensors files.
pub fn fetch_model(id: &str, revision: &str, status: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    let get = model_getter(id, revision)?;
    status(&format!("fetching {id} config"));
    let config = get("config.json")?;
    get("tokenizer.json")?;
    // What transformers' save_pretrained writes beside them; not every repo has each.
    for optional in [
        "tokenizer_config.json",
        "special_tokens_map.json",
        "generation_config.json",
    ] {
        let _ = get(optional);
    }
    let weights = match get("model.safetensors.index.json") {
        Ok(index) => super::safetensors_shards(
            &std::fs::read_to_string(&index)?,
            &format!("{id}/model.safetensors.index.json"),
        )?,
        Err(_) => vec!["model.safetensors".to_string()],
    };
    for (i, w) in weights.iter().enumerate() {
        status(&format!(
            "fetching {id} weights {}/{}: {w}",
            i + 1,
            weights.len()
        ));
        get(w)?;
    }
    match config.parent() {
        Some(p) => Ok(p.to_path_buf()),
        None => bail!("unexpected cache layout for {id}"),
    }
}

/// One file of a Hugging Face dataset repo (from the cache, or downloaded into it). With
/// `HF_HUB_OFFLINE=1` only the cache is used.
pub fn fetch_dataset_file(id: &str, file: &str, status: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    fetch_dataset_file_at(id, "main", file, status)
}

/// [`fetch_dataset_file`] at `revision` (e.g. `refs/convert/parquet`, the Hub's parquet copy of
/// every dataset).
pub fn fetch_dataset_file_at(
    id: &str,
    revision: &str,
    file: &str,
    status: &mut dyn FnMut(&str),
) -> Result<PathBuf> {
    let cache = Cache::from_env();
    let repo = Repo::with_revision(id.to_string(), RepoType::Dataset, revision.to_string());
    if let Some(p) = cache.repo(repo.clone()).get(file) {
        return Ok(p);
    }
    if offline() {
        bail!(
            "dataset `{id}` (revision {revision}) has no `{file}` in the Hugging Face cache at {} and \
             HF_HUB_OFFLINE is set: run once with network access, or unset HF_HUB_OFFLINE",
            cache.path().display()
        );
    }
    status(&format!("fetching {file} of dataset {id}"));
    let api = api(&cache).map_err(|e| eyre!("Hugging Face API: {e}"))?;
    api.repo(repo).get(file).map_err(|e| {
        eyre!(
            "could not get `{file}` of Hugging Face dataset `{id}` (revision {revision}): {e}. Check \
             the network (or HF_ENDPOINT); the cache is {}",
            cache.path().display()
        )
    })
}
