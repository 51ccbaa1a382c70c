//! The front ends, each only its own input and output over the experiment layer: the
//! command-line arguments (`args`, clap), the subcommands (`commands`, `prune_cmd`,
//! `recover_cmd`, `sweep_cmd`), their progress lines on stderr (`progress`), the benchmarks
//! (`bench*`), and the explorer's terminal loop (`tui`). Nothing below this folder imports
//! from it.

mod args;
pub mod bench;
pub mod bench_shape;
pub mod bench_sparse;
pub mod commands;
pub mod progress;
pub mod prune_cmd;
pub mod recover_cmd;
pub mod study_cmd;
pub mod sweep_cmd;
pub mod tui;
pub mod values;

pub use args::*;
