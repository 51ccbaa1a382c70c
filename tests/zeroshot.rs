//! Zero-shot scoring on a tiny random-weight model: the packed, prefix-shared log-likelihoods
//! equal full forwards of each request alone, the metrics follow the harness's formulas, and the
//! local/Hub readers and the CLI's errors.

mod common;
#[path = "common/hub_server.rs"]
mod hub_server;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, D};
use common::Tiny;
use dlpx::model::llama::log_softmax_f32;
use dlpx::zeroshot::{evaluate, load_tasks, Task, TaskSet, TaskSource};
use hub_server::{serve, Behaviour};
use serde_json::json;

fn write_jsonl(path: &Path, rows: &[serde_json::Value]) {
    let body: String = rows.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(path, body).unwrap();
}

/// Five tasks' worth of rows with short continuations (≤ 11 byte tokens, so a 12-token limit
/// truncates contexts but never a continuation).
fn write_tasks(dir: &Path) {
    let boolq: Vec<_> = (0..6)
        .map(|i| {
            json!({"question": format!("is {i} even"), "answer": i % 2 == 0,
                "passage": format!("Number {i} is a number; some are even and some are odd.")})
        })
        .collect();
    write_jsonl(&dir.join("boolq.jsonl"), &boolq);
    let rte: Vec<_> = (0..5)
        .map(|i| {
            json!({"sentence1": format!("The cat sat on mat {i}."), "sentence2": "A cat sat.",
                "label": i % 2, "idx": i})
        })
        .collect();
    write_jsonl(&dir.join("rte.validation.jsonl"), &rte);
    let hs: Vec<_> = (0..5)
        .map(|i| {
            json!({"activity_label": "Running", "ctx_a": format!("A man runs {i} laps."),
                "ctx_b": "then he", "endings": ["sits down.", "runs more.", "[step] eats.", "sleeps."],
                "label": format!("{}", i % 4)})
        })
        .collect();
    write_jsonl(&dir.join("hellaswag.jsonl"), &hs);
    let wg: Vec<_> = (0..4)
        .map(|i| {
            json!({"sentence": format!("Tom gave Ann {i} books because _ is kind."),
                "option1": "Tom", "option2": "Ann", "answer": if i % 2 == 0 { "1" } else { "2" }})
        })
        .collect();
    write_jsonl(&dir.join("winogrande.jsonl"), &wg);
    let arc: Vec<_> = (0..5)
        .map(|i| {
            let key = ["A", "B", "C"][i % 3];
            json!({"id": format!("q{i}"), "question": format!("What is {i} plus one?"),
                "choices": {"text": ["one", "two", "three"], "label": ["A", "B", "C"]},
                "answerKey": key})
        })
        .collect();
    write_jsonl(&dir.join("arc_easy.jsonl"), &arc);
}

