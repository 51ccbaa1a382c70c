//! The tiny study the sweep, plot, table and Slurm tests share: a random-weight model and a text
//! in a temp dir, the data flags that keep one run to about a second, the sweep grid, and readers
//! of what `dlpx sweep` writes.

use std::path::{Path, PathBuf};
use std::process::Output;

use super::{dlpx_in, ok, text_file, Tiny};

/// Calibration and evaluation small enough for a run of the tiny model in about a second:
/// 4 calibration windows and 6 evaluation windows of 16 tokens.
pub const DATA: [&str; 6] = [
    "--calib-samples",
    "4",
    "--seq-len",
    "16",
    "--eval-windows",
    "6",
];

/// The sweep grid: α ∈ {0, 0.1, 0.2} × p ∈ {0.5, 0.6} × {DLP, uniform}, 12 points.
pub const GRID: [&str; 6] = [
    "--param",
    "alpha=0:0.2:0.1",
    "--param",
    "sparsity=0.5,0.6",
    "--allocation",
    "dlp,uniform",
];

/// A tiny model and the text it is calibrated and evaluated on, in a temp dir that is also the
/// runs' cache (`DLPX_CACHE`).
pub struct Study {
    pub dir: tempfile::TempDir,
    pub model: PathBuf,
    pub text: String,
}

impl Study {
    /// `tiny`'s architecture with random weights from `seed`.
    pub fn new(tiny: Tiny, seed: u64) -> Study {
        let dir = tempfile::tempdir().unwrap();
        let (model, _) = tiny.gguf_in(dir.path(), seed);
        let text = text_file(dir.path());
        Study { dir, model, text }
    }

    pub fn d(&self) -> &Path {
        self.dir.path()
    }

    pub fn m(&self) -> &str {
        self.model.to_str().unwrap()
    }

    /// `dlpx ARGS` with the cache in the study's folder.
    pub fn dlpx(&self, args: &[&str]) -> Output {
        dlpx_in(self.d(), args)
    }

    /// `--model M --calib T --eval T` and [`DATA`].
    pub fn data(&self) -> Vec<String> {
        let mut a: Vec<String> = [
            "--model",
            self.m(),
            "--calib",
            &self.text,
            "--eval",
            &self.text,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(DATA.iter().map(|s| s.to_string()));
        a
    }

    /// `dlpx sweep` over [`GRID`] (without `--out`).
    pub fn grid(&self) -> Vec<String> {
        let mut a = vec!["sweep".to_string()];
        a.extend(self.data());
        a.extend(GRID.iter().map(|s| s.to_string()));
        a
    }

    /// `dlpx prune … --mode preview EXTRA --report NAME`: the report's path.
    pub fn report(&self, name: &str, extra: &[&str]) -> PathBuf {
        let out = self.d().join(name);
        let data = self.data();
        let mut a = vec!["prune"];
        a.extend(data.iter().map(String::as_str));
        a.extend(["--mode", "preview", "--report", out.to_str().unwrap()]);
        a.extend(extra);
        ok(&self.dlpx(&a));
        out
    }
}

/// The points of a sweep file (its header line left out), in the file's order.
pub fn rows(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .skip(1)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// What the points measured (not how long they took), in grid order: what two runs of the same
/// grid, sharded or not, must agree on.
pub fn measured(rows: &[serde_json::Value]) -> Vec<serde_json::Value> {
    let mut r: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            let mut r = r.clone();
            r.as_object_mut().unwrap().remove("seconds");
            r
        })
        .collect();
    r.sort_by_key(|r| r["index"].as_u64().unwrap());
    r
}

/// The row with the lowest number in `field`.
pub fn lowest<'a>(rows: &'a [serde_json::Value], field: &str) -> &'a serde_json::Value {
    rows.iter()
        .min_by(|a, b| {
            let v = |r: &serde_json::Value| r[field].as_f64().unwrap();
            v(a).total_cmp(&v(b))
        })
        .unwrap()
}
