//! The key binding table: dispatch and the help overlay are both generated from it, so the help
//! can never drift from what the keys do.

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

/// What a key asks for (overlays — text entry, help, quit confirmation — read keys themselves).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    FieldNext,
    FieldPrev,
    Inc,
    Dec,
    IncCoarse,
    DecCoarse,
    TypeValue,
    BlockNext,
    BlockPrev,
    PinUp,
    PinDown,
    Unpin,
    UnpinAll,
    Apply,
    ToggleCompare,
    PromptNext,
    PromptPrev,
    EditPrompt,
    AddPrompt,
    DeletePrompt,
    Generate,
    ZeroShot,
    Quantize,
    Recover,
    ToggleSparse,
    ToggleSweep,
    CycleOverlay,
    AlphaAuto,
    CalibDraws,
    CycleImportance,
    SweepPrev,
    SweepNext,
    SweepJump,
    SweepRecheck,
    Export,
    ExportRecipe,
    WriteChart,
    Open,
    SaveModel,
    Recalibrate,
    Cancel,
    Help,
    Quit,
}

/// Where a binding applies (and, for lookups, which view is showing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Main,
    Compare,
    Sweep,
    Any,
}

impl Scope {
    /// Whether a binding of this scope works in `view`.
    fn applies_in(self, view: Scope) -> bool {
        self == Scope::Any || self == view
    }
}

pub struct Binding {
    pub code: KeyCode,
    pub mods: KeyModifiers,
    /// How the help overlay names the key (bindings sharing a label and help are listed once).
    pub label: &'static str,
    pub help: &'static str,
    pub action: Action,
    pub scope: Scope,
}

const fn b(
    code: KeyCode,
    mods: KeyModifiers,
    label: &'static str,
    help: &'static str,
    action: Action,
    scope: Scope,
) -> Binding {
    Binding {
        code,
        mods,
        label,
        help,
        action,
        scope,
    }
}

const N: KeyModifiers = KeyModifiers::NONE;
const S: KeyModifiers = KeyModifiers::SHIFT;

