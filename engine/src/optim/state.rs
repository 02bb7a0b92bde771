//! Optimizer state as named tensors and counters, so training can stop and resume bit for bit.
//!
//! Tensors are named `<field>.<param index>` (`momentum_buffer.0`, `exp_avg.3`, ...); counters
//! likewise (`step.3`). [`OptimState::save_into`] puts them in a [`TensorStore`] under a prefix
//! (tensors as `<prefix><name>`, everything else as JSON in the metadata key
//! `<prefix>optimizer`), so one checkpoint file can hold the model and its optimizer.

use crate::error::{Error, Result};
use crate::io::TensorStore;
use crate::tensor::Tensor;
use std::collections::BTreeMap;

/// A snapshot of an optimizer's state.
#[derive(Clone, Debug)]
pub struct OptimState {
    /// Which optimizer wrote it ("sgd", "adamw").
    pub kind: String,
    /// The learning rate at the time.
    pub lr: f64,
    /// How many parameters the state is for (0 before the first step).
    pub num_params: usize,
    /// Per-parameter buffers, named `<field>.<index>`.
    pub tensors: Vec<(String, Tensor)>,
    /// Per-parameter counters, named `<field>.<index>`.
    pub counters: BTreeMap<String, u64>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Scalars {
    kind: String,
    lr: f64,
    num_params: usize,
    counters: BTreeMap<String, u64>,
}

impl OptimState {
    /// The metadata key holding everything but the tensors.
    fn meta_key(prefix: &str) -> String {
        format!("{prefix}optimizer")
    }

    /// Write into `store`: tensors as `<prefix><name>`, the rest in metadata `<prefix>optimizer`.
    pub fn save_into(&self, store: &mut TensorStore, prefix: &str) {
        for (name, t) in &self.tensors {
            store.insert(format!("{prefix}{name}"), t.clone());
        }
        let scalars = Scalars {
            kind: self.kind.clone(),
            lr: self.lr,
            num_params: self.num_params,
            counters: self.counters.clone(),
        };
        let json = serde_json::to_string(&scalars).expect("plain data encodes");
        store.set_metadata(Self::meta_key(prefix), json);
    }

    /// Read back what [`OptimState::save_into`] wrote with the same `prefix` (every tensor whose
    /// name starts with `prefix` belongs to the state, so the prefix must set it apart).
    pub fn load_from(store: &TensorStore, prefix: &str) -> Result<OptimState> {
        let key = Self::meta_key(prefix);
        let raw = store
            .metadata_get(&key)
            .ok_or_else(|| Error::MissingTensor {
                name: format!("optimizer state (metadata `{key}`)"),
                source_name: store.source().to_string(),
            })?;
        let s: Scalars = serde_json::from_str(raw).map_err(|e| {
            Error::format(
                store.source(),
                format!("metadata `{key}` is not optimizer state: {e}"),
            )
        })?;
        let tensors = store
            .iter()
            .filter_map(|(n, t)| n.strip_prefix(prefix).map(|n| (n.to_string(), t.clone())))
            .collect();
        Ok(OptimState {
            kind: s.kind,
            lr: s.lr,
            num_params: s.num_params,
            tensors,
            counters: s.counters,
        })
    }

    /// Fail unless the state was written by an optimizer of kind `kind`.
    pub(crate) fn expect_kind(&self, kind: &str) -> Result<()> {
        if self.kind != kind {
            return Err(Error::invalid(
                "load_state",
                format!(
                    "state was saved by a `{}` optimizer, not `{kind}`",
                    self.kind
                ),
            ));
        }
        Ok(())
    }

    /// The tensor `<field>.<index>` entries, as (field, index, tensor), rejecting unknown fields
    /// and indices beyond `num_params`.
    pub(crate) fn indexed_tensors<'a>(
        &'a self,
        fields: &[&str],
    ) -> Result<Vec<(&'a str, usize, &'a Tensor)>> {
        self.tensors
            .iter()
            .map(|(name, t)| {
                let (f, i) = self.split(name, fields)?;
                Ok((f, i, t))
            })
            .collect()
    }

    /// The counter `<field>.<index>`.
    pub(crate) fn counter(&self, field: &str, i: usize) -> Result<u64> {
        let name = format!("{field}.{i}");
        self.counters
            .get(&name)
            .copied()
            .ok_or_else(|| Error::invalid("load_state", format!("no counter `{name}`")))
    }

    fn split<'a>(&self, name: &'a str, fields: &[&str]) -> Result<(&'a str, usize)> {
        let bad = || {
            Error::invalid(
                "load_state",
                format!(
                    "unexpected state entry `{name}` for a `{}` optimizer of {} parameters \
                     (expected {fields:?} followed by .<index>)",
                    self.kind, self.num_params
                ),
            )
        };
        let (f, i) = name.rsplit_once('.').ok_or_else(bad)?;
        let i: usize = i.parse().map_err(|_| bad())?;
        if !fields.contains(&f) || i >= self.num_params {
            return Err(bad());
        }
        Ok((f, i))
    }
}
