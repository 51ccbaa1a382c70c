//! dlpx: layer-wise pruning explorer for Llama-family language models.
//!
//! Data flow: `model` (load GGUF / safetensors / Hub) → `data` (texts, windows) →
//! `eval` (perplexity, generation) → `prune` (calibrate, allocate, mask) → `report`.
//! The explorer: `app` (state + update) ← `worker` (engine on its own thread) and `tui` (terminal,
//! event loop) → `ui` (pure drawing).

pub mod app;
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
pub mod tui;
pub mod ui;
pub mod worker;
