//! Exports for the tools that evaluate and serve models: a compressed-tensors sparse checkpoint
//! of a pruned model, and an llm-compressor recipe of an allocation.

pub mod compressed;
pub mod gguf;
pub mod recipe;

use std::collections::HashMap;
use std::path::Path;

use candle_core::Tensor;
use color_eyre::eyre::{bail, Result};
use serde_json::json;

use crate::model::{LinearKind, LoadedModel};
use compressed::Format;

/// What a compressed export wrote, against the dense one.
#[derive(Debug, Clone, PartialEq)]
pub struct CompressedSummary {
    pub format: Format,
    /// Linears written compressed / left dense (not 2:4 where the format needs it).
    pub compressed: usize,
    pub dense: usize,
    /// Bytes of tensor data in this export and in the dense one.
    pub bytes: usize,
    pub dense_bytes: usize,
}

/// The compressed-tensors version whose format and config this export follows.
const CT_VERSION: &str = "0.14.0.1";

/// Save `model` as a compressed-tensors sparse checkpoint in `format`: the seven linears of
/// every block compressed (for 2:4, those that are 2:4; the others stay dense and are listed in
/// `ignore`), embeddings, norms and head dense, and config.json's `quantization_config` with the
/// `sparsity_config` compressed-tensors writes.
pub fn save_compressed(
    model: &LoadedModel,
    out: &Path,
    format: Format,
) -> Result<CompressedSummary> {
    let named = model.llama.named_tensors()?;
    let dense_bytes = named.iter().map(|(_, t)| compressed::data_bytes(t)).sum();
    let linears: Vec<String> = (0..model.llama.blocks.len())
        .flat_map(|i| {
            LinearKind::ALL
                .iter()
                .map(move |k| format!("model.layers.{i}.{}", k.hf_name()))
        })
        .collect();
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let mut ignore = vec!["lm_head".to_string()];
    let (mut n_compressed, mut zeros, mut total) = (0usize, 0f64, 0f64);
    for (name, t) in named {
        total += t.elem_count() as f64;
        zeros += t
            .flatten_all()?
            .eq(0.0)?
            .to_dtype(candle_core::DType::F32)?
            .sum_all()?
            .to_scalar::<f32>()? as f64;
        let module = name.strip_suffix(".weight").unwrap_or(&name).to_string();
        if !linears.contains(&module) {
            tensors.insert(name, t);
            continue;
        }
        compressed::check_dtype(t.dtype())?;
        let parts = match format {
            Format::SparseBitmask => Some(compressed::compress_bitmask(&module, &t)?),
            Format::Sparse24Bitmask => compressed::compress_24(&module, &t)?,
        };
        match parts {
            Some(parts) => {
                n_compressed += 1;
                tensors.extend(parts);
            }
            None => {
                ignore.push(module);
                tensors.insert(name, t);
            }
        }
    }
    if n_compressed == 0 {
        bail!(
            "no linear of this model is {}: nothing to write as {}",
            format.structure(),
            format.name()
        );
    }
    let mut config = model.llama.config.to_hf_json()?;
    config["quantization_config"] = json!({
        "quant_method": "compressed-tensors",
        "sparsity_config": {
            "format": format.name(),
            "global_sparsity": zeros / total,
            "ignore": ignore,
            "registry_requires_subclass": false,
            "sparsity_structure": format.structure(),
            "targets": ["Linear"],
        },
        "transform_config": {},
        "version": CT_VERSION,
    });
    crate::model::write_folder(model, out, &tensors, config)?;
    Ok(CompressedSummary {
        format,
        compressed: n_compressed,
        dense: linears.len() - n_compressed,
        bytes: tensors.values().map(compressed::data_bytes).sum(),
        dense_bytes,
    })
}
