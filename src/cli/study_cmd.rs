//! `dlpx table` and `dlpx plot`: read the reports or sweep file, write what `study` makes of
//! them.

use color_eyre::eyre::{bail, eyre, Result};

use crate::cli::{PaletteArg, PlotArgs, PlotKind, TableArgs, TableFormat};
use crate::experiment::sweep::read_sweep;
use crate::report::Report;
use crate::study::plot::{self, Missing, Palette, PlotError};
use crate::study::table::{render, rows, Format};

fn load(paths: &[std::path::PathBuf]) -> Result<Vec<Report>> {
    paths.iter().map(|p| Report::load(p)).collect()
}

pub fn table(a: &TableArgs) -> Result<()> {
    let reports = load(&a.reports)?;
    let format = match a.format {
        TableFormat::Markdown => Format::Markdown,
        TableFormat::Latex => Format::Latex,
        TableFormat::Csv => Format::Csv,
    };
    print!("{}", render(&rows(&reports), format));
    Ok(())
}

pub fn plot(a: &PlotArgs) -> Result<()> {
    let palette = match a.palette {
        PaletteArg::Dark => Palette::Dark,
        PaletteArg::Print => Palette::Print,
    };
    let one = |what: &str| -> Result<&std::path::PathBuf> {
        match a.inputs.as_slice() {
            [p] => Ok(p),
            _ => bail!("--kind {what} draws one file; got {}", a.inputs.len()),
        }
    };
    // Checked before any work: the folder of --out must exist.
    crate::assets::ensure_parent_dir(&a.out)?;
    let svg = match a.kind {
        PlotKind::Allocation => plot::allocation(&load(&a.inputs)?, palette),
        PlotKind::Sweep => {
            let (header, rows) = read_sweep(one("sweep")?)?;
            plot::sweep(&header, &rows, palette)
        }
        PlotKind::Draws => plot::draws(&Report::load(one("draws")?)?, palette),
        PlotKind::Zeroshot => plot::zeroshot(&Report::load(one("zeroshot")?)?, palette),
    }
    .map_err(|e| eyre!(plot_message(&e)))?;
    crate::assets::write_atomic(&a.out, svg.as_bytes())?;
    println!("wrote {}", a.out.display());
    Ok(())
}

/// A figure that could not be drawn, as the command line says it: with the `--kind` and the
/// flags that write what is missing.
fn plot_message(e: &PlotError) -> String {
    let m = match e {
        PlotError::NoData(m) => *m,
        PlotError::Draw(_) => return e.to_string(),
    };
    match m {
        Missing::Reports => format!("--kind allocation: {m}"),
        Missing::Blocks | Missing::SweepPoints => m.to_string(),
        Missing::SweepAxis => format!("--kind sweep: {m}"),
        Missing::SweepPerplexity => format!("--kind sweep: {m} (was it run with --eval none?)"),
        Missing::Draws => {
            format!("--kind draws: {m}; write it with `dlpx prune --calib-draws K` (K ≥ 2)")
        }
        Missing::ZeroShot => {
            format!("--kind zeroshot: {m}; write it with `dlpx prune --tasks all`")
        }
        Missing::TaskScores => format!("--kind zeroshot: {m}"),
    }
}