pub const BINDINGS: &[Binding] = &[
    b(
        KeyCode::Up,
        N,
        "↑/↓ Tab",
        "move between parameters",
        Action::FieldPrev,
        Scope::Main,
    ),
    b(
        KeyCode::Down,
        N,
        "↑/↓ Tab",
        "move between parameters",
        Action::FieldNext,
        Scope::Main,
    ),
    b(
        KeyCode::Tab,
        N,
        "↑/↓ Tab",
        "move between parameters",
        Action::FieldNext,
        Scope::Main,
    ),
    b(
        KeyCode::BackTab,
        S,
        "↑/↓ Tab",
        "move between parameters",
        Action::FieldPrev,
        Scope::Main,
    ),
    b(
        KeyCode::Right,
        N,
        "←/→",
        "change the value (fine)",
        Action::Inc,
        Scope::Main,
    ),
    b(
        KeyCode::Left,
        N,
        "←/→",
        "change the value (fine)",
        Action::Dec,
        Scope::Main,
    ),
    b(
        KeyCode::Right,
        S,
        "⇧←/→ H/L",
        "change the value (coarse)",
        Action::IncCoarse,
        Scope::Main,
    ),
    b(
        KeyCode::Left,
        S,
        "⇧←/→ H/L",
        "change the value (coarse)",
        Action::DecCoarse,
        Scope::Main,
    ),
    b(
        KeyCode::Char('L'),
        S,
        "⇧←/→ H/L",
        "change the value (coarse)",
        Action::IncCoarse,
        Scope::Main,
    ),
    b(
        KeyCode::Char('H'),
        S,
        "⇧←/→ H/L",
        "change the value (coarse)",
        Action::DecCoarse,
        Scope::Main,
    ),
    b(
        KeyCode::Char('l'),
        N,
        "←/→",
        "change the value (fine)",
        Action::Inc,
        Scope::Main,
    ),
    b(
        KeyCode::Char('h'),
        N,
        "←/→",
        "change the value (fine)",
        Action::Dec,
        Scope::Main,
    ),
    b(
        KeyCode::Enter,
        N,
        "Enter",
        "type an exact value",
        Action::TypeValue,
        Scope::Main,
    ),
    b(
        KeyCode::Char(']'),
        N,
        "[ ]",
        "previous / next block",
        Action::BlockNext,
        Scope::Main,
    ),
    b(
        KeyCode::Char('['),
        N,
        "[ ]",
        "previous / next block",
        Action::BlockPrev,
        Scope::Main,
    ),
    b(
        KeyCode::Char('+'),
        N,
        "+ / -",
        "pin block sparsity up/down",
        Action::PinUp,
        Scope::Main,
    ),
    b(
        KeyCode::Char('='),
        N,
        "+ / -",
        "pin block sparsity up/down",
        Action::PinUp,
        Scope::Main,
    ),
    b(
        KeyCode::Char('-'),
        N,
        "+ / -",
        "pin block sparsity up/down",
        Action::PinDown,
        Scope::Main,
    ),
    b(
        KeyCode::Char('i'),
        N,
        "i",
        "importance: F / OWL / α̂",
        Action::CycleImportance,
        Scope::Main,
    ),
    b(
        KeyCode::Char('v'),
        N,
        "v",
        // Not a list of names: a new allocation joins the overlays (`params::overlays`) and
        // this line still fits the help at 80 columns.
        "overlay other allocations",
        Action::CycleOverlay,
        Scope::Main,
    ),
    b(
        KeyCode::Char('u'),
        N,
        "u / U",
        "unpin block / all blocks",
        Action::Unpin,
        Scope::Main,
    ),
    b(
        KeyCode::Char('U'),
        S,
        "u / U",
        "unpin block / all blocks",
        Action::UnpinAll,
        Scope::Main,
    ),
    b(
        KeyCode::Up,
        N,
        "↑/↓",
        "select a prompt",
        Action::PromptPrev,
        Scope::Compare,
    ),
    b(
        KeyCode::Down,
        N,
        "↑/↓",
        "select a prompt",
        Action::PromptNext,
        Scope::Compare,
    ),
    b(
        KeyCode::Char('p'),
        N,
        "p",
        "edit the prompt",
        Action::EditPrompt,
        Scope::Compare,
    ),
    b(
        KeyCode::Char('n'),
        N,
        "n",
        "add a prompt",
        Action::AddPrompt,
        Scope::Compare,
    ),
    b(
        KeyCode::Char('x'),
        N,
        "x",
        "remove the prompt",
        Action::DeletePrompt,
        Scope::Compare,
    ),
    b(
        KeyCode::Char('g'),
        N,
        "g",
        "generate again (both)",
        Action::Generate,
        Scope::Compare,
    ),
    b(
        KeyCode::Char('a'),
        N,
        "a",
        "apply masks (as mode says)",
        Action::Apply,
        Scope::Any,
    ),
    b(
        KeyCode::Char('c'),
        N,
        "c",
        "charts ⇄ compare view",
        Action::ToggleCompare,
        Scope::Any,
    ),
    b(
        KeyCode::Left,
        N,
        "←/→",
        "select a point",
        Action::SweepPrev,
        Scope::Sweep,
    ),
    b(
        KeyCode::Right,
        N,
        "←/→",
        "select a point",
        Action::SweepNext,
        Scope::Sweep,
    ),
    b(
        KeyCode::Enter,
        N,
        "Enter",
        "use the point's value",
        Action::SweepJump,
        Scope::Sweep,
    ),
    b(
        KeyCode::Char('f'),
        N,
        "f",
        "faithful re-check of it",
        Action::SweepRecheck,
        Scope::Sweep,
    ),
    b(
        KeyCode::Char('w'),
        N,
        "w",
        "sweep the focused p or α",
        Action::ToggleSweep,
        Scope::Any,
    ),
    b(
        KeyCode::Char('A'),
        S,
        "A",
        "choose α on held-out data",
        Action::AlphaAuto,
        Scope::Any,
    ),
    b(
        KeyCode::Char('D'),
        S,
        "D",
        "4 calibration draws",
        Action::CalibDraws,
        Scope::Any,
    ),
    b(
        KeyCode::Char('z'),
        N,
        "z",
        "score zero-shot accuracy",
        Action::ZeroShot,
        Scope::Any,
    ),
    b(
        KeyCode::Char('Q'),
        S,
        "Q",
        "quantize: q8_0, q4_k, q4_0",
        Action::Quantize,
        Scope::Compare,
    ),
    b(
        KeyCode::Char('F'),
        S,
        "F",
        "LoRA-recover the applied",
        Action::Recover,
        Scope::Compare,
    ),
    b(
        KeyCode::Char('X'),
        S,
        "X",
        "sparse execution auto/off",
        Action::ToggleSparse,
        Scope::Any,
    ),
    b(
        KeyCode::Char('e'),
        N,
        "e",
        "export report/config JSON",
        Action::Export,
        Scope::Any,
    ),
    b(
        KeyCode::Char('R'),
        N,
        "R",
        "write llm-compressor recipe",
        Action::ExportRecipe,
        Scope::Any,
    ),
    b(
        KeyCode::Char('P'),
        S,
        "P",
        "chart as SVG next to export",
        Action::WriteChart,
        Scope::Any,
    ),
    b(
        KeyCode::Char('o'),
        N,
        "o",
        "open a config (restores)",
        Action::Open,
        Scope::Any,
    ),
    b(
        KeyCode::Char('s'),
        N,
        "s",
        "save the pruned model",
        Action::SaveModel,
        Scope::Any,
    ),
    b(
        KeyCode::Char('r'),
        N,
        "r",
        "calibrate again",
        Action::Recalibrate,
        Scope::Any,
    ),
    b(
        KeyCode::Esc,
        N,
        "Esc",
        "cancel the running job",
        Action::Cancel,
        Scope::Any,
    ),
    b(
        KeyCode::Char('?'),
        N,
        "?",
        "this help",
        Action::Help,
        Scope::Any,
    ),
    b(KeyCode::Char('q'), N, "q", "quit", Action::Quit, Scope::Any),
];

