//! dlpx: layer-wise pruning explorer for Llama-family language models.
//!
//! Data flow: `model` (load GGUF / safetensors / Hub) → `data` (texts, windows) →
//! `eval` (perplexity, generation). The pruning engine and the TUI build on these.

pub mod bench;
pub mod cli;
pub mod commands;
pub mod data;
pub mod device;
pub mod eval;
pub mod model;
pub mod progress;
pub mod prune;
pub mod prune_cmd;
pub mod report;
