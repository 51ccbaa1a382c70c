//! Files dlpx fetches, caches and writes, below both the model and the data code: the cache
//! folder, sha256 hashing, atomic writes, the safetensors shard index, Hugging Face Hub
//! downloads (`hub`) and the demo assets (`demo`).

pub mod demo;
pub mod hub;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use color_eyre::eyre::{bail, eyre, Result, WrapErr};
use sha2::{Digest, Sha256};

use crate::error::ProgramMissing;

/// The cache root: `$DLPX_CACHE`, else the XDG cache dir (`~/.cache/dlpx`).
pub fn cache_dir() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("DLPX_CACHE").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    dirs::cache_dir()
        .map(|d| d.join("dlpx"))
        .ok_or_else(|| eyre!("no cache directory found: set DLPX_CACHE to a writable folder"))
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f =
        std::fs::File::open(path).wrap_err_with(|| format!("cannot open `{}`", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

/// Check a fetched file against its pinned sha256; a mismatch removes it (the next run fetches
/// it again) and is an error naming both hashes.
pub fn verify_pinned(path: &Path, sha256: &str) -> Result<()> {
    let got = sha256_file(path)?;
    if got != sha256 {
        std::fs::remove_file(path).ok();
        bail!(
            "`{}`: sha256 {got} does not match the pinned {sha256}; removed it, run again",
            path.display()
        );
    }
    Ok(())
}

/// sha256 of documents joined with "\n\n", without building the joined string.
pub fn sha256_docs(docs: &[String]) -> String {
    let mut h = Sha256::new();
    for (i, d) in docs.iter().enumerate() {
        if i > 0 {
            h.update(b"\n\n");
        }
        h.update(d.as_bytes());
    }
    hex(&h.finalize())
}

pub fn sha256_bytes(b: &[u8]) -> String {
    hex(&Sha256::digest(b))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Files dlpx writes are meant to be shared like any other (temp files are created 0600).
#[cfg(unix)]
pub fn make_shareable(path: &Path, dir: bool) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = if dir { 0o755 } else { 0o644 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .wrap_err_with(|| format!("cannot set the permissions of `{}`", path.display()))
}

#[cfg(not(unix))]
pub fn make_shareable(_path: &Path, _dir: bool) -> Result<()> {
    Ok(())
}

/// Write `bytes` to `path` atomically: a temp file beside it, then rename. A failure leaves
/// whatever was at `path` untouched.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = ensure_parent_dir(path)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".dlpx-")
        .tempfile_in(dir)
        .wrap_err_with(|| format!("cannot write in `{}`", dir.display()))?;
    std::io::Write::write_all(&mut tmp, bytes)
        .wrap_err_with(|| format!("cannot write `{}`", path.display()))?;
    make_shareable(tmp.path(), false)?;
    tmp.persist(path)
        .map_err(|e| eyre!("cannot write `{}`: {e}", path.display()))?;
    Ok(())
}

/// The folder `path` would be written in (`.` for a bare name), or an error naming it when it
/// does not exist: checked before any work, so a typo costs nothing.
pub fn ensure_parent_dir(path: &Path) -> Result<&Path> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        bail!(
            "cannot write `{}`: folder `{}` does not exist",
            path.display(),
            dir.display()
        );
    }
    Ok(dir)
}

/// `<cache>/<kind>/<sha256 of the key's JSON>.json`: one file per key of a result cache.
pub fn keyed_path(kind: &str, key: &impl serde::Serialize) -> Result<PathBuf> {
    let id = sha256_bytes(serde_json::to_string(key)?.as_bytes());
    Ok(cache_dir()?.join(kind).join(format!("{id}.json")))
}

/// A cached value; `None` when absent or unreadable (a damaged file is recomputed, never trusted).
pub fn cache_load<T: serde::de::DeserializeOwned>(
    kind: &str,
    key: &impl serde::Serialize,
) -> Option<T> {
    let bytes = std::fs::read(keyed_path(kind, key).ok()?).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Store a value under its key (atomically).
pub fn cache_store(
    kind: &str,
    key: &impl serde::Serialize,
    value: &impl serde::Serialize,
) -> Result<()> {
    let path = keyed_path(kind, key)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .wrap_err_with(|| format!("cannot create the cache folder `{}`", dir.display()))?;
    }
    write_atomic(&path, &serde_json::to_vec(value)?)
}