/// The action bound to `key` in `view` (Main, Compare or Sweep).
pub fn lookup(key: &KeyEvent, view: Scope) -> Option<Action> {
    // Terminals disagree on whether Shift comes with upper-case letters and '?' / '+'.
    let mods = key.modifiers & (KeyModifiers::SHIFT | KeyModifiers::CONTROL | KeyModifiers::ALT);
    let char_key = matches!(key.code, KeyCode::Char(_));
    BINDINGS
        .iter()
        .find(|b| {
            let scope_ok = b.scope.applies_in(view);
            let mods_ok = if char_key {
                (mods - KeyModifiers::SHIFT).is_empty()
            } else {
                mods == b.mods
            };
            scope_ok && b.code == key.code && mods_ok
        })
        .map(|b| b.action)
}

/// The footer's hints per view, most important first: an action and its one-word name. The key
/// shown comes from the action's binding in the table, so the footer never names a key that
/// does something else.
const FOOTER_MAIN: &[(Action, &str)] = &[
    (Action::Inc, "adjust"),
    (Action::FieldNext, "field"),
    (Action::BlockNext, "block"),
    (Action::PinUp, "pin"),
    (Action::Apply, "apply"),
    (Action::ToggleCompare, "compare"),
    (Action::Export, "export"),
    (Action::Help, "help"),
    (Action::Quit, "quit"),
    (Action::Open, "open"),
    (Action::SaveModel, "save"),
];
const FOOTER_COMPARE: &[(Action, &str)] = &[
    (Action::PromptNext, "prompt"),
    (Action::EditPrompt, "edit"),
    (Action::AddPrompt, "new"),
    (Action::Generate, "generate"),
    (Action::Apply, "apply"),
    (Action::ToggleCompare, "charts"),
    (Action::Export, "export"),
    (Action::Help, "help"),
    (Action::ZeroShot, "accuracy"),
    (Action::Quit, "quit"),
    (Action::ToggleSparse, "sparse"),
];

const FOOTER_SWEEP: &[(Action, &str)] = &[
    (Action::SweepNext, "point"),
    (Action::SweepJump, "use"),
    (Action::SweepRecheck, "faithful"),
    (Action::ToggleSweep, "charts"),
    (Action::Cancel, "cancel"),
    (Action::Help, "help"),
    (Action::Quit, "quit"),
];

