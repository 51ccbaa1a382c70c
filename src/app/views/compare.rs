//! The compare view: the prompts, the dense and pruned continuations of each, and its keys.

use std::time::Instant;

use crate::app::keys::Action;
use crate::app::{InputPurpose, State, Tone, View};

#[derive(Debug, Clone, Default)]
pub struct PromptGen {
    pub prompt: String,
    pub dense: String,
    pub pruned: String,
    /// Tokens per side: pieces streamed so far, then the finished continuation's new tokens.
    pub dense_tokens: usize,
    pub pruned_tokens: usize,
    /// Seconds from the side's start to its last streamed piece (the rate while it streams).
    pub dense_secs: Option<f64>,
    pub pruned_secs: Option<f64>,
    /// The finished continuation's decode speed (KV-cached steps), measured by the worker;
    /// for a dense continuation from the cache, when it was generated.
    pub dense_tok_s: Option<f64>,
    pub pruned_tok_s: Option<f64>,
    pub(in crate::app) dense_started: Option<Instant>,
    pub(in crate::app) pruned_started: Option<Instant>,
}

/// The explorer's prompts when none are given: a fact, a continuation of prose, a list and a
/// simple reasoning step, so the compare view shows different kinds of damage.
pub const DEFAULT_PROMPTS: [&str; 4] = [
    "The capital of France is",
    "The old house at the end of the road had been empty for years, and",
    "Three things every kitchen needs are:",
    "If a train leaves at 3 pm and the trip takes 2 hours, it arrives at",
];

/// Where `pruned` departs from `dense`: the char index of the first difference, or `None`
/// while one is a prefix of the other (the same text so far).
pub fn first_difference(dense: &str, pruned: &str) -> Option<usize> {
    dense.chars().zip(pruned.chars()).position(|(a, b)| a != b)
}

impl State {
    /// The compare view's keys (and the key that shows it): choose, edit, add or delete a
    /// prompt. An edited or added prompt generates again (`submit`).
    pub(in crate::app) fn act_compare(&mut self, a: Action) {
        match a {
            Action::ToggleCompare => {
                self.view = match self.view {
                    View::Main | View::Sweep => View::Compare,
                    View::Compare => View::Main,
                }
            }
            Action::PromptNext => {
                self.prompt_sel = (self.prompt_sel + 1).min(self.prompts.len().saturating_sub(1))
            }
            Action::PromptPrev => self.prompt_sel = self.prompt_sel.saturating_sub(1),
            Action::EditPrompt => {
                if let Some(p) = self.prompts.get(self.prompt_sel) {
                    let t = p.prompt.clone();
                    self.input(InputPurpose::EditPrompt(self.prompt_sel), t);
                }
            }
            Action::AddPrompt => self.input(InputPurpose::AddPrompt, String::new()),
            Action::DeletePrompt => {
                if self.prompts.len() > 1 {
                    self.prompts.remove(self.prompt_sel);
                    self.prompt_sel = self.prompt_sel.min(self.prompts.len() - 1);
                } else {
                    self.say("keep at least one prompt (p edits it)", Tone::Error);
                }
            }
            _ => {}
        }
    }
}
