//! Parameter sweeps: every combination of a grid of allocation parameters, pruned from one
//! calibration and measured on the same evaluation windows, so any two points can be compared
//! with the paired bootstrap (`dlpx compare`'s interval).
//!
//! The grid is pure data ([`Grid`]); [`Experiment::sweep_point`] measures one point. Files,
//! resuming and sharding belong to the front end (`dlpx sweep`).

use std::path::Path;

use color_eyre::eyre::{bail, eyre, Result, WrapErr};
use serde::{Deserialize, Serialize};

use super::{Experiment, Observer, Stage};
use crate::error::Setting;
use crate::prune::allocate::Allocation;
use crate::prune::params::Param;
use crate::prune::pipeline::{plan, PruneParams};
use crate::prune::stats::Calibration;
use crate::report::{DataInfo, ModelInfo};
use crate::said;

/// The name of a sweep axis in messages and files.
fn axis(p: Param) -> &'static str {
    p.sweep_name()
}

/// The sweep parameter named `s` (`-` and `_` alike).
fn parse_param(s: &str) -> Result<Param> {
    match Param::by_sweep_name(s) {
        Some(p) => Ok(p),
        None => bail!(
            "unknown sweep parameter `{}`; sweepable: {}",
            s.trim().replace('-', "_"),
            Param::sweepable().map(axis).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// One swept axis: a parameter and its values.
#[derive(Debug, Clone, PartialEq)]
pub struct Axis {
    pub param: Param,
    pub values: Vec<f64>,
}

/// Most points one axis may have (a mistyped step would otherwise ask for millions).
const MAX_AXIS_POINTS: usize = 1000;

impl Axis {
    /// `name=start:stop:step` (stop included when the steps reach it) or `name=v1,v2,...`;
    /// `inf` is accepted for τ.
    pub fn parse(spec: &str) -> Result<Axis> {
        let Some((name, values)) = spec.split_once('=') else {
            return Err(said!(
                Setting::SweepAxis,
                format!(
                    " `{spec}`: write name=start:stop:step or name=v1,v2 (e.g. alpha=0:0.3:0.05)"
                )
            )
            .into());
        };
        let param = parse_param(name)?;
        let num = |s: &str| -> Result<f64> {
            let s = s.trim();
            match s {
                "inf" | "∞" => Ok(f64::INFINITY),
                _ => s.parse::<f64>().map_err(|_| {
                    said!(
                        Setting::SweepAxis,
                        format!(" {}: `{s}` is not a number", axis(param))
                    )
                    .into()
                }),
            }
        };
        let values = if values.contains(':') {
            let parts: Vec<&str> = values.split(':').collect();
            let [a, b, step] = parts.as_slice() else {
                return Err(said!(
                    Setting::SweepAxis,
                    format!(" {}: a range is start:stop:step", axis(param))
                )
                .into());
            };
            let (a, b, step) = (num(a)?, num(b)?, num(step)?);
            if !(step > 0.0 && step.is_finite() && a.is_finite() && b.is_finite() && b >= a) {
                return Err(said!(
                    Setting::SweepAxis,
                    format!(
                        " {}: the range {a}:{b}:{step} needs start ≤ stop and a step > 0",
                        axis(param)
                    )
                )
                .into());
            }
            let n = ((b - a) / step + 1e-9).floor() as usize + 1;
            if n > MAX_AXIS_POINTS {
                return Err(said!(
                    Setting::SweepAxis,
                    format!(
                        " {}: {n} points; at most {MAX_AXIS_POINTS} per axis",
                        axis(param)
                    )
                )
                .into());
            }
            // Each value from the start (no accumulated rounding), rounded to 12 digits so
            // 0.1 + 2·0.05 prints and keys as 0.2.
            (0..n)
                .map(|i| ((a + i as f64 * step) * 1e12).round() / 1e12)
                .collect()
        } else {
            values.split(',').map(num).collect::<Result<Vec<_>>>()?
        };
        if values.is_empty() {
            return Err(said!(Setting::SweepAxis, format!(" {}: no values", axis(param))).into());
        }
        Ok(Axis { param, values })
    }
}

/// Every combination of the axes, for each allocation.
#[derive(Debug, Clone, PartialEq)]
pub struct Grid {
    pub allocations: Vec<Allocation>,
    pub axes: Vec<Axis>,
}

/// One point of a grid: its index (in grid order) and its parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub index: usize,
    pub allocation: Allocation,
    pub values: Vec<(Param, f64)>,
}

impl Point {
    /// A name that identifies the point across runs (resume, merge).
    pub fn key(&self) -> String {
        let mut k = format!("allocation={}", self.allocation.name());
        for (p, v) in &self.values {
            k.push_str(&format!(" {}={}", axis(*p), fmt_value(*v)));
        }
        k
    }

    pub fn params(&self, base: &PruneParams) -> PruneParams {
        let mut p = base.clone();
        p.alloc.allocation = self.allocation;
        for (param, v) in &self.values {
            param.set(&mut p, *v);
        }
        p
    }
}

fn fmt_value(v: f64) -> String {
    if v.is_infinite() {
        "inf".into()
    } else {
        format!("{v}")
    }
}

impl Grid {
    pub fn new(allocations: Vec<Allocation>, axes: Vec<Axis>) -> Result<Grid> {
        if allocations.is_empty() {
            return Err(said!(
                Setting::SweepAllocations,
                format!(": name at least one ({})", Allocation::names())
            )
            .into());
        }
        for (i, a) in axes.iter().enumerate() {
            if axes[..i].iter().any(|b| b.param == a.param) {
                return Err(said!(
                    Setting::SweepAxis,
                    format!(" {} is given twice", axis(a.param))
                )
                .into());
            }
        }
        Ok(Grid { allocations, axes })
    }

    pub fn len(&self) -> usize {
        self.allocations.len() * self.axes.iter().map(|a| a.values.len()).product::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// All points in grid order: allocation outermost, then the axes as given, the last
    /// fastest.
    pub fn points(&self) -> Vec<Point> {
        let per_alloc: usize = self.axes.iter().map(|a| a.values.len()).product();
        let mut out = Vec::with_capacity(self.len());
        for &allocation in &self.allocations {
            for j in 0..per_alloc {
                // Mixed-radix digits of j, the last axis the fastest.
                let mut rest = j;
                let mut values = vec![(Param::Sparsity, 0.0); self.axes.len()];
                for (k, a) in self.axes.iter().enumerate().rev() {
                    values[k] = (a.param, a.values[rest % a.values.len()]);
                    rest /= a.values.len();
                }
                out.push(Point {
                    index: out.len(),
                    allocation,
                    values,
                });
            }
        }
        out
    }
}

/// Shard i of n: this process runs the points whose index ≡ i (mod n).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    pub fn parse(s: &str) -> Result<Shard> {
        let parsed = s
            .split_once('/')
            .and_then(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?)));
        match parsed {
            Some((index, count)) if count > 0 && index < count => Ok(Shard { index, count }),
            _ => Err(said!(
                Setting::Shard,
                format!(" `{s}`: write i/n with 0 ≤ i < n (e.g. 0/4 … 3/4)")
            )
            .into()),
        }
    }

    pub fn owns(&self, p: &Point) -> bool {
        p.index % self.count == self.index
    }
}

