//! Perplexity and text generation.

pub mod generate;
pub mod perplexity;
