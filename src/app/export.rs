//! The explorer's export and import: the report of the current state (the same schema as
//! `dlpx prune --report`), the current view's chart as SVG (key P, drawn by `study::plot` as
//! `dlpx plot` draws it), and restoring parameters from a saved config.

use std::fmt;
use std::path::{Path, PathBuf};

use color_eyre::eyre::bail;

use super::{State, View};
use crate::experiment::{build_report, Measured};
use crate::prune::pipeline::plan_for;
use crate::report::{GenerationPair, Report, Timings, ZeroShotPair};
use crate::study::plot::{self, Palette, PlotError, SweepLine, SweepPoint};

/// Why key P wrote no chart.
#[derive(Debug)]
pub enum ChartError {
    /// Nothing to draw yet: says what to do first.
    NotReady(String),
    /// The figure could not be drawn.
    Plot(PlotError),
    /// The file could not be written (the message names it).
    Write(String),
}

impl fmt::Display for ChartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChartError::NotReady(why) | ChartError::Write(why) => f.write_str(why),
            ChartError::Plot(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ChartError {}

impl From<PlotError> for ChartError {
    fn from(e: PlotError) -> Self {
        ChartError::Plot(e)
    }
}

impl State {
    /// The report of the current state: current parameters and allocation, plus measurements of
    /// the last apply when it used these parameters.
    pub fn report(&self) -> color_eyre::Result<Report> {
        let (Some(s), Some(cal), Some(plan)) = (&self.summary, &self.cal, &self.plan) else {
            bail!("nothing to export before calibration has finished");
        };
        let applied = self.current_applied();
        let generations = match applied {
            Some(_) => self
                .prompts
                .iter()
                .map(|p| GenerationPair {
                    prompt: p.prompt.clone(),
                    dense: p.dense.clone(),
                    pruned: p.pruned.clone(),
                })
                .collect(),
            None => vec![],
        };
        let measured = Measured {
            achieved: applied.and_then(|a| a.achieved.clone()),
            dense_ppl: self.dense_ppl,
            pruned_ppl: applied.and_then(|a| a.ppl),
            dense_window_nll: self.dense_window_nll.clone(),
            pruned_window_nll: applied.and_then(|a| a.window_nll.clone()),
            generations,
            calib_draws: None,
            alpha_search: None,
            zeroshot: self.dense_zeroshot.as_ref().map(|d| ZeroShotPair {
                dense: d.clone(),
                pruned: applied.and_then(|a| a.zeroshot.clone()),
            }),
            timings: Timings {
                load_s: 0.0,
                calibrate_s: cal.seconds,
                stats_cache_hit: self.cache_hit,
                allocate_us: plan.allocate_us,
                prune_s: applied.map(|a| a.seconds).unwrap_or(0.0),
                eval_s: 0.0,
                zeroshot_s: 0.0,
                quantize_s: 0.0,
            },
        };
        Ok(build_report(s, &self.params, cal, plan, measured))
    }

    pub fn export(&self, path: &std::path::Path) -> color_eyre::Result<()> {
        self.report()?.save(path)
    }

    /// Where key P writes the current view's chart: beside the export (in the folder of the path
    /// the export dialog proposes), named after it and the chart, e.g. `dlpx-config-sweep.svg`.
    pub fn chart_path(&self) -> PathBuf {
        let export = Path::new(&self.export_path);
        let stem = export
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("dlpx");
        let chart = match self.view {
            View::Sweep => "sweep",
            View::Main | View::Compare => "allocation",
        };
        export.with_file_name(format!("{stem}-{chart}.svg"))
    }

    /// Key P: the current view's chart written as SVG at `chart_path`; returns that path.
    pub fn write_chart(&self) -> Result<PathBuf, ChartError> {
        // The explorer's own colours, or the print palette under the light theme.
        let palette = match self.theme_name.as_str() {
            "light" => Palette::Print,
            _ => Palette::Dark,
        };
        let svg = match self.view {
            View::Sweep => self.sweep_chart(palette)?,
            View::Main | View::Compare => self.allocation_chart(palette)?,
        };
        let path = self.chart_path();
        crate::assets::write_atomic(&path, svg.as_bytes())
            .map_err(|e| ChartError::Write(format!("{e:#}")))?;
        Ok(path)
    }

    /// The allocation chart: the current allocation and, when one is shown, the overlay's.
    fn allocation_chart(&self, palette: Palette) -> Result<String, ChartError> {
        let current = self.report().map_err(|_| {
            ChartError::NotReady("nothing to draw before calibration has finished".into())
        })?;
        let mut reports = vec![current];
        reports.extend(self.overlay_report()?);
        Ok(plot::allocation(&reports, palette)?)
    }

    /// The overlay on the sparsity chart (key v) as a report: another allocation at the current
    /// parameters, or an applied entry's allocation with what it achieved. The sparsities are
    /// the ones shown; the block scores those of the overlay's statistic.
    fn overlay_report(&self) -> Result<Option<Report>, ChartError> {
        let (Some(s), Some(cal), Some(shown)) = (&self.summary, &self.cal, &self.overlay_plan)
        else {
            return Ok(None);
        };
        let entry = self
            .overlay_entry
            .and_then(|id| self.history.iter().find(|h| h.id == id));
        let (params, measured) = match (self.overlay_alloc, entry) {
            (Some(a), _) => {
                let mut p = self.params.clone();
                p.alloc.allocation = a;
                (p, Measured::default())
            }
            (None, Some(h)) => (
                h.params.clone(),
                Measured {
                    achieved: h.achieved.clone(),
                    pruned_ppl: h.ppl,
                    ..Measured::default()
                },
            ),
            (None, None) => return Ok(None),
        };
        let mut plan = plan_for(&s.numel, cal, &params)
            .map_err(|e| ChartError::NotReady(format!("the overlay: {e}")))?;
        plan.block = shown.clone();
        Ok(Some(build_report(s, &params, cal, &plan, measured)))
    }

    /// The sweep view's chart: perplexity at each finished point, the best one named.
    fn sweep_chart(&self, palette: Palette) -> Result<String, ChartError> {
        let Some(sw) = &self.sweep else {
            return Err(ChartError::NotReady(
                "no sweep to draw: w starts one".into(),
            ));
        };
        let name = sw.param.sweep_name();
        let points = sw
            .values
            .iter()
            .zip(&sw.ppl)
            .filter_map(|(x, ppl)| {
                Some(SweepPoint {
                    x: *x,
                    ppl: (*ppl)?,
                    interval: None,
                    key: format!("{name}={x}"),
                })
            })
            .filter(|p| p.x.is_finite())
            .collect();
        let line = SweepLine {
            name: sw.base.alloc.allocation.label().to_string(),
            points,
        };
        let windows = match sw.heldout {
            true => "held-out calibration",
            false => "eval",
        };
        let title = format!(
            "Perplexity against {name} (preview on {} {windows} windows)",
            sw.windows
        );
        Ok(plot::sweep_figure(&title, name, &[line], palette)?)
    }

    /// The llm-compressor recipe of the current allocation (the same as `dlpx prune --recipe-out`).
    pub fn export_recipe(&self, path: &std::path::Path) -> color_eyre::Result<()> {
        let yaml = crate::export::recipe::llm_compressor_recipe(&self.report()?)?;
        crate::assets::write_atomic(path, yaml.as_bytes())
    }

    /// Restore parameters (and pins) from a saved report/config.
    pub fn open(&mut self, path: &std::path::Path) -> color_eyre::Result<()> {
        let r = Report::load(path)?;
        let n = self.n_blocks();
        if n > 0 && r.blocks.len() != n {
            bail!(
                "`{}` is for a model with {} blocks; this one has {n}",
                path.display(),
                r.blocks.len()
            );
        }
        r.params.validate(n.max(1))?;
        self.params = r.params;
        self.replan();
        Ok(())
    }
}