/// One measured point (a line of the JSON-lines file).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SweepRow {
    pub index: usize,
    pub key: String,
    pub allocation: Allocation,
    /// The swept parameters' values by name (τ = ∞ is written as null).
    pub values: Vec<(String, Option<f64>)>,
    /// Target sparsity over all prunable weights and the exact zeros reached.
    pub target_sparsity: f64,
    pub achieved_sparsity: f64,
    pub ppl: Option<f64>,
    /// Σ NLL per evaluation window (paired comparisons between points).
    pub window_nll: Option<Vec<f64>>,
    pub seconds: f64,
}

/// The first line of a sweep file: what every point depends on besides its own parameters.
/// Resuming and merging refuse files whose header differs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SweepHeader {
    pub dlpx_sweep: u32,
    /// The model (source, file hash or Hub revision, shape, dtype).
    pub model: ModelInfo,
    pub data: DataInfo,
    /// Parameters of every point before the grid's values are set.
    pub base: PruneParams,
    /// The grid: allocations and each axis as given.
    pub allocations: Vec<Allocation>,
    pub axes: Vec<(String, Vec<Option<f64>>)>,
}

impl SweepHeader {
    /// Points of the whole grid.
    pub fn points(&self) -> usize {
        self.allocations.len() * self.axes.iter().map(|a| a.1.len()).product::<usize>()
    }
}

