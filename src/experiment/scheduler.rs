//! The automatic shard: which shard of a sweep this process is, from the environment a cluster
//! scheduler sets (README, "Sweeps on a cluster"): a Slurm array job or a Kubernetes Indexed
//! Job. [`resolve`] is a pure function of the environment (a map), so every case is tested
//! without touching the process's own environment.

use std::collections::HashMap;
use std::fmt;

use super::sweep::Shard;
use crate::error::Setting;

/// Where the shard came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardSource {
    /// A Slurm array job: `SLURM_ARRAY_TASK_ID` within `SLURM_ARRAY_TASK_MIN..=MAX` (step
    /// `SLURM_ARRAY_TASK_STEP`) or `0..SLURM_ARRAY_TASK_COUNT`.
    Slurm { job: Option<String>, task: usize },
    /// A Kubernetes Job with `completionMode: Indexed`: `JOB_COMPLETION_INDEX`, the count from
    /// the shard-count setting or `DLPX_SHARDS` (Kubernetes does not put `completions` in the
    /// environment).
    Kubernetes { count_from: CountFrom },
}

/// Where a shard count came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CountFrom {
    /// The shard-count setting ([`Setting::Shards`]).
    Shards,
    /// An environment variable.
    Var(&'static str),
    /// The size of the Slurm array (its range and step).
    SlurmArray,
}

impl CountFrom {
    fn name(self, name: &impl Fn(Setting) -> &'static str) -> &'static str {
        match self {
            CountFrom::Shards => name(Setting::Shards),
            CountFrom::Var(v) => v,
            CountFrom::SlurmArray => "the Slurm array",
        }
    }
}

/// The shard and its source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutoShard {
    pub shard: Shard,
    pub source: ShardSource,
}

impl AutoShard {
    /// Which shard, from where, with settings named by `name` (labels or flags).
    pub fn render(&self, name: impl Fn(Setting) -> &'static str) -> String {
        let (i, n) = (self.shard.index, self.shard.count);
        let auto = name(Setting::Shard);
        match &self.source {
            ShardSource::Slurm { job, task } => format!(
                "{auto} auto: shard {i}/{n} from the Slurm array job{} (SLURM_ARRAY_TASK_ID={task})",
                job.as_ref().map(|j| format!(" {j}")).unwrap_or_default()
            ),
            ShardSource::Kubernetes { count_from } => format!(
                "{auto} auto: shard {i}/{n} from the Kubernetes Indexed Job (JOB_COMPLETION_INDEX={i}, {n} shards from {})",
                count_from.name(&name)
            ),
        }
    }
}

impl fmt::Display for AutoShard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render(Setting::label))
    }
}

/// Why the automatic shard was not found. Each message names the variables and the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardEnvError {
    /// Neither scheduler's variables are set.
    NoScheduler,
    /// Both are set: which one is meant is a guess.
    Both,
    /// A variable is not a non-negative integer.
    NotANumber { var: &'static str, value: String },
    /// `SLURM_ARRAY_TASK_ID` without `SLURM_ARRAY_TASK_MIN`/`MAX` or `COUNT`.
    SlurmNoRange,
    /// An array given as a list with gaps (Slurm's `--array=1,4,9`): its tasks are not shards
    /// 0..n.
    SlurmGaps {
        min: usize,
        max: usize,
        step: usize,
        count: usize,
    },
    /// The index is not below the count (or not on the array's step).
    OutOfRange {
        var: &'static str,
        index: usize,
        count: usize,
    },
    /// `JOB_COMPLETION_INDEX` without a count.
    KubernetesNoCount,
    /// Two counts that disagree (the shard-count setting and the array size or `DLPX_SHARDS`).
    CountMismatch {
        a: (CountFrom, usize),
        b: (CountFrom, usize),
    },
    /// A shard count of 0.
    ZeroShards { from: CountFrom },
}

