//! What a layer costs, so a collapse can ask whether a merged layer is faster than the layers it
//! replaces (TLC.md: merging two 3x3 convolutions into one 5x5 costs 25/18 of the MACs).
//!
//! [`CostTable`] holds measured medians of single convolutions run through the inference plan on
//! one machine (`tlc calibrate` writes it): kind, geometry, input size, batch, milliseconds.
//! [`CostTable::estimate`] predicts a layer that was not measured:
//! - **Its own kind only.** The kernels take different paths (pointwise GEMM, direct depthwise,
//!   im2col or shifted GEMMs for the rest) whose speed per MAC differs several-fold, so a layer is
//!   compared with measurements of its [`ConvKind`] only, and of the measured stride nearest its
//!   own (strided layers gather their patches differently).
//! - **Effective throughput, interpolated in log space.** Time is far from linear in any single
//!   dimension (few output channels waste SIMD lanes, small planes leave threads idle), but the
//!   effective rate, MACs per millisecond, varies smoothly with the layer's shape. Each
//!   measurement is a point in (ln output channels, ln input channels per group, ln kernel area,
//!   ln output pixels); the estimate is the layer's MACs divided by the inverse-distance-weighted
//!   mean of ln rate over the [`NEIGHBOURS`] nearest points. Outside the measured grid the rate
//!   stays a blend of the nearest measured ones, so time grows linearly in MACs there.
//! - **A per-layer floor.** Every step has a fixed cost (dispatch, thread wake-up, epilogue
//!   set-up) that no rate describes for layers smaller than the grid: an estimate never goes below
//!   the cheapest measurement of its kind (calibrate's grid holds a near-empty layer of each kind,
//!   whose time is that fixed cost). This is what makes one layer cheaper than two of half size.
//!
//! Without a table, [`CostModel::Macs`] compares multiply-accumulates: right for large layers on a
//! machine where every kernel runs near the same efficiency, blind to per-layer overhead.

use crate::error::{Error, Result};
use crate::graph::ConvSpec;
use crate::io::atomic::write_atomically;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;

/// The `format` field every cost table carries.
pub const TABLE_FORMAT: &str = "tlc-cost-table";
/// The layout version this code writes and reads.
pub const TABLE_VERSION: u32 = 1;
/// How many measurements an estimate interpolates between.
pub const NEIGHBOURS: usize = 4;

/// Which kernel path a convolution takes (the same rule as the kernels' dispatch).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConvKind {
    /// Any geometry through im2col or shifted GEMMs.
    Dense,
    /// One input channel per group: the direct depthwise kernel.
    Depthwise,
    /// 1x1, stride 1, no padding: one GEMM on the input as it lies.
    Pointwise,
}

impl ConvKind {
    pub const ALL: [ConvKind; 3] = [ConvKind::Dense, ConvKind::Depthwise, ConvKind::Pointwise];

    /// The path `spec` runs on.
    pub fn of(spec: &ConvSpec) -> ConvKind {
        if spec.kernel == [1, 1] && spec.stride == [1, 1] && spec.padding == [0, 0] {
            ConvKind::Pointwise
        } else if spec.in_ch / spec.groups.max(1) == 1 {
            ConvKind::Depthwise
        } else {
            ConvKind::Dense
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ConvKind::Dense => "dense",
            ConvKind::Depthwise => "depthwise",
            ConvKind::Pointwise => "pointwise",
        }
    }
}

/// One measured convolution: its geometry, the input it ran on, and the median time of the step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CostEntry {
    pub kind: ConvKind,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub groups: usize,
    pub in_ch: usize,
    pub out_ch: usize,
    pub in_hw: [usize; 2],
    pub batch: usize,
    /// Median milliseconds of the plan step (convolution with its bias).
    pub ms: f64,
}

impl CostEntry {
    /// The entry for `spec` run on `batch` inputs of `in_hw` pixels in `ms` milliseconds.
    pub fn new(spec: &ConvSpec, in_hw: [usize; 2], batch: usize, ms: f64) -> CostEntry {
        CostEntry {
            kind: ConvKind::of(spec),
            kernel: spec.kernel,
            stride: spec.stride,
            padding: spec.padding,
            groups: spec.groups,
            in_ch: spec.in_ch,
            out_ch: spec.out_ch,
            in_hw,
            batch,
            ms,
        }
    }

    /// The convolution measured (with a bias, as collapsed layers have).
    pub fn spec(&self) -> ConvSpec {
        ConvSpec {
            in_ch: self.in_ch,
            out_ch: self.out_ch,
            kernel: self.kernel,
            stride: self.stride,
            padding: self.padding,
            dilation: [1, 1],
            groups: self.groups,
            bias: true,
        }
    }

    /// Multiply-accumulates of the measured run.
    pub fn macs(&self) -> f64 {
        conv_macs(&self.spec(), self.in_hw, self.batch).unwrap_or(0) as f64
    }

