//! tlc checkpoints: one safetensors file that describes itself.
//!
//! Tensors: the model's parameters and buffers under their PyTorch `state_dict` names, and, for
//! a training checkpoint, the optimizer's state under [`OPTIM_PREFIX`]. Header metadata:
//! - `tlc.format`: the layout version ([`FORMAT`]);
//! - `tlc.arch`: the [`ArchSpec`] the network was built from (JSON);
//! - `tlc.graph`: the graph itself (JSON). Passes rewrite graphs (TLC removes activations and
//!   merges layers), so when present the graph is the truth and the spec only says where it began;
//! - `tlc.train`: the training state ([`TrainState`]: epochs done, configuration, normalisation,
//!   per-epoch history);
//! - `optim.optimizer`: the optimizer's scalars (see [`OptimState::save_into`]).
//!
//! A plain export (a torchvision `state_dict` saved with `safetensors.torch.save_file`) has none
//! of this metadata; it loads when the caller supplies the architecture. Files are written
//! atomically ([`TensorStore::save`] writes a temporary file and renames it over the target), so a
//! run killed while saving leaves the previous checkpoint intact.

use crate::error::{Error, Result};
use crate::train::TrainState;
use crate::zoo::{self, ArchSpec};
use std::path::{Path, PathBuf};
use tlc_engine::graph::Graph;
use tlc_engine::{Model, OptimState, TensorStore};

/// Metadata key of the layout version.
pub const FORMAT_KEY: &str = "tlc.format";
/// Metadata key of the architecture spec.
pub const ARCH_KEY: &str = "tlc.arch";
/// Metadata key of the graph.
pub const GRAPH_KEY: &str = "tlc.graph";
/// Metadata key of the training state.
pub const TRAIN_KEY: &str = "tlc.train";
/// Name prefix of the optimizer's tensors (and of its metadata key).
pub const OPTIM_PREFIX: &str = "optim.";
/// The layout version this code writes and reads.
pub const FORMAT: &str = "1";

/// A model with what tlc knows about it.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    pub model: Model,
    /// The architecture the model was built from (`None` for a hand-built graph).
    pub spec: Option<ArchSpec>,
    /// Training progress, present in checkpoints written by the training loop.
    pub train: Option<TrainState>,
    /// Optimizer state, for resuming.
    pub optim: Option<OptimState>,
}

/// Where a loaded checkpoint's graph came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GraphSource {
    /// The `tlc.graph` header entry.
    Stored,
    /// Rebuilt from the `tlc.arch` header entry.
    StoredSpec,
    /// Built from the architecture the caller gave (a plain export, or an explicit override).
    Given,
}

/// A loaded checkpoint and how its graph was obtained.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub checkpoint: Checkpoint,
    pub graph_source: GraphSource,
    pub path: PathBuf,
}

