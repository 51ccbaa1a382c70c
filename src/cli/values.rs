//! The command line's names for the engine's choices: one clap value enum per engine enum,
//! converted with `From`, so the engine knows nothing of clap. The variant docs are the help
//! text of `--help`.

use crate::model::quant::QuantFormat;
use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};

use crate::prune::allocate::{Allocation, ClampPolicy};
use crate::prune::mask::Metric;
use crate::prune::pipeline::{Granularity, Mode};
use crate::prune::stats::Statistic;

/// A clap value enum mirroring an engine enum variant for variant, with `From` both ways.
macro_rules! cli_values {
    ($(#[$meta:meta])* $name:ident => $engine:ident { $($(#[$vmeta:meta])* $v:ident,)* }) => {
        $(#[$meta])*
        #[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vmeta])* $v,)*
        }

        impl From<$name> for $engine {
            fn from(v: $name) -> Self {
                match v {
                    $($name::$v => $engine::$v,)*
                }
            }
        }

        impl From<$engine> for $name {
            fn from(v: $engine) -> Self {
                match v {
                    $($engine::$v => $name::$v,)*
                }
            }
        }
    };
}

cli_values! {
    /// `--quantize`: a GGUF block format for the pruned linears.
    QuantArg => QuantFormat {
        /// 8-bit, blocks of 32 with one f16 scale (8.5 bits per weight).
        #[value(name = "q8_0")]
        Q8_0,
        /// 4-bit, blocks of 32 with one f16 scale (4.5 bits per weight).
        #[value(name = "q4_0")]
        Q4_0,
        /// 4-bit k-quant, super-blocks of 256 with 6-bit scales and minimums (4.5 bits per weight);
        /// rows not a multiple of 256 fall back to q5_0, as llama.cpp's quantizer does.
        #[value(name = "q4_k")]
        Q4K,
    }
}

cli_values! {
    /// `--statistic`: the block statistic F.
    StatisticArg => Statistic {
        /// Lower median (rank (n−1)/2), by selection.
        Median,
        Mean,
        Sum,
        Max,
        /// Unbiased standard deviation.
        Std,
        /// Unbiased variance.
        Var,
    }
}

cli_values! {
    /// `--clamp`: what happens when a block's sparsity leaves [0, 1).
    ClampArg => ClampPolicy {
        /// Clamp to [0, 0.99], then shift the unclamped blocks so the weighted mean is p again.
        Budget,
        /// The reference code: sparsity ≤ 0 becomes 0.01, no upper bound.
        Paper,
    }
}

cli_values! {
    /// `--mode`: the paper's sequential pass, or masks from the dense statistics.
    ModeArg => Mode {
        /// The paper: masks of block l from the outputs of the pruned blocks 0..l-1.
        Faithful,
        /// All masks from the dense statistics; no further forward passes.
        Preview,
    }
}

cli_values! {
    /// `--granularity`: the allocation unit.
    GranularityArg => Granularity {
        /// All 7 linears of a block share its sparsity (the paper).
        Block,
        /// Each linear is scored and allocated on its own, parameter-weighted (DLP only).
        Linear,
    }
}

cli_values! {
    /// `--metric`: the per-weight metric.
    MetricArg => Metric {
        /// |W|, compared over the whole matrix.
        Magnitude,
        /// |W| · ‖X_j‖, compared within each output row.
        Wanda,
        /// OBS with the layer Hessian: prunes per 128-column block and updates the kept weights
        /// (faithful mode only).
        #[value(name = "sparsegpt")]
        SparseGpt,
    }
}

/// `--allocation`: the names of [`Allocation::ALL`], so a new allocation needs no change here.
#[derive(Clone, Copy, Debug)]
pub struct AllocationParser;

impl TypedValueParser for AllocationParser {
    type Value = Allocation;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<Allocation, clap::Error> {
        let names = PossibleValuesParser::new(Allocation::ALL.map(Allocation::name));
        let name = names.parse_ref(cmd, arg, value)?;
        Allocation::from_name(&name)
            .ok_or_else(|| clap::Error::new(clap::error::ErrorKind::InvalidValue))
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = PossibleValue> + '_>> {
        Some(Box::new(Allocation::ALL.into_iter().map(|a| {
            let v = PossibleValue::new(a.name());
            match a.about() {
                "" => v,
                about => v.help(about),
            }
        })))
    }
}