    /// Why the entry cannot be a measurement, if it cannot.
    fn problem(&self) -> Option<String> {
        let s = self.spec();
        let dims = [self.groups, self.in_ch, self.out_ch, self.batch];
        if dims.contains(&0)
            || !self.in_ch.is_multiple_of(self.groups)
            || !self.out_ch.is_multiple_of(self.groups)
        {
            return Some(
                "channels, groups and batch must be positive, groups dividing both".into(),
            );
        }
        if conv_macs(&s, self.in_hw, self.batch).is_none() {
            return Some(format!(
                "kernel {:?} stride {:?} padding {:?} does not fit a {:?} input",
                self.kernel, self.stride, self.padding, self.in_hw
            ));
        }
        if !(self.ms.is_finite() && self.ms > 0.0) {
            return Some(format!("time {} ms is not a positive number", self.ms));
        }
        if ConvKind::of(&s) != self.kind {
            return Some(format!(
                "is called {} but its geometry runs as {}",
                self.kind.name(),
                ConvKind::of(&s).name()
            ));
        }
        None
    }
}

/// Output pixels of `spec` on an `in_hw` input, `None` if the kernel does not fit.
fn out_pixels(spec: &ConvSpec, in_hw: [usize; 2]) -> Option<usize> {
    let (oh, ow) = spec
        .params()
        .output_size(in_hw[0], in_hw[1], spec.kernel[0], spec.kernel[1])?;
    Some(oh * ow)
}

/// Multiply-accumulates of `spec` over `batch` inputs of `in_hw` pixels.
pub fn conv_macs(spec: &ConvSpec, in_hw: [usize; 2], batch: usize) -> Option<u64> {
    let per_pixel = spec.out_ch * spec.in_ch / spec.groups.max(1) * spec.kernel[0] * spec.kernel[1];
    Some((batch * out_pixels(spec, in_hw)? * per_pixel) as u64)
}

/// Where a layer sits among the measurements (see the module documentation).
fn features(spec: &ConvSpec, in_hw: [usize; 2], batch: usize) -> Option<[f64; 4]> {
    let ln = |v: usize| (v.max(1) as f64).ln();
    Some([
        ln(spec.out_ch),
        ln(spec.in_ch / spec.groups.max(1)),
        ln(spec.kernel[0] * spec.kernel[1]),
        ln(batch * out_pixels(spec, in_hw)?),
    ])
}

/// Measured convolution times of one machine (see the module documentation).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CostTable {
    /// Always [`TABLE_FORMAT`].
    pub format: String,
    pub version: u32,
    /// What the times were measured on (CPU, instruction set).
    pub machine: String,
    /// Worker threads of the kernels during the measurements.
    pub threads: usize,
    /// Samples per inference the table is for.
    pub batch: usize,
    pub entries: Vec<CostEntry>,
}

impl CostTable {
    /// A table of `entries`, checked (every kind measured, every entry a valid measurement).
    pub fn new(
        machine: impl Into<String>,
        threads: usize,
        batch: usize,
        entries: Vec<CostEntry>,
    ) -> Result<CostTable> {
        let t = CostTable {
            format: TABLE_FORMAT.into(),
            version: TABLE_VERSION,
            machine: machine.into(),
            threads,
            batch,
            entries,
        };
        t.check().map_err(|e| Error::invalid("cost table", e))?;
        Ok(t)
    }

    fn check(&self) -> std::result::Result<(), String> {
        if self.format != TABLE_FORMAT {
            return Err(format!("format `{}` is not `{TABLE_FORMAT}`", self.format));
        }
        if self.version != TABLE_VERSION {
            return Err(format!(
                "version {} is not one this tlc reads ({TABLE_VERSION}); run `tlc calibrate` again",
                self.version
            ));
        }
        if self.threads == 0 || self.batch == 0 {
            return Err("threads and batch must be at least 1".into());
        }
        for (i, e) in self.entries.iter().enumerate() {
            if let Some(p) = e.problem() {
                return Err(format!("entry {i}: {p}"));
            }
        }
        for kind in ConvKind::ALL {
            if !self.entries.iter().any(|e| e.kind == kind) {
                return Err(format!(
                    "no {} convolution measured; run `tlc calibrate` again",
                    kind.name()
                ));
            }
        }
        Ok(())
    }

    /// The table as JSON: the header fields one per line, then one line per entry.
    pub fn to_json(&self) -> String {
        let text = |s: &str| serde_json::to_string(s).expect("strings serialise");
        let entries: Vec<String> = self
            .entries
            .iter()
            .map(|e| serde_json::to_string(e).expect("entries serialise"))
            .collect();
        format!(
            "{{\n  \"format\": {},\n  \"version\": {},\n  \"machine\": {},\n  \"threads\": {},\n  \
             \"batch\": {},\n  \"entries\": [\n    {}\n  ]\n}}",
            text(&self.format),
            self.version,
            text(&self.machine),
            self.threads,
            self.batch,
            entries.join(",\n    ")
        )
    }

