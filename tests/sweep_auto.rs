//! `dlpx sweep --shard auto` under simulated Slurm array and Kubernetes Indexed Job
//! environments (3 shards each): the shards, merged from their folder, hold exactly the rows of
//! the unsharded sweep; and `--merge DIR` refuses a missing, unfinished or foreign shard.

mod common;

use std::path::Path;
use std::process::Output;

use common::study::{measured, rows, Study};
use common::{ok, Tiny};

/// The scheduler variables `--shard auto` reads: removed from the child so the test runs the
/// same inside a real Slurm job or pod, then set as each case needs.
const SCHEDULER_VARS: [&str; 8] = [
    "SLURM_ARRAY_JOB_ID",
    "SLURM_ARRAY_TASK_ID",
    "SLURM_ARRAY_TASK_MIN",
    "SLURM_ARRAY_TASK_MAX",
    "SLURM_ARRAY_TASK_COUNT",
    "SLURM_ARRAY_TASK_STEP",
    "JOB_COMPLETION_INDEX",
    "DLPX_SHARDS",
];

fn dlpx(dir: &Path, args: &[&str], env: &[(&str, String)]) -> Output {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_dlpx"));
    c.args(args).env("DLPX_CACHE", dir.join("cache"));
    for v in SCHEDULER_VARS {
        c.env_remove(v);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn err(o: &Output) -> String {
    assert!(
        !o.status.success(),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stderr).to_string()
}

struct Sweep {
    study: Study,
    base: Vec<String>,
}

impl Sweep {
    /// The grid of tests/sweep.rs.
    fn new() -> Sweep {
        let study = Study::new(Tiny::default(), 5);
        let base = study.grid();
        Sweep { study, base }
    }

    fn d(&self) -> &Path {
        self.study.d()
    }

    fn run(&self, extra: &[&str], env: &[(&str, String)]) -> Output {
        let mut a: Vec<&str> = self.base.iter().map(String::as_str).collect();
        a.extend(extra);
        dlpx(self.d(), &a, env)
    }

    fn merge(&self, dir: &Path, out: &str) -> Output {
        let out = self.d().join(out);
        dlpx(
            self.d(),
            &[
                "sweep",
                "--merge",
                dir.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ],
            &[],
        )
    }
}

fn slurm(task: usize) -> Vec<(&'static str, String)> {
    vec![
        ("SLURM_ARRAY_JOB_ID", "4242".into()),
        ("SLURM_ARRAY_TASK_ID", task.to_string()),
        ("SLURM_ARRAY_TASK_MIN", "0".into()),
        ("SLURM_ARRAY_TASK_MAX", "2".into()),
        ("SLURM_ARRAY_TASK_COUNT", "3".into()),
        ("SLURM_ARRAY_TASK_STEP", "1".into()),
    ]
}

#[test]
fn slurm_and_kubernetes_shards_merged_equal_the_unsharded_sweep() {
    let s = Sweep::new();
    let d = s.d();
    let whole = d.join("whole");
    ok(&s.run(&["--out", whole.to_str().unwrap()], &[]));
    let all = rows(&d.join("whole.jsonl"));
    assert_eq!(all.len(), 12);

    // Slurm: `sbatch --array=0-2`, the three tasks writing into one folder.
    let sl = d.join("slurm");
    std::fs::create_dir(&sl).unwrap();
    for t in 0..3 {
        let e = ok(&s.run(
            &["--shard", "auto", "--out", sl.to_str().unwrap()],
            &slurm(t),
        ));
        assert!(
            e.contains(&format!(
                "--shard auto: shard {t}/3 from the Slurm array job 4242 (SLURM_ARRAY_TASK_ID={t})"
            )),
            "{e}"
        );
        assert!(e.contains(&format!("(4 in shard {t}/3)")), "{e}");
        let mine = rows(&sl.join(format!("dlpx-sweep.{t}of3.jsonl")));
        let idx: Vec<u64> = mine.iter().map(|r| r["index"].as_u64().unwrap()).collect();
        assert_eq!(
            idx,
            (0..12).filter(|i| i % 3 == t as u64).collect::<Vec<_>>()
        );
    }
    ok(&s.merge(&sl, "slurm-merged"));
    let merged = rows(&d.join("slurm-merged.jsonl"));
    assert_eq!(
        measured(&merged),
        measured(&all),
        "Slurm shards merged = the sweep"
    );

    // Kubernetes: an Indexed Job of 3 completions, the count from DLPX_SHARDS (pods 0 and 2)
    // or --shards (pod 1).
    let k8 = d.join("k8s");
    std::fs::create_dir(&k8).unwrap();
    for t in 0..3 {
        let out = format!("{}/", k8.display());
        let mut env = vec![("JOB_COMPLETION_INDEX", t.to_string())];
        let mut extra = vec!["--shard", "auto", "--out", &out];
        if t == 1 {
            extra.extend(["--shards", "3"]);
        } else {
            env.push(("DLPX_SHARDS", "3".into()));
        }
        let e = ok(&s.run(&extra, &env));
        assert!(
            e.contains(&format!(
                "--shard auto: shard {t}/3 from the Kubernetes Indexed Job (JOB_COMPLETION_INDEX={t}, 3 shards from {})",
                if t == 1 { "--shards" } else { "DLPX_SHARDS" }
            )),
            "{e}"
        );
    }
    ok(&s.merge(&k8, "k8s-merged"));
    let merged = rows(&d.join("k8s-merged.jsonl"));
    assert_eq!(
        measured(&merged),
        measured(&all),
        "Kubernetes shards merged = the sweep"
    );
    let csv = std::fs::read_to_string(d.join("k8s-merged.csv")).unwrap();
    assert_eq!(csv.lines().count(), 13);

    // Merging refuses: a missing shard (listed), an unfinished one, one of another setup.
    let part = d.join("part");
    std::fs::create_dir(&part).unwrap();
    for t in [0, 2] {
        std::fs::copy(
            sl.join(format!("dlpx-sweep.{t}of3.jsonl")),
            part.join(format!("dlpx-sweep.{t}of3.jsonl")),
        )
        .unwrap();
    }
    let e = err(&s.merge(&part, "bad"));
    assert!(
        e.contains("missing shard 1/3 (") && e.contains("dlpx-sweep.1of3.jsonl)"),
        "{e}"
    );
    // Shard 1 cut to its header and one point (a preempted task).
    let one = std::fs::read_to_string(sl.join("dlpx-sweep.1of3.jsonl")).unwrap();
    let cut: Vec<&str> = one.lines().take(2).collect();
    std::fs::write(part.join("dlpx-sweep.1of3.jsonl"), cut.join("\n") + "\n").unwrap();
    let e = err(&s.merge(&part, "bad"));
    assert!(
        e.contains("shard 1/3 (") && e.contains("has 1 of its 4 points"),
        "{e}"
    );
    // Resuming the preempted shard completes it, and the merge then equals the sweep.
    let e = ok(&s.run(
        &["--shard", "auto", "--out", part.to_str().unwrap()],
        &slurm(1),
    ));
    assert!(e.contains("1 done, 3 to run"), "{e}");
    ok(&s.merge(&part, "resumed"));
    assert_eq!(measured(&rows(&d.join("resumed.jsonl"))), measured(&all));
    // A shard of another grid (DLP only) in the folder.
    let other = d.join("other");
    std::fs::create_dir(&other).unwrap();
    let mut a: Vec<&str> = s.base.iter().map(String::as_str).collect();
    *a.last_mut().unwrap() = "dlp";
    a.extend(["--shard", "auto", "--out", other.to_str().unwrap()]);
    ok(&dlpx(d, &a, &slurm(2)));
    std::fs::copy(
        other.join("dlpx-sweep.2of3.jsonl"),
        part.join("dlpx-sweep.2of3.jsonl"),
    )
    .unwrap();
    let e = err(&s.merge(&part, "bad"));
    assert!(e.contains("another model, data, grid"), "{e}");
    // A split into 2 beside a split into 3.
    std::fs::copy(
        sl.join("dlpx-sweep.2of3.jsonl"),
        part.join("dlpx-sweep.2of3.jsonl"),
    )
    .unwrap();
    ok(&s.run(&["--shard", "0/2", "--out", part.to_str().unwrap()], &[]));
    let e = err(&s.merge(&part, "bad"));
    assert!(e.contains("shards of different splits (of 2, of 3)"), "{e}");
    assert!(!d.join("bad.jsonl").exists());
}

#[test]
fn shard_auto_outside_a_scheduler_is_refused_before_any_work() {
    let s = Sweep::new();
    let d = s.d();
    let out = d.join("x");
    let e = err(&s.run(&["--shard", "auto", "--out", out.to_str().unwrap()], &[]));
    assert_eq!(e.lines().count(), 1, "one readable message: {e}");
    for v in [
        "SLURM_ARRAY_TASK_ID",
        "SLURM_ARRAY_TASK_COUNT",
        "JOB_COMPLETION_INDEX",
        "DLPX_SHARDS",
        "--shard i/n",
    ] {
        assert!(e.contains(v), "{v}: {e}");
    }
    // A pod without the count.
    let e = err(&s.run(
        &["--shard", "auto", "--out", out.to_str().unwrap()],
        &[("JOB_COMPLETION_INDEX", "0".into())],
    ));
    assert!(e.contains("pass --shards N or set DLPX_SHARDS"), "{e}");
    // --shards disagreeing with the array.
    let e = err(&s.run(
        &[
            "--shard",
            "auto",
            "--shards",
            "4",
            "--out",
            out.to_str().unwrap(),
        ],
        &slurm(0),
    ));
    assert!(
        e.contains("--shards says 4 shards but the Slurm array says 3"),
        "{e}"
    );
    assert!(std::fs::read_dir(d).unwrap().all(|f| !f
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with('x')));
}
