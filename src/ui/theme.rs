//! Themes are TOML files (`themes/*.toml`; the three shipped ones are built in). `NO_COLOR`
//! turns every colour off; emphasis then comes from bold and reversed text only.

use std::str::FromStr;

use color_eyre::eyre::{bail, eyre, Result, WrapErr};
use ratatui::style::{Color, Modifier, Style};
use serde::Deserialize;

const BUILTIN: [(&str, &str); 3] = [
    ("dark", include_str!("../../themes/dark.toml")),
    ("light", include_str!("../../themes/light.toml")),
    ("16color", include_str!("../../themes/16color.toml")),
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ThemeFile {
    name: String,
    text: String,
    dim: String,
    accent: String,
    border: String,
    bar: String,
    bar_selected: String,
    bar_active: String,
    target: String,
    achieved: String,
    pinned: String,
    good: String,
    error: String,
    highlight_bg: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Theme {
    pub name: String,
    pub text: Color,
    pub dim: Color,
    pub accent: Color,
    pub border: Color,
    pub bar: Color,
    pub bar_selected: Color,
    pub bar_active: Color,
    pub target: Color,
    pub achieved: Color,
    pub pinned: Color,
    pub good: Color,
    pub error: Color,
    pub highlight_bg: Color,
    /// `NO_COLOR`: every colour is the terminal default.
    pub mono: bool,
}

impl Theme {
    /// `name` is a built-in theme or a path to a TOML file.
    pub fn load(name: &str) -> Result<Self> {
        let text = match BUILTIN.iter().find(|(n, _)| *n == name) {
            Some((_, t)) => t.to_string(),
            None if std::path::Path::new(name).exists() => std::fs::read_to_string(name)
                .wrap_err_with(|| format!("cannot read theme `{name}`"))?,
            None => bail!(
                "unknown theme `{name}`: use dark, light, 16color, or a path to a .toml theme file"
            ),
        };
        Self::parse(&text).wrap_err_with(|| format!("theme `{name}`"))
    }

    pub fn parse(text: &str) -> Result<Self> {
        let f: ThemeFile = toml::from_str(text).map_err(|e| eyre!("{}", e.message()))?;
        let c = |field: &str, v: &str| -> Result<Color> {
            Color::from_str(v)
                .map_err(|_| eyre!("{field} = \"{v}\" is not a colour (a name, #rrggbb or 0–255)"))
        };
        Ok(Self {
            name: f.name.clone(),
            text: c("text", &f.text)?,
            dim: c("dim", &f.dim)?,
            accent: c("accent", &f.accent)?,
            border: c("border", &f.border)?,
            bar: c("bar", &f.bar)?,
            bar_selected: c("bar_selected", &f.bar_selected)?,
            bar_active: c("bar_active", &f.bar_active)?,
            target: c("target", &f.target)?,
            achieved: c("achieved", &f.achieved)?,
            pinned: c("pinned", &f.pinned)?,
            good: c("good", &f.good)?,
            error: c("error", &f.error)?,
            highlight_bg: c("highlight_bg", &f.highlight_bg)?,
            mono: false,
        })
    }

    /// No colours at all (`NO_COLOR`).
    pub fn mono() -> Self {
        let r = Color::Reset;
        Self {
            name: "no-color".into(),
            text: r,
            dim: r,
            accent: r,
            border: r,
            bar: r,
            bar_selected: r,
            bar_active: r,
            target: r,
            achieved: r,
            pinned: r,
            good: r,
            error: r,
            highlight_bg: r,
            mono: true,
        }
    }

    /// The theme the user asked for, unless `NO_COLOR` is set (non-empty).
    pub fn resolve(name: &str) -> Result<Self> {
        let t = Self::load(name)?;
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Ok(if no_color { Self::mono() } else { t })
    }

    pub fn fg(&self, c: Color) -> Style {
        Style::default().fg(c)
    }

    /// The focused row / selected item: a background tint, or reversed text without colours.
    pub fn highlight(&self) -> Style {
        if self.mono {
            Style::default().add_modifier(Modifier::REVERSED)
        } else {
            Style::default()
                .bg(self.highlight_bg)
                .fg(self.accent)
                .add_modifier(Modifier::BOLD)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_parse_and_bad_files_name_the_field() {
        for (n, _) in BUILTIN {
            assert_eq!(Theme::load(n).unwrap().name, n);
        }
        let bad = BUILTIN[0].1.replace("#ff5f5f", "notacolour");
        let e = format!("{:#}", Theme::parse(&bad).unwrap_err());
        assert!(e.contains("target = \"notacolour\""), "{e}");
        let extra = format!("{}\nsparkle = \"red\"\n", BUILTIN[0].1);
        let e = format!("{:#}", Theme::parse(&extra).unwrap_err());
        assert!(e.contains("sparkle"), "{e}");
        assert!(Theme::load("nope").is_err());
    }
}