impl ShardEnvError {
    /// The message with settings named by `name` (labels in the explorer, flags on the command
    /// line).
    pub fn render(&self, name: impl Fn(Setting) -> &'static str) -> String {
        let (shard, shards) = (name(Setting::Shard), name(Setting::Shards));
        let why = match self {
            ShardEnvError::NoScheduler => format!(
                "this is neither a Slurm array task (SLURM_ARRAY_TASK_ID with \
                 SLURM_ARRAY_TASK_MIN/SLURM_ARRAY_TASK_MAX or SLURM_ARRAY_TASK_COUNT) nor a \
                 Kubernetes Indexed Job pod (JOB_COMPLETION_INDEX, with {shards} N or \
                 DLPX_SHARDS); submit it with `sbatch --array=0-N` or as a Job with \
                 `completionMode: Indexed`, or give the shard yourself with {shard} i/n"
            ),
            ShardEnvError::Both => format!(
                "both SLURM_ARRAY_TASK_ID and JOB_COMPLETION_INDEX are set, so the \
                 scheduler is ambiguous; unset the one that does not apply or give {shard} i/n"
            ),
            ShardEnvError::NotANumber { var, value } => {
                format!("{var}=`{value}` is not a non-negative integer")
            }
            ShardEnvError::SlurmNoRange => format!(
                "SLURM_ARRAY_TASK_ID is set but neither SLURM_ARRAY_TASK_MIN and \
                 SLURM_ARRAY_TASK_MAX nor SLURM_ARRAY_TASK_COUNT is, so the number of shards is \
                 unknown; run inside an `sbatch --array` job or give {shard} i/n"
            ),
            ShardEnvError::SlurmGaps {
                min,
                max,
                step,
                count,
            } => format!(
                "the Slurm array has {count} tasks (SLURM_ARRAY_TASK_COUNT) but \
                 spans {min}-{max} step {step} (SLURM_ARRAY_TASK_MIN/MAX/STEP): an array given \
                 as a list with gaps is not a set of shards; submit a range such as \
                 --array=0-{}",
                count.saturating_sub(1)
            ),
            ShardEnvError::OutOfRange { var, index, count } => format!(
                "{var} gives shard {index}, but there are {count} shards (0…{})",
                count.saturating_sub(1)
            ),
            ShardEnvError::KubernetesNoCount => format!(
                "JOB_COMPLETION_INDEX is set but not the number of shards; pass \
                 {shards} N or set DLPX_SHARDS to the Job's `completions`"
            ),
            ShardEnvError::CountMismatch { a, b } => format!(
                "{} says {} shards but {} says {}; make them agree",
                a.0.name(&name),
                a.1,
                b.0.name(&name),
                b.1
            ),
            ShardEnvError::ZeroShards { from } => {
                format!("{} is 0; a sweep has at least one shard", from.name(&name))
            }
        };
        format!("{shard} auto: {why}")
    }
}

impl fmt::Display for ShardEnvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render(Setting::label))
    }
}

impl std::error::Error for ShardEnvError {}

fn get(env: &HashMap<String, String>, var: &'static str) -> Result<Option<usize>, ShardEnvError> {
    match env.get(var).map(|v| v.trim()) {
        None | Some("") => Ok(None),
        Some(v) => v
            .parse::<usize>()
            .map(Some)
            .map_err(|_| ShardEnvError::NotANumber {
                var,
                value: v.to_string(),
            }),
    }
}

