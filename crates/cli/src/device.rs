//! `--device` parsing.
use anyhow::{bail, Context, Result};
use candle_core::Device;

/// `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(s: &str) -> Result<Device> {
    match s {
        "cpu" => Ok(Device::Cpu),
        _ if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal = match s.strip_prefix("cuda:") {
                Some(n) => n
                    .parse::<usize>()
                    .with_context(|| format!("bad CUDA ordinal in `{s}`"))?,
                None => 0,
            };
            if !candle_core::utils::cuda_is_available() {
                bail!("--device {s}: this digitlab was built without CUDA; rebuild with `--features cuda` on a machine with the CUDA toolkit");
            }
            Device::new_cuda(ordinal).with_context(|| format!("opening CUDA device {ordinal}"))
        }
        _ => bail!("unknown device `{s}`: use cpu, cuda or cuda:N"),
    }
}