pub const SWEEP_FORMAT: u32 = 1;

/// A line of a sweep file: the header, or a measured point.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
pub enum SweepLine {
    Header(Box<SweepHeader>),
    Row(Box<SweepRow>),
}

/// The header and rows of a sweep file; a truncated last line (a killed process) is dropped.
pub fn read_sweep(path: &Path) -> Result<(SweepHeader, Vec<SweepRow>)> {
    let text = std::fs::read_to_string(path)
        .wrap_err_with(|| format!("cannot read `{}`", path.display()))?;
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut header = None;
    let mut rows = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        match serde_json::from_str::<SweepLine>(l) {
            Ok(SweepLine::Header(h)) if i == 0 => header = Some(*h),
            Ok(SweepLine::Row(r)) if i > 0 => rows.push(*r),
            Err(_) if i + 1 == lines.len() && i > 0 && !text.ends_with('\n') => {}
            _ => {
                return Err(said!(
                    format!(
                        "`{}` line {}: not a dlpx sweep line (start over with ",
                        path.display(),
                        i + 1
                    ),
                    Setting::SweepFresh,
                    " or another ",
                    Setting::SweepOut,
                    ")"
                )
                .into())
            }
        }
    }
    let header = header.ok_or_else(|| eyre!("`{}` is not a dlpx sweep file", path.display()))?;
    Ok((header, rows))
}