fn ckpt_err(path: &Path, detail: impl Into<String>) -> Error {
    Error::Checkpoint {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

/// A spec in one line, for messages: `resnet18-cifar (width 0.25, 1 input channel, 28x28, 10 classes)`.
pub fn describe(spec: &ArchSpec) -> String {
    format!(
        "{} (width {}, {} input channel{}, {}x{}, {} classes)",
        spec.arch.name(),
        spec.width,
        spec.in_ch,
        if spec.in_ch == 1 { "" } else { "s" },
        spec.image[0],
        spec.image[1],
        spec.classes
    )
}

impl Checkpoint {
    /// A checkpoint of `model` alone (no training state).
    pub fn of_model(model: Model, spec: Option<ArchSpec>) -> Checkpoint {
        Checkpoint {
            model,
            spec,
            train: None,
            optim: None,
        }
    }

    /// Everything as a store: tensors and header metadata.
    pub fn to_store(&self) -> TensorStore {
        let mut store = self.model.to_store();
        store.set_metadata(FORMAT_KEY, FORMAT);
        store.set_metadata(GRAPH_KEY, self.model.graph().to_json());
        if let Some(spec) = &self.spec {
            store.set_metadata(ARCH_KEY, spec.to_json());
        }
        if let Some(train) = &self.train {
            store.set_metadata(
                TRAIN_KEY,
                serde_json::to_string(train).expect("training state serialises"),
            );
        }
        if let Some(optim) = &self.optim {
            optim.save_into(&mut store, OPTIM_PREFIX);
        }
        store
    }

    /// Write the checkpoint to `path`, atomically (the old file stays whole until the new one is
    /// complete on disk).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        Ok(self.to_store().save(path)?)
    }

    /// Load `path`. Without `given`, the file must be a tlc checkpoint (it rebuilds itself from
    /// its header). With `given`, the network is built from that spec -- unless it equals the
    /// stored spec, when the stored graph is used (it may have been rewritten by passes) -- and
    /// the file's tensors must fit it: a missing tensor or a wrong shape is an error naming the
    /// first such tensor in network order.
    pub fn load(path: impl AsRef<Path>, given: Option<&ArchSpec>) -> Result<Loaded> {
        let path = path.as_ref();
        let store = TensorStore::load(path)?;
        Self::from_store(path, &store, given)
    }

    /// [`Checkpoint::load`] from a store already in memory (`path` is for messages).
    pub fn from_store(
        path: &Path,
        store: &TensorStore,
        given: Option<&ArchSpec>,
    ) -> Result<Loaded> {
        if let Some(v) = store.metadata_get(FORMAT_KEY) {
            if v != FORMAT {
                return Err(ckpt_err(
                    path,
                    format!("layout version {v} is not one this tlc reads ({FORMAT})"),
                ));
            }
        }
        let meta = |key: &str| store.metadata_get(key);
        let stored_spec = meta(ARCH_KEY)
            .map(ArchSpec::from_json)
            .transpose()
            .map_err(|e| ckpt_err(path, format!("header entry `{ARCH_KEY}`: {e}")))?;
        let stored_graph = meta(GRAPH_KEY)
            .map(Graph::from_json)
            .transpose()
            .map_err(|e| ckpt_err(path, format!("header entry `{GRAPH_KEY}`: {e}")))?;
        let train: Option<TrainState> = meta(TRAIN_KEY)
            .map(serde_json::from_str)
            .transpose()
            .map_err(|e| ckpt_err(path, format!("header entry `{TRAIN_KEY}`: {e}")))?;

        let build = |spec: &ArchSpec| -> Result<Graph> { Ok(zoo::build(spec)?.0) };
        let (graph, spec, source) =
            match (given, stored_spec, stored_graph) {
                (Some(g), Some(s), Some(graph)) if *g == s => (graph, Some(s), GraphSource::Stored),
                (Some(g), _, _) => (build(g)?, Some(g.clone()), GraphSource::Given),
                (None, spec, Some(graph)) => (graph, spec, GraphSource::Stored),
                (None, Some(s), None) => (build(&s)?, Some(s), GraphSource::StoredSpec),
                (None, None, None) => return Err(ckpt_err(
                    path,
                    "holds no tlc architecture metadata (a plain PyTorch/torchvision export?); \
                     give the architecture on the command line: --model and its options \
                     (--width, --in-ch, --classes, --image)",
                )),
            };
        let model = Model::from_store(graph, store, &[OPTIM_PREFIX]).map_err(|e| {
            let what = match (&spec, source) {
                (Some(s), GraphSource::Given) => describe(s),
                (Some(s), _) => format!("its stored graph of {}", describe(s)),
                (None, _) => "its stored graph".to_string(),
            };
            ckpt_err(path, format!("does not fit {what}: {e}"))
        })?;
        let optim = if store
            .metadata_get(&format!("{OPTIM_PREFIX}optimizer"))
            .is_some()
        {
            Some(OptimState::load_from(store, OPTIM_PREFIX)?)
        } else {
            None
        };
        Ok(Loaded {
            checkpoint: Checkpoint {
                model,
                spec,
                train,
                optim,
            },
            graph_source: source,
            path: path.to_path_buf(),
        })
    }
}
