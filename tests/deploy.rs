//! The cluster files the README includes (deploy/slurm/*.sbatch, deploy/k8s/*.yaml) are the
//! ones checked here: their dlpx command lines parse with dlpx's own argument parser, the array
//! and the Indexed Job give the shards `--shard auto` resolves, and the README names these files
//! rather than a second copy. (tests/slurm.rs runs the Slurm scripts on a real one-node Slurm; a
//! real Kubernetes run is not part of the suite.)

use std::collections::HashMap;
use std::path::Path;

use clap::Parser;
use dlpx::cli::{Cli, Command, SweepArgs};
use dlpx::experiment::scheduler::resolve;
use dlpx::experiment::sweep::Shard;

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel))
        .unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The script's `dlpx …` line, split as the shell would for these simple words (double
/// quotes removed), each `$VAR` replaced by `/VAR` so the line parses as it will run, and
/// `"$@"` by the script's default arguments (its `set -- …` line), as when it is submitted
/// without any.
fn dlpx_line(script: &str) -> Vec<String> {
    let lines: Vec<&str> = script
        .lines()
        .filter(|l| l.trim_start().starts_with("dlpx "))
        .collect();
    assert_eq!(lines.len(), 1, "one dlpx command per script: {lines:?}");
    let mut line = lines[0].to_string();
    if line.contains("\"$@\"") {
        let defaults = script
            .lines()
            .find_map(|l| l.trim().strip_prefix("set -- "))
            .expect("a `set -- …` line with the default arguments");
        line = line.replace("\"$@\"", defaults);
    }
    line.replace('"', "")
        .split_whitespace()
        .map(|w| {
            let mut out = String::new();
            let mut chars = w.chars().peekable();
            while let Some(c) = chars.next() {
                if c == '$' {
                    let mut name = String::new();
                    while let Some(&n) = chars.peek() {
                        if n.is_ascii_alphanumeric() || n == '_' {
                            name.push(n);
                            chars.next();
                        } else {
                            break;
                        }
                    }
                    out.push('/');
                    out.push_str(&name);
                } else {
                    out.push(c);
                }
            }
            out
        })
        .collect()
}

fn sweep_args(argv: &[String]) -> SweepArgs {
    let cli = Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    match cli.command {
        Some(Command::Sweep(a)) => *a,
        c => panic!("not a sweep: {c:?}"),
    }
}

/// `#SBATCH --array=A-B` → the task ids.
fn array(script: &str) -> Vec<usize> {
    let spec = script
        .lines()
        .find_map(|l| l.strip_prefix("#SBATCH --array="))
        .expect("an #SBATCH --array line");
    let (a, b) = spec.trim().split_once('-').expect("a range A-B");
    (a.parse().unwrap()..=b.parse().unwrap()).collect()
}

#[test]
fn the_sbatch_array_runs_one_shard_per_task_and_the_merge_joins_them() {
    let script = read("deploy/slurm/sweep.sbatch");
    let tasks = array(&script);
    assert_eq!(tasks, vec![0, 1, 2]);
    let argv = dlpx_line(&script);
    let a = sweep_args(&argv);
    assert_eq!(a.shard.as_deref(), Some("auto"));
    assert_eq!(a.out, "/OUT/", "a folder on shared storage");
    assert_eq!(a.allocation, "dlp,owl,uniform");
    assert_eq!(a.params, vec!["alpha=0:0.3:0.025"]);
    assert!(
        script.contains("#SBATCH --requeue"),
        "preempted tasks come back"
    );
    for v in ["export DLPX_CACHE=", "export HF_HOME="] {
        assert!(script.contains(v), "{v}");
    }
    // What each array task resolves to, from the variables Slurm sets for `--array=0-2`.
    let (min, max) = (tasks[0], *tasks.last().unwrap());
    let shards: Vec<Shard> = tasks
        .iter()
        .map(|t| {
            let env: HashMap<String, String> = [
                ("SLURM_ARRAY_TASK_ID", *t),
                ("SLURM_ARRAY_TASK_MIN", min),
                ("SLURM_ARRAY_TASK_MAX", max),
                ("SLURM_ARRAY_TASK_COUNT", tasks.len()),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
            resolve(&env, a.shards).unwrap().shard
        })
        .collect();
    assert_eq!(
        shards,
        (0..3)
            .map(|index| Shard { index, count: 3 })
            .collect::<Vec<_>>()
    );

    let merge = read("deploy/slurm/merge.sbatch");
    let m = sweep_args(&dlpx_line(&merge));
    assert_eq!(
        m.merge,
        vec![std::path::PathBuf::from("/OUT")],
        "the shards' folder"
    );
    assert_eq!(m.out, "/OUT.merged");
}

/// The one-line `command: [...]` of a manifest (a JSON array, which is also YAML).
fn command(yaml: &str) -> Vec<String> {
    let line = yaml
        .lines()
        .find_map(|l| l.trim().strip_prefix("command: "))
        .expect("a command: [...] line");
    serde_json::from_str(line).unwrap()
}

/// `key: value` of the first line that has the key.
fn field<'a>(yaml: &'a str, key: &str) -> &'a str {
    yaml.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key}"))
        .split('#')
        .next()
        .unwrap()
        .trim()
        .trim_matches('"')
}

#[test]
fn the_kubernetes_job_is_indexed_and_its_pods_are_the_shards() {
    let job = read("deploy/k8s/sweep-job.yaml");
    assert_eq!(field(&job, "kind"), "Job");
    assert_eq!(field(&job, "completionMode"), "Indexed");
    let completions: usize = field(&job, "completions").parse().unwrap();
    assert_eq!(completions, 3);
    // DLPX_SHARDS repeats `completions` (the pods are not told it).
    let lines: Vec<&str> = job.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.contains("name: DLPX_SHARDS"))
        .unwrap();
    assert_eq!(field(lines[at + 1], "value"), completions.to_string());
    for v in ["name: DLPX_CACHE", "name: HF_HOME", "persistentVolumeClaim"] {
        assert!(job.contains(v), "{v}");
    }
    let a = sweep_args(&command(&job));
    assert_eq!(a.shard.as_deref(), Some("auto"));
    assert_eq!(a.out, "/shared/sweeps/alpha/");
    for i in 0..completions {
        let env: HashMap<String, String> = [
            ("JOB_COMPLETION_INDEX".to_string(), i.to_string()),
            ("DLPX_SHARDS".to_string(), completions.to_string()),
        ]
        .into();
        assert_eq!(
            resolve(&env, a.shards).unwrap().shard,
            Shard { index: i, count: 3 }
        );
    }
    let merge = read("deploy/k8s/merge-job.yaml");
    let m = sweep_args(&command(&merge));
    assert_eq!(
        m.merge,
        vec![std::path::PathBuf::from("/shared/sweeps/alpha")]
    );
}

#[test]
fn the_readme_includes_these_files_and_no_copy_of_them() {
    let readme = read("README.md");
    for f in [
        "deploy/slurm/sweep.sbatch",
        "deploy/slurm/merge.sbatch",
        "deploy/k8s/sweep-job.yaml",
        "deploy/k8s/merge-job.yaml",
    ] {
        assert!(readme.contains(f), "README names {f}");
        // No line of a file's dlpx command is pasted into the README.
        let text = read(f);
        let cmd = text
            .lines()
            .find(|l| l.trim_start().starts_with("dlpx ") || l.trim().starts_with("command: "))
            .unwrap()
            .trim();
        assert!(!readme.contains(cmd), "README repeats {f}'s command");
    }
}