    /// A table from JSON, checked; `source` names it in errors.
    pub fn from_json(source: &str, json: &str) -> Result<CostTable> {
        let t: CostTable = serde_json::from_str(json)
            .map_err(|e| Error::format(source, format!("not a tlc cost table: {e}")))?;
        t.check().map_err(|e| Error::format(source, e))?;
        Ok(t)
    }

    /// Read and check the table at `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<CostTable> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        CostTable::from_json(&path.display().to_string(), &text)
    }

    /// Write the table to `path` atomically (an interrupted write leaves the old file whole).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let json = self.to_json();
        write_atomically(path, |w: &mut dyn Write| {
            w.write_all(json.as_bytes())
                .and_then(|_| w.write_all(b"\n"))
                .map_err(|e| Error::io(path, e))
        })
    }

    /// Estimated milliseconds of `spec` on `batch` inputs of `in_hw` pixels (see the module
    /// documentation); an error if the kernel does not fit the input.
    pub fn estimate(&self, spec: &ConvSpec, in_hw: [usize; 2], batch: usize) -> Result<f64> {
        let misfit = || {
            Error::invalid(
                "cost estimate",
                format!(
                    "kernel {:?} stride {:?} padding {:?} does not fit a {in_hw:?} input",
                    spec.kernel, spec.stride, spec.padding
                ),
            )
        };
        let (q, macs) = features(spec, in_hw, batch)
            .zip(conv_macs(spec, in_hw, batch))
            .ok_or_else(misfit)?;
        let kind = ConvKind::of(spec);
        let same_kind: Vec<&CostEntry> = self.entries.iter().filter(|e| e.kind == kind).collect();
        let floor = same_kind.iter().map(|e| e.ms).fold(f64::INFINITY, f64::min);
        let ln_stride = |s: [usize; 2]| ((s[0] * s[1]) as f64).ln();
        let stride_gap = |e: &&CostEntry| (ln_stride(e.stride) - ln_stride(spec.stride)).abs();
        let nearest_stride = same_kind
            .iter()
            .map(stride_gap)
            .fold(f64::INFINITY, f64::min);
        let mut near: Vec<(f64, f64, f64)> = same_kind
            .iter()
            .filter(|e| stride_gap(e) <= nearest_stride + 1e-9)
            .filter_map(|e| {
                let p = features(&e.spec(), e.in_hw, e.batch)?;
                let d2: f64 = p.iter().zip(&q).map(|(a, b)| (a - b) * (a - b)).sum();
                Some((d2, (e.macs() / e.ms).ln(), e.ms))
            })
            .collect();
        if near.is_empty() {
            return Err(Error::invalid(
                "cost estimate",
                format!("the cost table has no {} measurement", kind.name()),
            ));
        }
        near.sort_by(|a, b| a.0.total_cmp(&b.0));
        near.truncate(NEIGHBOURS);
        // A measurement of this very shape is the answer (the mean of repeats); otherwise Shepard's
        // inverse-square-distance weights.
        let exact: Vec<f64> = near.iter().filter(|p| p.0 < 1e-12).map(|p| p.2).collect();
        if !exact.is_empty() {
            return Ok(exact.iter().sum::<f64>() / exact.len() as f64);
        }
        let (sum_w, sum_wr) = near.iter().fold((0.0, 0.0), |(w, wr), &(d2, r, _)| {
            (w + 1.0 / d2, wr + r / d2)
        });
        Ok((macs as f64 / (sum_wr / sum_w).exp()).max(floor))
    }
}

/// How the collapse prices a layer.
#[derive(Clone, Debug)]
pub enum CostModel {
    /// Multiply-accumulates per sample (no measurements).
    Macs,
    /// Measured kernel times of one machine, at the table's batch.
    Measured(CostTable),
}

impl CostModel {
    /// The unit of [`CostModel::conv`]: milliseconds, or millions of MACs.
    pub fn unit(&self) -> &'static str {
        match self {
            CostModel::Macs => "MMAC",
            CostModel::Measured(_) => "ms",
        }
    }

    /// The cost of `spec` reading an input of `in_hw` pixels.
    pub fn conv(&self, spec: &ConvSpec, in_hw: [usize; 2]) -> Result<f64> {
        match self {
            CostModel::Macs => conv_macs(spec, in_hw, 1)
                .map(|m| m as f64 / 1e6)
                .ok_or_else(|| {
                    Error::invalid(
                        "cost estimate",
                        format!("kernel {:?} does not fit a {in_hw:?} input", spec.kernel),
                    )
                }),
            CostModel::Measured(t) => t.estimate(spec, in_hw, t.batch),
        }
    }
}
