//! ONNX Runtime: finding the C library, choosing the execution provider, building sessions.
//!
//! The library is loaded at run time (ort's `load-dynamic`), from `ORT_DYLIB_PATH` or from the
//! project-local copy that `scripts/setup.sh` extracts from the onnxruntime PyPI wheel.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context, Result};
use ort::ep;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;

/// The library file name inside the onnxruntime 1.31.1 wheel.
pub const ORT_LIBRARY: &str = "libonnxruntime.so.1.31.1";

/// Where inference runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// ONNX Runtime's CPU execution provider.
    Cpu,
    /// The CUDA execution provider on GPU N; never falls back to the CPU.
    Cuda(i32),
}

impl std::str::FromStr for Device {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse::<i32>) {
                Some(Ok(id)) if id >= 0 => Ok(Device::Cuda(id)),
                _ => bail!("unknown device '{s}': expected cpu, cuda or cuda:N"),
            },
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(id) => write!(f, "cuda:{id}"),
        }
    }
}

/// How sessions are built. Defaults are chosen for throughput on a dedicated machine.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Where the session runs.
    pub device: Device,
    /// Threads inside one operator; `None` = every core (ORT's own default, made explicit).
    pub intra_threads: Option<usize>,
    /// ORT_ENABLE_ALL: constant folding, fusions (Conv+Relu, ...), layout transforms.
    pub optimization: GraphOptimizationLevel,
}

impl SessionConfig {
    /// On the CPU, one intra-op thread per core.
    pub fn cpu() -> Self {
        SessionConfig::new(Device::Cpu)
    }

    /// On `device`, one intra-op thread per core, every graph optimisation.
    pub fn new(device: Device) -> Self {
        SessionConfig { device, intra_threads: None, optimization: GraphOptimizationLevel::Level3 }
    }

    fn threads(&self) -> usize {
        self.intra_threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
    }
}

static ENVIRONMENT: OnceLock<std::result::Result<(ort::environment::Environment, PathBuf), String>> = OnceLock::new();

/// Loads the ONNX Runtime library once per process and returns the path it came from.
pub fn environment(device: Device) -> Result<&'static (ort::environment::Environment, PathBuf)> {
    ENVIRONMENT
        .get_or_init(|| {
            let path = find_library(device).map_err(|e| format!("{e:#}"))?;
            let builder = ort::init_from(&path).map_err(|e| {
                format!("cannot load ONNX Runtime from {}: {e}. Run scripts/setup.sh or point ORT_DYLIB_PATH at libonnxruntime.so", path.display())
            })?;
            let env = builder.with_name("retrain").build().map_err(|e| e.to_string())?;
            Ok((env, path))
        })
        .as_ref()
        .map_err(|e| anyhow!("{e}"))
}

/// `ORT_DYLIB_PATH`, else `.ort/{cpu,gpu}/` under the current folder or above the executable.
pub fn find_library(device: Device) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        bail!("ORT_DYLIB_PATH={} is not a file", p.display());
    }
    let flavour = match device {
        Device::Cpu => "cpu",
        Device::Cuda(_) => "gpu",
    };
    let relative = Path::new(".ort").join(flavour).join(ORT_LIBRARY);
    for base in search_roots() {
        let candidate = base.join(&relative);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    let hint = match device {
        Device::Cpu => "scripts/setup.sh",
        Device::Cuda(_) => "scripts/setup.sh --gpu (onnxruntime-gpu wheel)",
    };
    bail!(
        "ONNX Runtime library not found: looked for {} in the current folder and above the executable. \
         Run {hint}, or set ORT_DYLIB_PATH to a {ORT_LIBRARY}",
        relative.display()
    )
}

fn search_roots() -> Vec<PathBuf> {
    let mut roots = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        roots.push(cwd);
    }
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).map(Path::to_path_buf));
    }
    roots
}

/// Builds a session on the requested device. CUDA never falls back to CPU silently.
pub fn session(model: &Path, config: &SessionConfig) -> Result<Session> {
    crate::onnx::external::check(model)?;
    environment(config.device)?;
    let mut builder = Session::builder(&environment(config.device)?.0)
        .map_err(|e| anyhow!("{e}"))?
        .with_optimization_level(config.optimization)
        .map_err(|e| anyhow!("{e}"))?
        .with_intra_threads(config.threads())
        .map_err(|e| anyhow!("{e}"))?
        .with_inter_threads(1)
        .map_err(|e| anyhow!("{e}"))?;
    if let Device::Cuda(id) = config.device {
        builder = builder
            .with_execution_providers([ep::CUDA::default().with_device_id(id).build().error_on_failure()])
            .map_err(|e| anyhow!("CUDA execution provider unavailable for {}: {e}", model.display()))?;
    }
    builder.commit_from_file(model).map_err(|e| anyhow!("{e}")).with_context(|| format!("cannot load ONNX model {}", model.display()))
}

/// A one-line statement of where inference runs, printed by every command that runs a model.
pub fn describe_provider(config: &SessionConfig) -> String {
    let lib = ENVIRONMENT.get().and_then(|r| r.as_ref().ok()).map(|(_, p)| p.display().to_string()).unwrap_or_default();
    match config.device {
        Device::Cpu => format!("execution provider: CPUExecutionProvider ({} intra-op threads, graph optimisation all; {lib})", config.threads()),
        Device::Cuda(id) => format!("execution provider: CUDAExecutionProvider (device {id}, CPU fallback disabled; {lib})"),
    }
}

/// Runs `session` on one tensor (float32 or uint8 pixels) and returns the named float32 outputs, each as
/// (shape, values), in the order asked for.
pub fn run_f32<T: ort::value::PrimitiveTensorElementType + std::fmt::Debug + Clone + 'static>(
    session: &mut Session,
    input: &str,
    shape: &[usize],
    data: Vec<T>,
    outputs: &[String],
) -> Result<Vec<(Vec<usize>, Vec<f32>)>> {
    let tensor = ort::value::Tensor::from_array((shape.to_vec(), data)).map_err(|e| anyhow!("{e}"))?;
    let selector = outputs.iter().fold(ort::session::OutputSelector::no_default(), |s, name| s.with(name));
    let options = ort::session::RunOptions::new().map_err(|e| anyhow!("{e}"))?.with_outputs(selector);
    let values = session.run_with_options(ort::inputs![input => tensor], &options).map_err(|e| anyhow!("{e}"))?;
    outputs
        .iter()
        .map(|name| {
            let (shape, data) = values[name.as_str()].try_extract_tensor::<f32>().map_err(|e| anyhow!("output {name}: {e}"))?;
            Ok((shape.iter().map(|&d| d as usize).collect(), data.to_vec()))
        })
        .collect()
}