/// The harness's computation for one request, written out directly: the model runs on
/// `(ctx + cont)[-(max_len + 1):][:-1]` alone, and the log-softmax at the last `len(cont)`
/// positions is summed at the continuation's tokens.
fn direct_ll(llama: &dlpx::model::Llama, ctx: &[u32], cont: &[u32], max_len: usize) -> f64 {
    let mut seq: Vec<u32> = ctx.iter().chain(cont).copied().collect();
    if seq.len() > max_len + 1 {
        seq.drain(..seq.len() - (max_len + 1));
    }
    let inp = &seq[..seq.len() - 1];
    let ids = Tensor::new(inp, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let lsm = log_softmax_f32(&llama.forward(&ids, 0, None).unwrap())
        .unwrap()
        .squeeze(0)
        .unwrap();
    let n = inp.len();
    let tgt = Tensor::new(cont, &Device::Cpu)
        .unwrap()
        .unsqueeze(1)
        .unwrap();
    lsm.narrow(0, n - cont.len(), cont.len())
        .unwrap()
        .gather(&tgt, D::Minus1)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap()
        .iter()
        .map(|r| r[0] as f64)
        .sum()
}

fn first_argmax(xs: &[f64]) -> usize {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best
}

#[test]
fn packed_loglikelihoods_equal_full_forwards_and_metrics_follow_the_harness() {
    let dir = tempfile::tempdir().unwrap();
    write_tasks(dir.path());
    let (p, _) = Tiny::default().gguf_in(dir.path(), 7);
    let m = dlpx::model::load_gguf(&p, &Device::Cpu, DType::F32, &mut |_| {}).unwrap();
    let tasks = [
        Task::BoolQ,
        Task::Rte,
        Task::HellaSwag,
        Task::WinoGrande,
        Task::ArcEasy,
    ];
    let src = TaskSource::Dir(dir.path().to_path_buf());
    let rows = load_tasks(&tasks, &src, &mut |_| {}).unwrap();
    assert_eq!(rows[1].split, "validation", "from rte.validation.jsonl");
    assert!(rows[0].split.contains("unknown split"), "{}", rows[0].split);
    // 256: every request whole; 12: contexts left-truncated as the harness does.
    for max_len in [256, 12] {
        let set = TaskSet::prepare(&m.tokenizer, rows.clone(), &src, None, max_len).unwrap();
        let (z, lls, work) = evaluate(&m.llama, &set, &mut |_, _, _| true).unwrap();
        assert!(
            work.tokens < work.unshared_tokens,
            "shared contexts run once: {work:?}"
        );
        let mut worst = 0f64;
        // Lengths first: a short or empty result must not make "packed = direct" hold trivially.
        assert_eq!(
            set.tasks.len(),
            tasks.len(),
            "one prepared task per task asked"
        );
        assert_eq!(
            lls.len(),
            set.tasks.len(),
            "one log-likelihood list per task"
        );
        let mut compared = 0;
        for (t, task_lls) in set.tasks.iter().zip(&lls) {
            let (mut acc, mut norm) = (0.0, 0.0);
            assert!(!t.docs.is_empty(), "{}: no documents", t.task.name());
            assert_eq!(t.encoded.len(), t.docs.len(), "{}", t.task.name());
            assert_eq!(
                task_lls.len(),
                t.docs.len(),
                "{}: one row per document",
                t.task.name()
            );
            for ((doc, enc), got) in t.docs.iter().zip(&t.encoded).zip(task_lls) {
                let want: Vec<f64> = enc
                    .iter()
                    .map(|(c, k)| direct_ll(&m.llama, c, k, max_len))
                    .collect();
                assert!(doc.choices.len() >= 2, "{}: {doc:?}", t.task.name());
                assert_eq!(want.len(), doc.choices.len(), "one request per choice");
                assert_eq!(
                    got.len(),
                    want.len(),
                    "{}: one log-likelihood per choice",
                    t.task.name()
                );
                compared += got.len();
                for (g, w) in got.iter().zip(&want) {
                    worst = worst.max((g - w).abs());
                }
                // acc: argmax of the log-likelihoods; acc_norm: divided by the choice's
                // length in characters (Python len), first index on ties (numpy.argmax).
                let normed: Vec<f64> = want
                    .iter()
                    .zip(&doc.choices)
                    .map(|(l, c)| l / c.chars().count() as f64)
                    .collect();
                acc += (first_argmax(&want) == doc.gold) as u8 as f64;
                norm += (first_argmax(&normed) == doc.gold) as u8 as f64;
            }
            let n = t.docs.len() as f64;
            let s = z.task(t.task.name()).unwrap();
            assert_eq!(s.n, t.docs.len());
            assert_eq!(s.acc, acc / n, "{} acc, max_len {max_len}", t.task.name());
            match t.task.has_acc_norm() {
                true => assert_eq!(s.acc_norm, Some(norm / n), "{}", t.task.name()),
                false => assert_eq!(s.acc_norm, None),
            }
            // The harness's stderr: sample standard deviation (n − 1) over √n.
            let a = s.acc;
            let sd = ((a * (1.0 - a) * n) / (n - 1.0)).sqrt();
            assert!((s.acc_stderr.unwrap() - sd / n.sqrt()).abs() < 1e-12);
        }
        // f32 forwards of different shapes: summation order differs, nothing else.
        assert!(
            compared > 0,
            "no log-likelihood compared (max_len {max_len})"
        );
        assert!(
            worst < 2e-4,
            "max |packed − direct| = {worst} (max_len {max_len})"
        );
        let mean = z.tasks.iter().map(|t| t.acc).sum::<f64>() / 5.0;
        assert!((z.mean_acc - mean).abs() < 1e-15);
    }
}

fn dlpx(args: &[&str], cache: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_dlpx"))
        .args(args)
        .env("DLPX_CACHE", cache)
        .output()
        .unwrap()
}

#[test]
fn bad_task_input_is_one_clear_error_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_tasks(d);
    let (p, _) = Tiny::default().gguf_in(d, 7);
    let model = p.to_str().unwrap();
    let samples = d.join("samples.jsonl");
    let bad = d.join("bad");
    std::fs::create_dir(&bad).unwrap();
    write_jsonl(
        &bad.join("rte.jsonl"),
        &[json!({"sentence1": "A.", "label": 0})],
    );
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--tasks", "hellaswag,piqa"],
            "unknown task `piqa`; the known tasks are boolq, rte, hellaswag, winogrande, arc_easy, arc_challenge, openbookqa",
        ),
        (vec!["--limit", "0"], "--limit 0 leaves no example"),
        (
            vec!["--tasks", "rte", "--source", bad.to_str().unwrap()],
            "rte: field `sentence2` is missing",
        ),
        (
            vec!["--tasks", "openbookqa", "--source", d.to_str().unwrap()],
            "no file for task openbookqa",
        ),
    ];
    for (extra, want) in cases {
        let mut args = vec![
            "zeroshot",
            "--model",
            model,
            "--log-samples",
            samples.to_str().unwrap(),
        ];
        if !extra.contains(&"--source") {
            args.extend(["--source", d.to_str().unwrap()]);
        }
        args.extend(extra);
        let o = dlpx(&args, &d.join("cache"));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(!samples.exists(), "{args:?} wrote {}", samples.display());
    }
}

