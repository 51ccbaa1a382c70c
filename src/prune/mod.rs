//! The pruning engine: calibrate (stats), allocate (pure), mask, and the two pipelines; every
//! tunable parameter once in `params`.

pub mod allocate;
pub mod cache;
pub mod esd;
pub mod mask;
pub mod memory;
pub mod params;
pub mod pipeline;
pub mod select;
pub mod sparsegpt;
pub mod stats;
pub mod timing;