impl Experiment {
    /// Prune a copy of the dense model at `point` (from the calibration `cal`) and measure its
    /// perplexity on the evaluation windows (the first `eval_windows` of them when given).
    pub fn sweep_point(
        &self,
        cal: &Calibration,
        base: &PruneParams,
        point: &Point,
        eval_windows: Option<usize>,
        obs: &mut dyn Observer,
    ) -> Result<SweepRow> {
        let started = std::time::Instant::now();
        let params = point.params(base);
        params.validate(self.model.llama.blocks.len())?;
        let pl = plan(&self.model.llama, cal, &params)?;
        let mut llama = self.model.llama.clone();
        let achieved = self.prune(&mut llama, cal, &pl, &params, obs)?;
        let ppl = self.perplexity_first(&llama, eval_windows, Stage::PrunedEval, obs)?;
        Ok(SweepRow {
            index: point.index,
            key: point.key(),
            allocation: point.allocation,
            values: point
                .values
                .iter()
                .map(|(p, v)| (axis(*p).to_string(), v.is_finite().then_some(*v)))
                .collect(),
            target_sparsity: super::weighted_mean(&pl.block, &self.summary.numel),
            achieved_sparsity: super::weighted_mean(&achieved, &self.summary.numel),
            ppl: ppl.as_ref().map(|p| p.ppl),
            window_nll: ppl.map(|p| p.window_nll),
            seconds: started.elapsed().as_secs_f64(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_lists_and_errors() {
        let a = Axis::parse("alpha=0:0.3:0.05").unwrap();
        assert_eq!(a.values, vec![0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3]);
        let a = Axis::parse("sparsity=0.5,0.6, 0.7").unwrap();
        assert_eq!(a.values, vec![0.5, 0.6, 0.7]);
        assert_eq!(
            Axis::parse("tau=1,inf").unwrap().values,
            vec![1.0, f64::INFINITY]
        );
        assert_eq!(
            Axis::parse("owl-lambda=0.1").unwrap().param,
            Param::OwlLambda
        );
        for bad in [
            "alpha",
            "beta=1",
            "alpha=0:1",
            "alpha=1:0:0.1",
            "alpha=0:1:0",
            "alpha=x",
        ] {
            assert!(Axis::parse(bad).is_err(), "{bad}");
        }
        assert!(Axis::parse("alpha=0:1:0.0000001").is_err());
    }

    #[test]
    fn grid_is_the_product_in_order() {
        let g = Grid::new(
            vec![Allocation::Dlp, Allocation::Owl],
            vec![
                Axis::parse("sparsity=0.5,0.7").unwrap(),
                Axis::parse("alpha=0:0.2:0.1").unwrap(),
            ],
        )
        .unwrap();
        let pts = g.points();
        assert_eq!(pts.len(), 12);
        assert_eq!(g.len(), 12);
        assert_eq!(pts[0].key(), "allocation=dlp sparsity=0.5 alpha=0");
        assert_eq!(pts[1].key(), "allocation=dlp sparsity=0.5 alpha=0.1");
        assert_eq!(pts[3].key(), "allocation=dlp sparsity=0.7 alpha=0");
        assert_eq!(pts[6].key(), "allocation=owl sparsity=0.5 alpha=0");
        assert!(pts.iter().enumerate().all(|(i, p)| p.index == i));
        let keys: std::collections::HashSet<String> = pts.iter().map(Point::key).collect();
        assert_eq!(keys.len(), 12);
        // No axis: one point per allocation.
        let g = Grid::new(vec![Allocation::Uniform, Allocation::Dlp], vec![]).unwrap();
        assert_eq!(g.points().len(), 2);
        assert!(Grid::new(
            vec![Allocation::Dlp],
            vec![
                Axis::parse("alpha=0.1").unwrap(),
                Axis::parse("alpha=0.2").unwrap()
            ]
        )
        .is_err());
    }

    #[test]
    fn grid_errors_name_the_setting_not_a_flag() {
        let e = Shard::parse("2/2").unwrap_err();
        let said = e.downcast_ref::<crate::error::SettingError>().unwrap();
        assert!(e.to_string().starts_with("shard `2/2`: write i/n"), "{e}");
        assert!(said.render(|_| "SHARD").starts_with("SHARD `2/2`"), "{e}");
        let e = Axis::parse("alpha=0.3:0:0.1").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("sweep parameter alpha: the range 0.3:0:0.1"),
            "{e}"
        );
    }

    #[test]
    fn shards_split_the_points() {
        let s = Shard::parse("1/3").unwrap();
        let g = Grid::new(
            vec![Allocation::Dlp],
            vec![Axis::parse("alpha=0:0.9:0.1").unwrap()],
        )
        .unwrap();
        let mine: Vec<usize> = g
            .points()
            .iter()
            .filter(|p| s.owns(p))
            .map(|p| p.index)
            .collect();
        assert_eq!(mine, vec![1, 4, 7]);
        for bad in ["3/3", "1", "a/b", "0/0"] {
            assert!(Shard::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn point_params_override_the_base() {
        let g = Grid::new(
            vec![Allocation::Owl],
            vec![
                Axis::parse("owl_lambda=0.05").unwrap(),
                Axis::parse("tau=inf").unwrap(),
            ],
        )
        .unwrap();
        let p = g.points()[0].params(&PruneParams::default());
        assert_eq!(p.alloc.allocation, Allocation::Owl);
        assert_eq!(p.alloc.owl_lambda, 0.05);
        assert_eq!(p.alloc.tau, None);
    }
}
