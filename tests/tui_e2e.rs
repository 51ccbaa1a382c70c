//! End to end: the real binary in a real terminal (tmux), on the demo model. Open, wait for
//! calibration, change α and τ and see the allocation numbers change on screen, apply preview,
//! see a pruned perplexity, the compare view's speeds, switch sparse execution off and on (X),
//! export, quit (terminal restored, exit 0); then the exported JSON replays with
//! `dlpx prune --config` to the same per-block sparsities.

use std::process::Command;
use std::time::{Duration, Instant};

struct Tmux {
    session: String,
}

impl Tmux {
    fn tmux(args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .args(args)
            .output()
            .expect("tmux is needed for this test (apt-get install tmux)")
    }

    fn start(cmd: &str) -> Self {
        let session = format!("dlpx-e2e-{}", std::process::id());
        let o = Self::tmux(&[
            "new-session",
            "-d",
            "-s",
            &session,
            "-x",
            "100",
            "-y",
            "30",
            cmd,
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        Self { session }
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&Self::tmux(&["capture-pane", "-p", "-t", &self.session]).stdout)
            .to_string()
    }

    fn keys(&self, keys: &[&str]) {
        for k in keys {
            Self::tmux(&["send-keys", "-t", &self.session, k]);
            std::thread::sleep(Duration::from_millis(120));
        }
    }

    /// Wait until `pred` holds for the screen; panics with the screen after `secs`.
    fn wait(&self, what: &str, secs: u64, pred: impl Fn(&str) -> bool) -> String {
        let t = Instant::now();
        loop {
            let s = self.screen();
            if pred(&s) {
                return s;
            }
            assert!(
                t.elapsed() < Duration::from_secs(secs),
                "timed out waiting for {what}; screen:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        Self::tmux(&["kill-session", "-t", &self.session]);
    }
}

/// The value shown beside a parameter's label (`range α`, `temperature τ`) in the parameters
/// panel, and whether that field is the selected one (`▸`).
fn field(screen: &str, label: &str) -> Option<(bool, String)> {
    let line = screen.lines().find(|l| l.contains(label))?;
    let i = line.find(label)?;
    let selected = line[..i].ends_with("▸ ");
    let value: String = line[i + label.len()..]
        .split('│')
        .next()?
        .trim()
        .to_string();
    Some((selected, value))
}

/// The selected block's target sparsity from the sparsity chart's title.
fn selected_target(screen: &str) -> String {
    let line = screen
        .lines()
        .find(|l| l.contains("sparsity ·"))
        .unwrap_or_else(|| panic!("no sparsity chart:\n{screen}"));
    let i = line.find("block 0: ").expect("selected block value") + 9;
    line[i..i + 5].to_string()
}

#[test]
fn explorer_end_to_end_in_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let export = dir.path().join("explored.json");
    let bin = env!("CARGO_BIN_EXE_dlpx");
    let cmd = format!(
        "{bin} --calib-samples 8 --eval-windows 4 --max-new-tokens 6 --no-stats-cache; echo EXIT=$?; sleep 60"
    );
    let t = Tmux::start(&cmd);
    let s = t.wait("calibration and dense perplexity", 600, |s| {
        s.contains("a applies") && !s.contains("Esc cancels")
    });
    let before = selected_target(&s);

    // α: one field down, three steps right → 0.180; the allocation numbers change on screen.
    t.keys(&["Down", "Right", "Right", "Right"]);
    let s = t.wait("α = 0.180", 60, |s| {
        field(s, "range α") == Some((true, "0.180".into()))
    });
    let after_alpha = selected_target(&s);
    assert_ne!(
        before, after_alpha,
        "α did not change block 0's sparsity:\n{s}"
    );

    // τ: one more field down, one step right → τ = 2.
    t.keys(&["Down", "Right"]);
    let s = t.wait("τ = 2.000", 60, |s| {
        field(s, "temperature τ") == Some((true, "2.000".into()))
    });
    assert_eq!(field(&s, "range α"), Some((false, "0.180".into())), "{s}");
    let after_tau = selected_target(&s);
    assert_ne!(
        after_alpha, after_tau,
        "τ did not change block 0's sparsity:\n{s}"
    );

    // Block numbers under the charts: a row of 0, 2, 4, … up to the last blocks.
    let number_rows: Vec<Vec<usize>> = s
        .lines()
        .filter_map(|l| {
            let chart: String = l.chars().take(70).collect();
            let nums: Option<Vec<usize>> = chart
                .split(['│', ' '])
                .filter(|w| !w.is_empty())
                .map(|w| w.parse().ok())
                .collect();
            nums.filter(|n| n.len() >= 5 && n[0] == 0)
        })
        .collect();
    assert_eq!(
        number_rows.len(),
        2,
        "block numbers under both charts:\n{s}"
    );
    assert!(number_rows[0].iter().any(|&b| b >= 28), "{s}");
    // v twice: OWL's allocation overlaid, its legend on the sparsity chart.
    t.keys(&["v", "v"]);
    let s = t.wait("the OWL overlay", 60, |s| s.contains("◆ OWL"));
    assert!(s.matches('◆').count() > 10, "{s}");
    t.keys(&["v"]);
    t.wait("the AlphaPruning overlay", 60, |s| {
        s.contains("◆ Alpha") && !s.contains("◆ OWL")
    });
    t.keys(&["v"]);
    t.wait("the depth overlay", 60, |s| {
        s.contains("◆ depth") && !s.contains("◆ Alpha")
    });
    t.keys(&["v"]);
    t.wait("no overlay", 60, |s| !s.contains('◆'));

    // Apply (preview is the explorer's default mode) and wait for the pruned perplexity.
    t.keys(&["a"]);
    let s = t.wait("the pruned perplexity", 600, |s| {
        s.contains("pruned perplexity") && !s.contains("Esc cancels")
    });
    assert!(s.contains("#1 preview"), "{s}");

    // The compare view: each finished row with its token count and decode speed on both sides
    // (the dense one also when it came from the cache), and the applied model's linears.
    t.keys(&["c"]);
    let s = t.wait("the compare view", 60, |s| s.contains("linears #1"));
    let row = s
        .lines()
        .find(|l| l.contains("The capital of France is"))
        .unwrap_or_else(|| panic!("no first prompt row:\n{s}"));
    let rates: Vec<&str> = row.split(" tok/s").collect();
    assert_eq!(rates.len(), 3, "a rate on both sides: {row}");
    assert!(
        row.contains("dense ") && row.contains("│  pruned "),
        "{row}"
    );
    assert!(!row.contains("dense 1 tok "), "{row}");
    // X runs the applied model's linears dense, X again sparse where that is faster.
    t.keys(&["X"]);
    t.wait("dense execution", 120, |s| {
        s.contains("sparse execution off, 0 of 210 linears sparse") && !s.contains("Esc cancels")
    });
    t.keys(&["X"]);
    t.wait("sparse execution again", 120, |s| {
        s.contains("sparse execution auto, ") && !s.contains("Esc cancels")
    });
    t.keys(&["c"]);

    // Export to an edited path.
    t.keys(&["e", "C-u"]);
    Tmux::tmux(&[
        "send-keys",
        "-t",
        &t.session,
        "-l",
        export.to_str().unwrap(),
    ]);
    t.keys(&["Enter"]);
    t.wait("the export message", 60, |s| s.contains("exported to"));
    assert!(export.exists());

    // Quit: the terminal is given back and the process exits 0.
    t.keys(&["q"]);
    let s = t.wait("exit", 60, |s| s.contains("EXIT="));
    assert!(s.contains("EXIT=0"), "{s}");

    let exported: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&export).unwrap()).unwrap();
    assert_eq!(exported["params"]["alloc"]["alpha"], 0.18);
    assert_eq!(exported["params"]["alloc"]["tau"], 2.0);
    assert!(
        exported["ppl"]["pruned"].as_f64().unwrap() > exported["ppl"]["dense"].as_f64().unwrap()
    );

    // Headless replay of the exported config: identical per-block sparsities.
    let replay = dir.path().join("replay.json");
    let o = Command::new(bin)
        .args(["prune", "--quiet", "--eval", "none", "--config"])
        .arg(&export)
        .arg("--report")
        .arg(&replay)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&replay).unwrap()).unwrap();
    let blocks = |v: &serde_json::Value| -> Vec<serde_json::Value> {
        v["blocks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["target_sparsity"].clone())
            .collect()
    };
    assert_eq!(blocks(&exported), blocks(&r));
    // The explorer applied preview masks; so did the replay (the mode is in the config).
    assert_eq!(r["params"]["mode"], "preview");
    let (eb, rb) = (
        exported["blocks"].as_array().unwrap(),
        r["blocks"].as_array().unwrap(),
    );
    assert_eq!(eb.len(), 30, "one entry per block of the demo model");
    assert_eq!(rb.len(), eb.len());
    for (a, b) in eb.iter().zip(rb) {
        assert!(a["achieved_sparsity"].is_number(), "{a}");
        assert_eq!(a["achieved_sparsity"], b["achieved_sparsity"]);
    }
}
