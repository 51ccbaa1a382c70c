//! Perplexity, text generation, and comparisons of two measurements.

pub mod compare;
pub mod generate;
pub mod perplexity;
