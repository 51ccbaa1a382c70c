//! The explorer's three views and the keys each owns: the charts (parameters, allocation and
//! importance), the compare view (prompts and their continuations) and the sweep view. Keys
//! with background work are jobs ([`super::jobs`]); these only change the state.

pub mod charts;
pub mod compare;
pub mod sweep;
