//! An llm-compressor recipe (YAML) that reproduces a report's allocation with llm-compressor's
//! own pruning modifier, in the form its current release (0.14) reads:
//!
//! ```yaml
//! sparsity_stage:
//!   sparsity_modifiers:
//!     WandaPruningModifier:        # or SparseGPTModifier, with block_size and dampening_frac
//!       sparsity: [0.57, 0.58, …]  # one per decoder layer, in order
//!       mask_structure: "0:0"      # "N:M" for N of every M pruned
//!       targets: ["re:model\\.layers\\.\\d+$"]
//!       ignore: ["re:.*lm_head"]
//! ```
//! llm-compressor reads only top-level keys ending in `_stage` and inside them keys ending in
//! `_modifiers`; a list of sparsities maps, in module order, onto the modules `targets` matches
//! (here the decoder layers), and every Linear inside a layer gets that layer's value. Unknown
//! fields are errors there, so only fields of the modifier are written. `"2:4"` is quoted: YAML
//! 1.1 reads a bare `2:4` as the number 124. In N:M mode llm-compressor ignores `sparsity` and
//! has one N for all layers, so only a report whose blocks share one N can be expressed.

use std::fmt::Write;

use color_eyre::eyre::{bail, Result};

use crate::prune::mask::{Metric, Pattern};
use crate::prune::pipeline::PruneParams;
use crate::prune::sparsegpt::{BLOCK, PERCDAMP};
use crate::report::Report;

/// Whether a recipe can state these parameters and per-block N (checked before any work).
pub fn check_expressible(p: &PruneParams, n_of_m: Option<&[usize]>) -> Result<()> {
    if p.metric == Metric::Magnitude {
        bail!(
            "llm-compressor has no one-shot magnitude pruning modifier: recipes exist for the \
             wanda and sparsegpt metrics"
        );
    }
    if let (Pattern::NOfM { m, .. }, Some(ns)) = (p.pattern, n_of_m) {
        if ns.iter().any(|&x| Some(&x) != ns.first()) {
            bail!(
                "llm-compressor applies one N:M pattern to every layer, but this allocation \
                 prunes different N of {m} per block ({ns:?}): use uniform allocation for an \
                 N:M recipe"
            );
        }
    }
    Ok(())
}

/// The recipe YAML of `r`'s allocation.
pub fn llm_compressor_recipe(r: &Report) -> Result<String> {
    let p = &r.params;
    let ns: Vec<usize> = r.blocks.iter().filter_map(|b| b.n_of_m).collect();
    check_expressible(p, Some(&ns))?;
    let modifier = match p.metric {
        Metric::SparseGpt => "SparseGPTModifier",
        _ => "WandaPruningModifier",
    };
    let (sparsity, structure) = match p.pattern {
        Pattern::Unstructured => {
            let v: Vec<String> = r
                .blocks
                .iter()
                .map(|b| format!("{}", b.target_sparsity))
                .collect();
            (format!("[{}]", v.join(", ")), "0:0".to_string())
        }
        Pattern::NOfM { m, .. } => {
            let Some(&n) = ns.first().filter(|_| ns.len() == r.blocks.len()) else {
                bail!(
                    "the report has no per-block N for its {} pattern",
                    p.pattern
                );
            };
            (format!("{}", n as f64 / m as f64), format!("{n}:{m}"))
        }
    };
    let mut y = String::new();
    let _ = writeln!(
        y,
        "# llm-compressor recipe written by {} {}: {:?} allocation, {:?} metric, p {}, of {} ({} decoder layers).",
        r.tool.name,
        r.tool.version,
        p.alloc.allocation,
        p.metric,
        p.effective_alloc().sparsity,
        r.model.source,
        r.blocks.len()
    );
    let _ = writeln!(
        y,
        "# Use: oneshot(model=..., recipe=\"<this file>\", dataset=..., num_calibration_samples={}, max_seq_length={})",
        r.data.calib.windows, r.data.calib.seq_len
    );
    y.push_str("sparsity_stage:\n  sparsity_modifiers:\n");
    let _ = writeln!(y, "    {modifier}:");
    let _ = writeln!(y, "      sparsity: {sparsity}");
    let _ = writeln!(y, "      mask_structure: \"{structure}\"");
    if p.metric == Metric::SparseGpt {
        let _ = writeln!(y, "      block_size: {BLOCK}");
        let _ = writeln!(y, "      dampening_frac: {PERCDAMP}");
    }
    y.push_str("      targets: [\"re:model\\\\.layers\\\\.\\\\d+$\"]\n");
    y.push_str("      ignore: [\"re:.*lm_head\"]\n");
    Ok(y)
}
