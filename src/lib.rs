//! dlpx: layer-wise pruning explorer for Llama-family language models.
//!
//! Layers, from the bottom (each uses only those above it in this list):
//! - `error`, `assets` (cache folder, hashing, atomic writes, Hub downloads, demo fetcher);
//! - `model` (load GGUF / safetensors / Hub, run blocks) and `data` (texts, windows);
//! - `prune`, `eval` — the engine: statistics, allocation, masks, perplexity, generation;
//! - `experiment` — one orchestration: open model + data, calibrate, prune, measure, report;
//! - `study` — tables and figures from reports and sweep files (pure, no model);
//! - front ends, each only its own I/O: `cli` (the commands, the benchmarks, and the terminal loop
//!   of the explorer), over the explorer's `worker` (messages over the experiment) → `app`
//!   (state) → `ui` (pure drawing).

// A panic in the worker or the terminal loop is a bug: errors are returned, not unwrapped.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod app;
pub mod assets;
pub mod cli;
pub mod data;
pub mod device;
pub mod error;
pub mod eval;
pub mod experiment;
pub mod export;
pub mod model;
pub mod prune;
pub mod recover;
pub mod report;
pub mod rng;
pub mod sparse;
pub mod study;
pub mod ui;
pub mod worker;
pub mod zeroshot;
