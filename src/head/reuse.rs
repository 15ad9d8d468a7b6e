//! A head reused instead of refitted: a head file made from the same recipe (the same cache
//! contents, attribute and solver settings) holds exactly the head a refit would give, as both
//! solvers are deterministic for a seed. `retrain reproduce` re-runs reuse their heads.

use std::path::Path;

use serde::Serialize;

use super::onnx::HeadFile;
use super::{ClassWeight, HeadInfo, HeadOptions, Solver};
use crate::cache::Cache;

/// What decides a head.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recipe {
    /// The cache's identity and contents (rows and the digest of their image names); not its path.
    pub model_sha256: String,
    pub output: String,
    pub preprocess: String,
    pub source: String,
    pub rows: usize,
    pub paths_sha256: String,
    pub attribute: String,
    pub solver: Solver,
    pub params: serde_json::Value,
    pub seed: u64,
    pub standardized: bool,
    pub class_weight: ClassWeight,
    pub validation_percent: f64,
}

impl Recipe {
    /// The recipe of training a head on `cache` with `opts`.
    pub fn asked(cache: &Cache, opts: &HeadOptions) -> Recipe {
        let params = match opts.solver {
            Solver::Sgd => serde_json::to_value(&opts.sgd),
            Solver::Linfa => serde_json::to_value(&opts.linfa),
            Solver::Finetune => Ok(serde_json::Value::Null),
        };
        Recipe {
            model_sha256: cache.model_sha256.clone(),
            output: cache.output.clone(),
            preprocess: cache.preprocess.clone(),
            source: cache.source.clone(),
            rows: cache.paths.len(),
            paths_sha256: super::paths_sha256(&cache.paths),
            attribute: opts.attribute.clone(),
            solver: opts.solver,
            params: params.unwrap_or(serde_json::Value::Null),
            seed: opts.seed,
            standardized: opts.standardize,
            class_weight: opts.class_weight,
            validation_percent: opts.validation_percent.unwrap_or(opts.solver.default_validation_percent()),
        }
    }

    /// The recipe a head was made from.
    pub fn of(info: &HeadInfo) -> Recipe {
        let c = &info.cache;
        Recipe {
            model_sha256: c.model_sha256.clone(),
            output: c.output.clone(),
            preprocess: c.preprocess.clone(),
            source: c.source.clone(),
            rows: c.rows,
            paths_sha256: c.paths_sha256.clone(),
            attribute: info.attribute.clone(),
            solver: info.solver,
            params: info.params.clone(),
            seed: info.seed,
            standardized: info.standardized,
            class_weight: info.class_weight,
            validation_percent: info.validation_percent,
        }
    }
}

/// The head at `path`, if there is one made from the recipe of `opts` on `cache`.
pub fn reusable(path: &Path, cache: &Cache, opts: &HeadOptions) -> Option<HeadFile> {
    let head = HeadFile::read(path).ok()?;
    (Recipe::of(&head.info) == Recipe::asked(cache, opts)).then_some(head)
}