#[test]
fn cli_scores_log_samples_and_caches_the_dense_result() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_tasks(d);
    let (p, _) = Tiny::default().gguf_in(d, 7);
    let cache = d.join("cache");
    let samples = d.join("s.jsonl");
    let base = [
        "zeroshot",
        "--model",
        p.to_str().unwrap(),
        "--source",
        d.to_str().unwrap(),
        "--tasks",
        "hellaswag,winogrande",
        "--limit",
        "3",
        "--json",
    ];
    let run = |extra: &[&str]| {
        let mut a = base.to_vec();
        a.extend(extra);
        let o = dlpx(&a, &cache);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        (
            serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap(),
            String::from_utf8_lossy(&o.stderr).to_string(),
        )
    };
    let (a, _) = run(&["--log-samples", samples.to_str().unwrap()]);
    assert_eq!(a["tasks"][0]["n"], 3);
    assert_eq!(a["limit"], 3);
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&samples)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3 * 4 + 3 * 2, "one line per request");
    assert_eq!(lines[0]["task"], "hellaswag");
    assert_eq!(lines[0]["continuation"], " sits down.");
    let wg = &lines[12];
    assert_eq!(wg["context"], "Tom gave Ann 0 books because Tom");
    assert_eq!(wg["continuation"], " is kind.");
    // Second run: the dense result comes from the cache, identical.
    let (b, err) = run(&[]);
    assert!(err.contains("from the cache"), "{err}");
    let strip = |mut v: serde_json::Value| {
        v["seconds"] = json!(0);
        v
    };
    assert_eq!(strip(a), strip(b));
}