/// `python3`, or `python` where that is the only name.
pub fn python_program() -> &'static str {
    match Command::new("python3").arg("--version").output() {
        Ok(_) => "python3",
        Err(_) => "python",
    }
}

/// Run a package manager (pip, npm) that writes one file, `expect`, into a fresh temp folder,
/// and move it to `dir/downloads/` (reused when already there); `purpose` says what for in the
/// error when the program is missing. The caller checks the file's pinned sha256.
pub fn fetch_package(
    program: &str,
    purpose: &str,
    args: &[&str],
    expect: &str,
    dir: &Path,
    status: &mut dyn FnMut(&str),
) -> Result<PathBuf> {
    let dest = dir.join("downloads");
    std::fs::create_dir_all(&dest)?;
    let target = dest.join(expect);
    if target.is_file() {
        return Ok(target);
    }
    let tmp = tempfile::tempdir_in(&dest)?;
    status(&format!("fetching {expect} with {program}"));
    let mut cmd = Command::new(program);
    cmd.args(args)
        .current_dir(tmp.path())
        .stdin(std::process::Stdio::null());
    if program == "npm" {
        cmd.arg("--pack-destination").arg(tmp.path());
    } else {
        cmd.arg("-d").arg(tmp.path());
    }
    let out = match cmd.output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ProgramMissing {
                program: program.to_string(),
                purpose: purpose.to_string(),
            }
            .into())
        }
        Err(e) => return Err(e).wrap_err_with(|| format!("cannot run `{program}`")),
    };
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err
            .lines()
            .rev()
            .take(4)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        bail!(
            "`{program} {}` failed (is the package registry reachable?): {}",
            args.join(" "),
            tail.join(" | ")
        );
    }
    let got = tmp.path().join(expect);
    if !got.is_file() {
        bail!("`{program}` finished but did not produce {expect}");
    }
    std::fs::rename(&got, &target)?;
    Ok(target)
}

/// The shard files named by a `model.safetensors.index.json` (its `weight_map` values), sorted
/// and without repeats. `what` names the index in errors.
pub fn safetensors_shards(index_json: &str, what: &str) -> Result<Vec<String>> {
    let v: serde_json::Value =
        serde_json::from_str(index_json).wrap_err_with(|| format!("`{what}` is not valid JSON"))?;
    let Some(map) = v.get("weight_map").and_then(|m| m.as_object()) else {
        bail!("`{what}` has no weight_map object: is it a safetensors index?");
    };
    let mut shards = Vec::with_capacity(map.len());
    for (tensor, file) in map {
        let Some(f) = file.as_str() else {
            bail!("`{what}`: the shard of tensor `{tensor}` is not a file name");
        };
        // A shard is a file beside the index: never a path that leaves the folder.
        if f.is_empty() || f.contains('/') || f.contains('\\') || f == ".." {
            bail!("`{what}`: shard `{f}` of tensor `{tensor}` is not a plain file name");
        }
        shards.push(f.to_string());
    }
    shards.sort();
    shards.dedup();
    Ok(shards)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_index_is_parsed_and_checked() {
        let idx = r#"{"metadata":{},"weight_map":{"a":"m-2.safetensors","b":"m-1.safetensors","c":"m-2.safetensors"}}"#;
        assert_eq!(
            safetensors_shards(idx, "i").unwrap(),
            vec!["m-1.safetensors", "m-2.safetensors"]
        );
        let e = safetensors_shards(r#"{"weight_map":{"a":"../x"}}"#, "i").unwrap_err();
        assert!(e.to_string().contains("not a plain file name"), "{e}");
        let e = safetensors_shards("{}", "i").unwrap_err();
        assert!(e.to_string().contains("no weight_map"), "{e}");
    }

    #[test]
    fn atomic_writes_are_shareable_and_replace_whole() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o644);
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let e = write_atomic(&dir.path().join("no/such/r.json"), b"x").unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
    }
}
