//! Device and dtype selection. The errors are typed ([`DeviceError`]): the command line names
//! its flags in them, the explorer's start shows them as they are.

use std::fmt;

use candle_core::{DType, Device};
use color_eyre::eyre::{bail, Result};

/// Why a device or dtype name was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceError {
    /// Not a device name.
    UnknownDevice(String),
    /// `cuda:N` with something other than a number after the colon.
    BadCudaIndex(String),
    /// A CUDA device was asked for; this build has no CUDA support.
    NoCuda(String),
    /// Metal was asked for; this build has no Metal support.
    NoMetal,
    /// Not a dtype name.
    UnknownDtype(String),
}

impl DeviceError {
    /// Whether the device (true) or the dtype setting was refused.
    pub fn is_device(&self) -> bool {
        !matches!(self, DeviceError::UnknownDtype(_))
    }

    /// The message with the setting named by `name` (`device`/`dtype` here, flags on the
    /// command line).
    pub fn render(&self, name: &str) -> String {
        match self {
            DeviceError::UnknownDevice(s) => {
                format!("unknown {name} `{s}`: use auto, cpu, cuda, cuda:N or metal")
            }
            DeviceError::BadCudaIndex(s) => format!("{name} {s}: expected cuda:N"),
            DeviceError::NoCuda(s) => format!(
                "{name} {s}: this build has no CUDA support (build with the cargo feature `cuda`)"
            ),
            DeviceError::NoMetal => format!(
                "{name} metal: this build has no Metal support (build with the cargo feature `metal` on macOS)"
            ),
            DeviceError::UnknownDtype(s) => {
                format!("unknown {name} `{s}`: use auto, f32, bf16 or f16")
            }
        }
    }
}

impl fmt::Display for DeviceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = if self.is_device() { "device" } else { "dtype" };
        f.write_str(&self.render(name))
    }
}

impl std::error::Error for DeviceError {}

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
                bail!(DeviceError::NoMetal);
            }
            Ok(Device::new_metal(0)?)
        }
        s if s == "cuda" || s.starts_with("cuda:") => {
            let n: usize = match s.strip_prefix("cuda:") {
                Some(n) => n
                    .parse()
                    .map_err(|_| DeviceError::BadCudaIndex(s.to_string()))?,
                None => 0,
            };
            if !candle_core::utils::cuda_is_available() {
                bail!(DeviceError::NoCuda(s.to_string()));
            }
            Ok(Device::new_cuda(n)?)
        }
        other => bail!(DeviceError::UnknownDevice(other.to_string())),
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
        other => bail!(DeviceError::UnknownDtype(other.to_string())),
    }
}

pub fn describe(device: &Device) -> String {
    match device {
        Device::Cpu => format!("cpu ({} threads)", candle_core::utils::get_num_threads()),
        Device::Cuda(_) => "cuda".into(),
        Device::Metal(_) => "metal".into(),
    }
}