/// `(key, word)` hints for the footer of `view`.
pub fn footer(view: Scope) -> Vec<(String, &'static str)> {
    let list = match view {
        Scope::Compare => FOOTER_COMPARE,
        Scope::Sweep => FOOTER_SWEEP,
        _ => FOOTER_MAIN,
    };
    list.iter()
        .filter_map(|(action, word)| {
            let b = BINDINGS
                .iter()
                .find(|b| b.action == *action && b.scope.applies_in(view))?;
            Some((compact(b.label), *word))
        })
        .collect()
}

/// A help label made short for the footer: the first alternative when it is a pair
/// ("↑/↓ Tab" → "↑↓"), separators dropped ("+ / -" → "+-").
fn compact(label: &str) -> String {
    let first = label.split(' ').next().unwrap_or(label);
    let keep = if first.contains('/') { first } else { label };
    keep.replace(" / ", "").replace('/', "")
}

/// `(key label, help, scope)` rows for the help overlay, each listed once.
pub fn help_rows() -> Vec<(&'static str, &'static str, Scope)> {
    let mut rows: Vec<(&'static str, &'static str, Scope)> = Vec::new();
    for b in BINDINGS {
        if !rows.iter().any(|r| r.0 == b.label && r.1 == b.help) {
            rows.push((b.label, b.help, b.scope));
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn footer_keys_come_from_the_table() {
        let main: Vec<String> = footer(Scope::Main)
            .into_iter()
            .map(|(k, w)| format!("{k} {w}"))
            .collect();
        assert_eq!(
            main,
            [
                "←→ adjust",
                "↑↓ field",
                "[ ] block",
                "+- pin",
                "a apply",
                "c compare",
                "e export",
                "? help",
                "q quit",
                "o open",
                "s save"
            ]
        );
        let compare: Vec<String> = footer(Scope::Compare).into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            compare,
            ["↑↓", "p", "n", "g", "a", "c", "e", "?", "z", "q", "X"]
        );
        // Every footer key dispatches the footer's action in its view.
        for (view, list) in [
            (Scope::Main, FOOTER_MAIN),
            (Scope::Compare, FOOTER_COMPARE),
            (Scope::Sweep, FOOTER_SWEEP),
        ] {
            assert_eq!(footer(view).len(), list.len());
        }
    }

    #[test]
    fn every_action_reachable_and_help_has_no_duplicates() {
        let k = |c: KeyCode, m: KeyModifiers| KeyEvent::new(c, m);
        assert_eq!(
            lookup(&k(KeyCode::Right, N), Scope::Main),
            Some(Action::Inc)
        );
        assert_eq!(
            lookup(&k(KeyCode::Right, S), Scope::Main),
            Some(Action::IncCoarse)
        );
        assert_eq!(
            lookup(&k(KeyCode::Up, N), Scope::Compare),
            Some(Action::PromptPrev)
        );
        assert_eq!(
            lookup(&k(KeyCode::Char('?'), S), Scope::Compare),
            Some(Action::Help)
        );
        assert_eq!(
            lookup(&k(KeyCode::Char('U'), S), Scope::Main),
            Some(Action::UnpinAll)
        );
        assert_eq!(
            lookup(&k(KeyCode::Char('z'), N), Scope::Main),
            Some(Action::ZeroShot)
        );
        assert_eq!(lookup(&k(KeyCode::Char('Z'), S), Scope::Main), None);
        // X (sparse execution) and P (the chart as SVG) everywhere; x and p stay the compare
        // view's prompt removal and edit.
        for view in [Scope::Main, Scope::Compare, Scope::Sweep] {
            assert_eq!(
                lookup(&k(KeyCode::Char('X'), S), view),
                Some(Action::ToggleSparse)
            );
            assert_eq!(
                lookup(&k(KeyCode::Char('P'), S), view),
                Some(Action::WriteChart)
            );
        }
        assert_eq!(
            lookup(&k(KeyCode::Char('x'), N), Scope::Compare),
            Some(Action::DeletePrompt)
        );
        assert_eq!(
            lookup(&k(KeyCode::Char('p'), N), Scope::Compare),
            Some(Action::EditPrompt)
        );
        assert_eq!(
            lookup(&k(KeyCode::Right, N), Scope::Sweep),
            Some(Action::SweepNext)
        );
        let rows = help_rows();
        for (i, a) in rows.iter().enumerate() {
            assert!(!rows[i + 1..].iter().any(|b| b.0 == a.0 && b.1 == a.1));
        }
        assert!(rows.len() >= 20);
    }
}
