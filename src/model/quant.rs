//! GGUF block quantization of a pruned model's linears, with candle's quantized types: the weights
//! a llama.cpp user runs after quantizing, dequantized back so dlpx measures exactly those
//! values. The DLP paper (ICML 2025) states that DLP combines with quantization; this measures by
//! how much (README "Quantize after pruning").
//!
//! Zeros: q8_0 and q4_0 store `round(x / d)` with no offset, so a pruned zero comes back exactly
//! zero. The k-quants (q4_k) store a per-sub-block minimum, so a zero inside a sub-block whose
//! minimum is below zero comes back as a small value: [`QuantSummary::zeros_lost`] counts them,
//! and the measured model keeps them, as llama.cpp would compute with them.

use std::collections::BTreeMap;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use color_eyre::eyre::{Result, WrapErr};
use rayon::prelude::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{LinearKind, Llama};

/// A GGUF block format for the pruned linears.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum QuantFormat {
    /// 8-bit, blocks of 32 with one f16 scale (8.5 bits per weight).
    #[serde(rename = "q8_0")]
    Q8_0,
    /// 4-bit, blocks of 32 with one f16 scale (4.5 bits per weight).
    #[serde(rename = "q4_0")]
    Q4_0,
    /// 4-bit k-quant, super-blocks of 256 with 6-bit scales and minimums (4.5 bits per weight);
    /// rows not a multiple of 256 fall back to q5_0, as llama.cpp's quantizer does.
    #[serde(rename = "q4_k")]
    Q4K,
}

impl QuantFormat {
    pub fn name(self) -> &'static str {
        match self {
            Self::Q8_0 => "q8_0",
            Self::Q4_0 => "q4_0",
            Self::Q4K => "q4_k",
        }
    }

    /// The type a matrix with rows of `cols` weights gets: the format's own, or, when a row is not
    /// a whole number of its blocks, llama.cpp's fallback (q4_k → q5_0; q8_0 and q4_0 → f16).
    pub fn type_for(self, cols: usize) -> GgmlDType {
        let t = match self {
            Self::Q8_0 => GgmlDType::Q8_0,
            Self::Q4_0 => GgmlDType::Q4_0,
            Self::Q4K => GgmlDType::Q4K,
        };
        if cols.is_multiple_of(t.block_size()) {
            return t;
        }
        match self {
            Self::Q4K if cols.is_multiple_of(GgmlDType::Q5_0.block_size()) => GgmlDType::Q5_0,
            _ => GgmlDType::F16,
        }
    }
}

/// The GGUF name of a type, as llama.cpp prints it.
pub fn type_name(t: GgmlDType) -> &'static str {
    match t {
        GgmlDType::F32 => "f32",
        GgmlDType::F16 => "f16",
        GgmlDType::BF16 => "bf16",
        GgmlDType::Q4_0 => "q4_0",
        GgmlDType::Q4_1 => "q4_1",
        GgmlDType::Q5_0 => "q5_0",
        GgmlDType::Q5_1 => "q5_1",
        GgmlDType::Q8_0 => "q8_0",
        GgmlDType::Q8_1 => "q8_1",
        GgmlDType::Q2K => "q2_k",
        GgmlDType::Q3K => "q3_k",
        GgmlDType::Q4K => "q4_k",
        GgmlDType::Q5K => "q5_k",
        GgmlDType::Q6K => "q6_k",
        GgmlDType::Q8K => "q8_k",
    }
}

/// One weight matrix `[out, in]` in `format` (or its fallback), quantized on the CPU.
pub fn quantize_matrix(w: &Tensor, format: QuantFormat) -> Result<QTensor> {
    let cols = *w.dims().last().unwrap_or(&0);
    let w = w.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
    Ok(QTensor::quantize(&w, format.type_for(cols))?)
}

/// What quantizing the linears did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QuantSummary {
    pub format: QuantFormat,
    /// Linears per type actually written (fallbacks included), e.g. `{"q4_k": 90, "q5_0": 120}`.
    pub types: BTreeMap<String, usize>,
    /// Bytes of the quantized linears, and of the same linears in f16 (llama.cpp's unquantized
    /// GGUF).
    pub bytes: u64,
    pub f16_bytes: u64,
    /// Pruned (exactly zero) weights before quantization, and how many of them dequantize to a
    /// non-zero value.
    pub pruned_zeros: u64,
    pub zeros_lost: u64,
    /// Root-mean-square quantization error of the kept weights, relative to their RMS.
    pub kept_rel_rms_error: f64,
}