#[test]
fn arrow_streams_are_read_with_nested_fields() {
    use arrow_array::builder::{ListBuilder, StringBuilder};
    use arrow_array::{ArrayRef, RecordBatch, StringArray, StructArray};
    use arrow_schema::{DataType, Field, Fields};
    let dir = tempfile::tempdir().unwrap();
    let mut text = ListBuilder::new(StringBuilder::new());
    let mut label = ListBuilder::new(StringBuilder::new());
    for (t, l) in [(["a", "b"], ["A", "B"]), (["c", "d"], ["1", "2"])] {
        for x in t {
            text.values().append_value(x);
        }
        text.append(true);
        for x in l {
            label.values().append_value(x);
        }
        label.append(true);
    }
    let (text, label) = (
        Arc::new(text.finish()) as ArrayRef,
        Arc::new(label.finish()) as ArrayRef,
    );
    let fields = Fields::from(vec![
        Field::new("text", text.data_type().clone(), true),
        Field::new("label", label.data_type().clone(), true),
    ]);
    let choices = Arc::new(StructArray::new(fields.clone(), vec![text, label], None)) as ArrayRef;
    let question = Arc::new(StringArray::from(vec!["Q1?", "Q2?"])) as ArrayRef;
    let key = Arc::new(StringArray::from(vec!["B", "1"])) as ArrayRef;
    let schema = Arc::new(arrow_schema::Schema::new(vec![
        Field::new("question", DataType::Utf8, true),
        Field::new("choices", DataType::Struct(fields), true),
        Field::new("answerKey", DataType::Utf8, true),
    ]));
    let batch = RecordBatch::try_new(schema.clone(), vec![question, choices, key]).unwrap();
    let path = dir.path().join("arc_easy.test.arrow");
    let mut w =
        arrow_ipc::writer::StreamWriter::try_new(std::fs::File::create(&path).unwrap(), &schema)
            .unwrap();
    w.write(&batch).unwrap();
    w.finish().unwrap();
    let rows = dlpx::zeroshot::data::read_rows(&path).unwrap();
    assert_eq!(
        rows[0],
        json!({"question": "Q1?", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "B"})
    );
    let src = TaskSource::Dir(dir.path().to_path_buf());
    let t = load_tasks(&[Task::ArcEasy], &src, &mut |_| {}).unwrap();
    assert_eq!(t[0].split, "test");
    let docs: Vec<_> = t[0]
        .rows
        .iter()
        .map(|r| Task::ArcEasy.doc(r).unwrap())
        .collect();
    assert_eq!(
        (docs[0].gold, docs[1].gold, docs[1].requests[1].1.as_str()),
        (1, 0, " d")
    );
}

/// GLUE-style rows as a parquet file (sentence1, sentence2, label).
fn write_rte_parquet(path: &Path, n: usize) {
    use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;
    let schema = Arc::new(
        parse_message_type(
            "message schema { REQUIRED BYTE_ARRAY sentence1 (UTF8); REQUIRED BYTE_ARRAY sentence2 (UTF8); REQUIRED INT64 label; }",
        )
        .unwrap(),
    );
    let mut w = SerializedFileWriter::new(
        std::fs::File::create(path).unwrap(),
        schema,
        Arc::new(WriterProperties::builder().build()),
    )
    .unwrap();
    let mut rg = w.next_row_group().unwrap();
    let mut col_i = 0;
    while let Some(mut col) = rg.next_column().unwrap() {
        match col_i {
            0 | 1 => {
                let v: Vec<ByteArray> = (0..n)
                    .map(|i| ByteArray::from(format!("Sentence {col_i} of pair {i}.").as_str()))
                    .collect();
                col.typed::<ByteArrayType>()
                    .write_batch(&v, None, None)
                    .unwrap();
            }
            _ => {
                let v: Vec<i64> = (0..n as i64).map(|i| i % 2).collect();
                col.typed::<Int64Type>()
                    .write_batch(&v, None, None)
                    .unwrap();
            }
        }
        col.close().unwrap();
        col_i += 1;
    }
    rg.close().unwrap();
    w.close().unwrap();
}

#[test]
fn hub_source_reads_the_parquet_conversion_branch() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pq = d.join("rte.parquet");
    write_rte_parquet(&pq, 7);
    let mut files = HashMap::new();
    files.insert(
        "datasets/nyu-mll/glue/rte/validation/0000.parquet".to_string(),
        (std::fs::read(&pq).unwrap(), "0".repeat(40)),
    );
    let server = serve(
        files,
        Behaviour {
            branches: vec!["refs/convert/parquet".into()],
            ..Behaviour::default()
        },
    );
    let (p, _) = Tiny::default().gguf_in(d, 7);
    let o = server
        .dlpx(&d.join("hf"))
        .args([
            "zeroshot",
            "--model",
            p.to_str().unwrap(),
            "--source",
            "hub",
            "--tasks",
            "rte",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["tasks"][0]["n"], 7);
    assert_eq!(v["tasks"][0]["split"], "validation");
    assert_eq!(v["source"], "hub");
    let logged = server.requests();
    assert!(
        logged.iter().any(|r| r
            .target
            .contains("/resolve/refs%2Fconvert%2Fparquet/rte/validation/0000.parquet")),
        "{:?}",
        logged.iter().map(|r| &r.target).collect::<Vec<_>>()
    );
}
