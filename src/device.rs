//! `--device` and `--dtype` selection.

use candle_core::{DType, Device};
use color_eyre::eyre::{bail, Result};

/// Resolve `auto|cpu|cuda[:N]|metal`.
pub fn parse_device(s: &str) -> Result<Device> {
    match s {
        "cpu" => Ok(Device::Cpu),
        "auto" => {
            if candle_core::utils::cuda_is_available() {
                Ok(Device::new_cuda(0)?)
            } else if candle_core::utils::metal_is_available() {
                Ok(Device::new_metal(0)?)
            } else {
                Ok(Device::Cpu)
            }
        }
        "metal" => {
            if !candle_core::utils::metal_is_available() {
                bail!("--device metal: this build has no Metal support (build with `--features metal` on macOS)");
            }
            Ok(Device::new_metal(0)?)
        }
        s if s == "cuda" || s.starts_with("cuda:") => {
            let n: usize = match s.strip_prefix("cuda:") {
                Some(n) => n
                    .parse()
                    .map_err(|_| color_eyre::eyre::eyre!("--device {s}: expected cuda:N"))?,
                None => 0,
            };
            if !candle_core::utils::cuda_is_available() {
                bail!(
                    "--device {s}: this build has no CUDA support (build with `--features cuda`)"
                );
            }
            Ok(Device::new_cuda(n)?)
        }
        other => bail!("unknown --device `{other}`: use auto, cpu, cuda, cuda:N or metal"),
    }
}

/// Resolve `auto|f32|bf16|f16`: auto is f32 on CPU (fast gemm, exact statistics) and bf16 on GPUs.
pub fn parse_dtype(s: &str, device: &Device) -> Result<DType> {
    match s {
        "auto" => Ok(if device.is_cpu() {
            DType::F32
        } else {
            DType::BF16
        }),
        "f32" => Ok(DType::F32),
        "bf16" => Ok(DType::BF16),
        "f16" => Ok(DType::F16),
        other => bail!("unknown --dtype `{other}`: use auto, f32, bf16 or f16"),
    }
}

pub fn describe(device: &Device) -> String {
    match device {
        Device::Cpu => format!("cpu ({} threads)", candle_core::utils::get_num_threads()),
        Device::Cuda(_) => "cuda".into(),
        Device::Metal(_) => "metal".into(),
    }
}
