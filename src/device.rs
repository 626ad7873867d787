//! Which device tensors live on. burn chooses the backend by device, so the rest of the code is
//! the same everywhere: the pure-Rust CPU backend (Flex, with our kernels) by default, and the
//! GPU backends in builds with the `wgpu` or `cuda` cargo feature. Our CPU kernels apply only on
//! the CPU device; elsewhere every operation is burn's own.

use std::fmt;
use std::str::FromStr;

use burn::tensor::{Device, Tensor};

use crate::error::{Error, Result, catch_panic};

/// A device as the user names it: `cpu`, `wgpu`, `cuda` or `cuda:N`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceSpec {
    #[default]
    Cpu,
    /// The best adapter wgpu finds (Vulkan, Metal or DX12; a software Vulkan driver counts).
    Wgpu,
    /// The NVIDIA GPU with this index.
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cpu" => Ok(DeviceSpec::Cpu),
            "wgpu" => Ok(DeviceSpec::Wgpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(i)) => Ok(DeviceSpec::Cuda(i)),
                _ => Err(Error::invalid(format!("unknown device {s:?} (cpu, wgpu, cuda or cuda:N)"))),
            },
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Wgpu => write!(f, "wgpu"),
            DeviceSpec::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// The CPU device (burn's pure-Rust Flex backend).
pub fn cpu() -> Device {
    Device::flex()
}

/// Opens the device `spec` names, checking that it computes: a build without the backend's
/// feature, or a machine without the driver, gets an error saying which, not a panic on the
/// first tensor.
pub fn open(spec: DeviceSpec) -> Result<Device> {
    match spec {
        DeviceSpec::Cpu => Ok(cpu()),
        #[cfg(feature = "wgpu")]
        DeviceSpec::Wgpu => probe(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice), spec),
        #[cfg(feature = "cuda")]
        DeviceSpec::Cuda(i) => probe(Device::cuda(i), spec),
        #[allow(unreachable_patterns)]
        _ => {
            let feature = if spec == DeviceSpec::Wgpu { "wgpu" } else { "cuda" };
            Err(Error::invalid(format!("device {spec}: this fineprune was built without the {feature} backend; build it with `cargo build --release --features {feature}`")))
        }
    }
}

/// `device` after one small computation on it, whose panic (no adapter, no driver) becomes an
/// error.
#[cfg_attr(not(any(feature = "wgpu", feature = "cuda")), allow(dead_code))]
fn probe(device: Device, spec: DeviceSpec) -> Result<Device> {
    let d = device.clone();
    match catch_panic(move || Tensor::<1>::from_floats([1.0, 2.0, 3.0], &d).sum().into_scalar::<f32>()) {
        Ok(6.0) => Ok(device),
        Ok(v) => Err(Error::invalid(format!("device {spec}: a test sum gave {v}, not 6"))),
        Err(panic) => {
            let hint = match spec {
                DeviceSpec::Cuda(_) => "is the NVIDIA driver and CUDA toolkit installed?",
                _ => "is a Vulkan, Metal or DX12 driver installed? (on Linux without a GPU, Mesa's lavapipe: apt install mesa-vulkan-drivers)",
            };
            Err(Error::invalid(format!("device {spec} does not work here ({}); {hint}", first_line(&panic.message))))
        }
    }
}

/// Runs `f`, work on the device `spec`. burn's GPU backends report a kernel or an allocation
/// that failed (most often: the device's memory ran out) by panicking, possibly long into a
/// run; on a GPU that panic becomes one error line naming the device and what to try. On the
/// CPU a panic is our bug and is left to unwind as it is.
pub fn guard<T>(spec: DeviceSpec, f: impl FnOnce() -> T) -> Result<T> {
    if spec == DeviceSpec::Cpu {
        return Ok(f());
    }
    catch_panic(f).map_err(|panic| {
        Error::invalid(format!(
            "device {spec} failed during the computation ({}); on a GPU this is most often its memory running out: try smaller batches (the command's --batch-size or --max-batch), or --device cpu",
            first_line(&panic.message)
        ))
    })
}

/// The first non-empty line of a panic message (GPU errors come with a chain of "Caused by:").
fn first_line(message: &str) -> &str {
    message.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("it panicked")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_parse_and_print_back() {
        for (s, d) in [("cpu", DeviceSpec::Cpu), ("wgpu", DeviceSpec::Wgpu), ("cuda:2", DeviceSpec::Cuda(2))] {
            assert_eq!(s.parse::<DeviceSpec>().unwrap(), d);
            assert_eq!(d.to_string(), s);
        }
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        for bad in ["gpu", "cuda:", "cuda:x", "CPU"] {
            assert!(bad.parse::<DeviceSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_panic_on_a_gpu_is_one_error_line_and_the_cpu_is_left_alone() {
        let err = guard(DeviceSpec::Cuda(1), || -> u8 { panic!("\nOut of memory\nCaused by: a buffer of 9 GiB") }).unwrap_err().to_string();
        assert!(err.starts_with("device cuda:1 failed during the computation (Out of memory)"), "{err}");
        assert!(err.contains("--batch-size") && !err.contains('\n'), "{err}");
        assert_eq!(guard(DeviceSpec::Wgpu, || 7).unwrap(), 7);
        assert_eq!(guard(DeviceSpec::Cpu, || 7).unwrap(), 7);
        let cpu_panic = std::panic::catch_unwind(|| guard(DeviceSpec::Cpu, || -> u8 { panic!("our bug") }));
        assert!(cpu_panic.is_err(), "a panic on the CPU is a bug to see, not a device error");
    }

    #[test]
    fn the_cpu_opens_and_a_missing_backend_says_which_feature() {
        assert!(open(DeviceSpec::Cpu).is_ok());
        #[cfg(not(feature = "wgpu"))]
        assert!(open(DeviceSpec::Wgpu).unwrap_err().to_string().contains("--features wgpu"));
        #[cfg(not(feature = "cuda"))]
        assert!(open(DeviceSpec::Cuda(0)).unwrap_err().to_string().contains("--features cuda"));
    }
}