/// Quantize every block linear of `model` in `format` and replace its weights by the dequantized
/// values (in the model's dtype and device). `progress(block, blocks)` after each block.
pub fn quantize_linears(
    model: &mut Llama,
    format: QuantFormat,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<QuantSummary> {
    let mut s = QuantSummary {
        format,
        types: BTreeMap::new(),
        bytes: 0,
        f16_bytes: 0,
        pruned_zeros: 0,
        zeros_lost: 0,
        kept_rel_rms_error: 0.0,
    };
    let (mut err2, mut kept2) = (0f64, 0f64);
    let n = model.blocks.len();
    for i in 0..n {
        let mut blk = model.block(i)?.into_owned();
        for k in LinearKind::ALL {
            let l = blk.linear_mut(k);
            let w = l.weight()?;
            let q = quantize_matrix(&w, format)
                .wrap_err_with(|| format!("quantizing {} to {}", l.name, format.name()))?;
            *s.types.entry(type_name(q.dtype()).into()).or_default() += 1;
            s.bytes += q.storage_size_in_bytes() as u64;
            s.f16_bytes += 2 * l.elem_count() as u64;
            let before = super::weights_f32(&w)?;
            let deq = q.dequantize(&Device::Cpu)?;
            let after = deq.flatten_all()?.to_vec1::<f32>()?;
            let (zeros, lost, e2, k2) = before
                .par_iter()
                .zip(after.par_iter())
                .map(|(&b, &a)| match b == 0.0 {
                    true => (1u64, u64::from(a != 0.0), 0.0, 0.0),
                    false => {
                        let d = (a - b) as f64;
                        (0, 0, d * d, (b as f64) * (b as f64))
                    }
                })
                .reduce(
                    || (0, 0, 0.0, 0.0),
                    |x, y| (x.0 + y.0, x.1 + y.1, x.2 + y.2, x.3 + y.3),
                );
            s.pruned_zeros += zeros;
            s.zeros_lost += lost;
            err2 += e2;
            kept2 += k2;
            l.set_weight(deq)?;
        }
        model.store_block(i, blk)?;
        progress(i + 1, n);
    }
    s.kept_rel_rms_error = if kept2 > 0.0 {
        (err2 / kept2).sqrt()
    } else {
        0.0
    };
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pruned-looking matrix: 70 % exact zeros, the rest spread over several magnitudes, with
    /// whole blocks of zeros and blocks with a single survivor.
    fn pruned(rows: usize, cols: usize) -> Tensor {
        let mut x = 7u64;
        let v: Vec<f32> = (0..rows * cols)
            .map(|i| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let u = (x >> 40) as f32 / (1u64 << 24) as f32;
                if i % 512 < 64 || u < 0.7 {
                    0.0
                } else {
                    (u - 0.85) * 10f32.powi((i % 3) as i32 - 2)
                }
            })
            .collect();
        Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap()
    }

    #[test]
    fn q8_0_and_q4_0_keep_every_pruned_zero() {
        let w = pruned(64, 512);
        let zeros: Vec<bool> = w
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|&v| v == 0.0)
            .collect();
        for f in [QuantFormat::Q8_0, QuantFormat::Q4_0] {
            let q = quantize_matrix(&w, f).unwrap();
            let back = q.dequantize(&Device::Cpu).unwrap();
            let back = back.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let lost = zeros
                .iter()
                .zip(&back)
                .filter(|(&z, &b)| z && b != 0.0)
                .count();
            assert_eq!(lost, 0, "{} turned pruned zeros into non-zeros", f.name());
            assert_eq!(q.dtype(), f.type_for(512));
        }
    }

    #[test]
    fn fallbacks_follow_llama_cpp() {
        assert_eq!(QuantFormat::Q4K.type_for(4096), GgmlDType::Q4K);
        assert_eq!(QuantFormat::Q4K.type_for(576), GgmlDType::Q5_0);
        assert_eq!(QuantFormat::Q8_0.type_for(576), GgmlDType::Q8_0);
        assert_eq!(QuantFormat::Q8_0.type_for(100), GgmlDType::F16);
        let q = quantize_matrix(&pruned(8, 576), QuantFormat::Q4K).unwrap();
        assert_eq!(q.dtype(), GgmlDType::Q5_0);
    }
}