/// The shard of this process from `env`; `shards` is the shard-count setting.
pub fn resolve(
    env: &HashMap<String, String>,
    shards: Option<usize>,
) -> Result<AutoShard, ShardEnvError> {
    let slurm = get(env, "SLURM_ARRAY_TASK_ID")?;
    let k8s = get(env, "JOB_COMPLETION_INDEX")?;
    let dlpx_shards = get(env, "DLPX_SHARDS")?;
    if shards == Some(0) {
        return Err(ShardEnvError::ZeroShards {
            from: CountFrom::Shards,
        });
    }
    if dlpx_shards == Some(0) {
        return Err(ShardEnvError::ZeroShards {
            from: CountFrom::Var("DLPX_SHARDS"),
        });
    }
    if let (Some(a), Some(b)) = (shards, dlpx_shards) {
        if a != b {
            return Err(ShardEnvError::CountMismatch {
                a: (CountFrom::Shards, a),
                b: (CountFrom::Var("DLPX_SHARDS"), b),
            });
        }
    }
    let (shard, source, index_var) = match (slurm, k8s) {
        (Some(_), Some(_)) => return Err(ShardEnvError::Both),
        (None, None) => return Err(ShardEnvError::NoScheduler),
        (Some(id), None) => {
            let step = get(env, "SLURM_ARRAY_TASK_STEP")?.unwrap_or(1).max(1);
            let count_var = get(env, "SLURM_ARRAY_TASK_COUNT")?;
            let min = get(env, "SLURM_ARRAY_TASK_MIN")?;
            let max = get(env, "SLURM_ARRAY_TASK_MAX")?;
            let (index, count) = match (min, max, count_var) {
                (Some(min), Some(max), c) if max >= min => {
                    let count = (max - min) / step + 1;
                    if c.is_some_and(|c| c != count) {
                        return Err(ShardEnvError::SlurmGaps {
                            min,
                            max,
                            step,
                            count: c.unwrap_or(count),
                        });
                    }
                    if id < min || (id - min) % step != 0 {
                        return Err(ShardEnvError::OutOfRange {
                            var: "SLURM_ARRAY_TASK_ID",
                            index: id.saturating_sub(min) / step,
                            count,
                        });
                    }
                    ((id - min) / step, count)
                }
                (None, None, Some(c)) | (Some(0), None, Some(c)) => (id, c),
                _ => return Err(ShardEnvError::SlurmNoRange),
            };
            if count == 0 {
                return Err(ShardEnvError::ZeroShards {
                    from: CountFrom::Var("SLURM_ARRAY_TASK_COUNT"),
                });
            }
            if let Some(s) = shards.or(dlpx_shards) {
                if s != count {
                    let from = match shards {
                        Some(_) => CountFrom::Shards,
                        None => CountFrom::Var("DLPX_SHARDS"),
                    };
                    return Err(ShardEnvError::CountMismatch {
                        a: (from, s),
                        b: (CountFrom::SlurmArray, count),
                    });
                }
            }
            let source = ShardSource::Slurm {
                job: env
                    .get("SLURM_ARRAY_JOB_ID")
                    .filter(|j| !j.is_empty())
                    .cloned(),
                task: id,
            };
            (Shard { index, count }, source, "SLURM_ARRAY_TASK_ID")
        }
        (None, Some(index)) => {
            let (count, count_from) = match (shards, dlpx_shards) {
                (Some(n), _) => (n, CountFrom::Shards),
                (None, Some(n)) => (n, CountFrom::Var("DLPX_SHARDS")),
                (None, None) => return Err(ShardEnvError::KubernetesNoCount),
            };
            (
                Shard { index, count },
                ShardSource::Kubernetes { count_from },
                "JOB_COMPLETION_INDEX",
            )
        }
    };
    if shard.index >= shard.count {
        return Err(ShardEnvError::OutOfRange {
            var: index_var,
            index: shard.index,
            count: shard.count,
        });
    }
    Ok(AutoShard { shard, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> HashMap<String, String> {
        vars.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Settings named as a command line would (this layer knows no flags).
    fn flags(s: Setting) -> &'static str {
        match s {
            Setting::Shard => "SHARD",
            Setting::Shards => "SHARDS",
            _ => "?",
        }
    }

    fn shard(index: usize, count: usize) -> Shard {
        Shard { index, count }
    }

    #[test]
    fn slurm_arrays_by_range_count_and_step() {
        // sbatch --array=0-2: Slurm sets ID, MIN, MAX, COUNT and STEP.
        let e = env(&[
            ("SLURM_ARRAY_JOB_ID", "812"),
            ("SLURM_ARRAY_TASK_ID", "1"),
            ("SLURM_ARRAY_TASK_MIN", "0"),
            ("SLURM_ARRAY_TASK_MAX", "2"),
            ("SLURM_ARRAY_TASK_COUNT", "3"),
            ("SLURM_ARRAY_TASK_STEP", "1"),
        ]);
        let a = resolve(&e, None).unwrap();
        assert_eq!(a.shard, shard(1, 3));
        assert_eq!(
            a.render(flags),
            "SHARD auto: shard 1/3 from the Slurm array job 812 (SLURM_ARRAY_TASK_ID=1)"
        );
        // A shard count agreeing is fine, disagreeing is refused.
        assert_eq!(resolve(&e, Some(3)).unwrap().shard, shard(1, 3));
        assert_eq!(
            resolve(&e, Some(4)).unwrap_err(),
            ShardEnvError::CountMismatch {
                a: (CountFrom::Shards, 4),
                b: (CountFrom::SlurmArray, 3)
            }
        );
        // sbatch --array=1-3: shards count from the array's first task.
        let e = env(&[
            ("SLURM_ARRAY_TASK_ID", "3"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
            ("SLURM_ARRAY_TASK_MAX", "3"),
        ]);
        assert_eq!(resolve(&e, None).unwrap().shard, shard(2, 3));
        // sbatch --array=0-8:4 → tasks 0, 4, 8.
        let e = env(&[
            ("SLURM_ARRAY_TASK_ID", "4"),
            ("SLURM_ARRAY_TASK_MIN", "0"),
            ("SLURM_ARRAY_TASK_MAX", "8"),
            ("SLURM_ARRAY_TASK_STEP", "4"),
            ("SLURM_ARRAY_TASK_COUNT", "3"),
        ]);
        assert_eq!(resolve(&e, None).unwrap().shard, shard(1, 3));
        // COUNT alone: a 0-based array.
        let e = env(&[
            ("SLURM_ARRAY_TASK_ID", "2"),
            ("SLURM_ARRAY_TASK_COUNT", "3"),
        ]);
        assert_eq!(resolve(&e, None).unwrap().shard, shard(2, 3));
        let e = env(&[
            ("SLURM_ARRAY_TASK_ID", "3"),
            ("SLURM_ARRAY_TASK_COUNT", "3"),
        ]);
        assert_eq!(
            resolve(&e, None).unwrap_err(),
            ShardEnvError::OutOfRange {
                var: "SLURM_ARRAY_TASK_ID",
                index: 3,
                count: 3
            }
        );
    }

    #[test]
    fn slurm_lists_with_gaps_and_missing_ranges_are_refused() {
        // sbatch --array=1,4,9
        let e = env(&[
            ("SLURM_ARRAY_TASK_ID", "4"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
            ("SLURM_ARRAY_TASK_MAX", "9"),
            ("SLURM_ARRAY_TASK_COUNT", "3"),
        ]);
        let err = resolve(&e, None).unwrap_err();
        assert!(matches!(err, ShardEnvError::SlurmGaps { count: 3, .. }));
        assert!(err.to_string().contains("--array=0-2"), "{err}");
        let e = env(&[("SLURM_ARRAY_TASK_ID", "0")]);
        assert_eq!(resolve(&e, None).unwrap_err(), ShardEnvError::SlurmNoRange);
        let e = env(&[("SLURM_ARRAY_TASK_ID", "x")]);
        assert_eq!(
            resolve(&e, None).unwrap_err(),
            ShardEnvError::NotANumber {
                var: "SLURM_ARRAY_TASK_ID",
                value: "x".into()
            }
        );
    }

    #[test]
    fn kubernetes_indexed_jobs_take_the_count_from_the_flag_or_the_env() {
        let e = env(&[("JOB_COMPLETION_INDEX", "2")]);
        let a = resolve(&e, Some(3)).unwrap();
        assert_eq!(a.shard, shard(2, 3));
        assert_eq!(
            a.render(flags),
            "SHARD auto: shard 2/3 from the Kubernetes Indexed Job (JOB_COMPLETION_INDEX=2, 3 shards from SHARDS)"
        );
        assert_eq!(
            a.to_string(),
            "shard auto: shard 2/3 from the Kubernetes Indexed Job (JOB_COMPLETION_INDEX=2, 3 shards from shard count)"
        );
        let e = env(&[("JOB_COMPLETION_INDEX", "0"), ("DLPX_SHARDS", "3")]);
        let a = resolve(&e, None).unwrap();
        assert_eq!(a.shard, shard(0, 3));
        assert_eq!(
            a.source,
            ShardSource::Kubernetes {
                count_from: CountFrom::Var("DLPX_SHARDS")
            }
        );
        assert_eq!(
            resolve(&e, Some(2)).unwrap_err(),
            ShardEnvError::CountMismatch {
                a: (CountFrom::Shards, 2),
                b: (CountFrom::Var("DLPX_SHARDS"), 3)
            }
        );
        let e = env(&[("JOB_COMPLETION_INDEX", "1")]);
        let err = resolve(&e, None).unwrap_err();
        assert_eq!(err, ShardEnvError::KubernetesNoCount);
        assert!(err.render(flags).contains("SHARDS N or set DLPX_SHARDS"));
        assert!(matches!(
            resolve(&env(&[("JOB_COMPLETION_INDEX", "3")]), Some(3)),
            Err(ShardEnvError::OutOfRange {
                index: 3,
                count: 3,
                ..
            })
        ));
        assert_eq!(
            resolve(&env(&[("JOB_COMPLETION_INDEX", "0")]), Some(0)).unwrap_err(),
            ShardEnvError::ZeroShards {
                from: CountFrom::Shards
            }
        );
    }

    #[test]
    fn neither_or_both_is_refused_naming_the_variables() {
        let err = resolve(&env(&[("HOME", "/root")]), Some(3)).unwrap_err();
        assert_eq!(err, ShardEnvError::NoScheduler);
        let msg = err.render(flags);
        for v in [
            "SLURM_ARRAY_TASK_ID",
            "SLURM_ARRAY_TASK_MIN",
            "SLURM_ARRAY_TASK_COUNT",
            "JOB_COMPLETION_INDEX",
            "DLPX_SHARDS",
            "SHARD i/n",
        ] {
            assert!(msg.contains(v), "{v}: {msg}");
        }
        let e = env(&[
            ("SLURM_ARRAY_TASK_ID", "0"),
            ("SLURM_ARRAY_TASK_COUNT", "2"),
            ("JOB_COMPLETION_INDEX", "0"),
        ]);
        assert_eq!(resolve(&e, Some(2)).unwrap_err(), ShardEnvError::Both);
    }
}
