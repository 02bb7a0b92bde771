//! The model zoo: architectures as graph builders whose node names are torchvision's module paths,
//! so a torchvision `state_dict` saved as safetensors loads unchanged.
//!
//! An architecture is described by an [`ArchSpec`] (name and options); tlc's checkpoints store it
//! in their header so a file describes its own network.

mod mobilenet;
mod resnet;
mod vgg;

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use tlc_engine::graph::{ActKind, BatchNormSpec, ConvSpec, Graph, LinearInit, NodeId, Op};
use tlc_engine::Model;

/// The architectures the CLI knows, by their command-line names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Arch {
    #[serde(rename = "resnet18")]
    Resnet18,
    #[serde(rename = "resnet34")]
    Resnet34,
    #[serde(rename = "resnet18-cifar")]
    Resnet18Cifar,
    #[serde(rename = "resnet34-cifar")]
    Resnet34Cifar,
    #[serde(rename = "vgg16-bn")]
    Vgg16Bn,
    #[serde(rename = "vgg16-bn-cifar")]
    Vgg16BnCifar,
    #[serde(rename = "mobilenet-v2")]
    MobilenetV2,
}

impl Arch {
    /// Every architecture, in the order `--help` lists them.
    pub const ALL: [Arch; 7] = [
        Arch::Resnet18,
        Arch::Resnet34,
        Arch::Resnet18Cifar,
        Arch::Resnet34Cifar,
        Arch::Vgg16Bn,
        Arch::Vgg16BnCifar,
        Arch::MobilenetV2,
    ];

    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Resnet18 => "resnet18",
            Arch::Resnet34 => "resnet34",
            Arch::Resnet18Cifar => "resnet18-cifar",
            Arch::Resnet34Cifar => "resnet34-cifar",
            Arch::Vgg16Bn => "vgg16-bn",
            Arch::Vgg16BnCifar => "vgg16-bn-cifar",
            Arch::MobilenetV2 => "mobilenet-v2",
        }
    }

    /// The architecture called `name` on the command line.
    pub fn parse(name: &str) -> Result<Arch> {
        Arch::ALL
            .into_iter()
            .find(|a| a.name() == name)
            .ok_or_else(|| {
                let known: Vec<&str> = Arch::ALL.iter().map(|a| a.name()).collect();
                Error::Config(format!(
                    "unknown model `{name}`; known: {}",
                    known.join(", ")
                ))
            })
    }

    /// The input side the architecture was designed for (32 for CIFAR forms, 224 otherwise).
    pub fn default_image_size(self) -> usize {
        match self {
            Arch::Resnet18Cifar | Arch::Resnet34Cifar | Arch::Vgg16BnCifar => 32,
            _ => 224,
        }
    }
}

/// An architecture and its options: everything needed to rebuild the graph.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ArchSpec {
    pub arch: Arch,
    /// Multiplier of torchvision's channel widths (ResNet-18 at 0.25 has 16 base channels).
    pub width: f32,
    pub classes: usize,
    pub in_ch: usize,
    /// Input height and width the graph is built for.
    pub image: [usize; 2],
}

impl ArchSpec {
    /// `arch` at full width, 1000 classes (10 for CIFAR forms), 3 input channels, its default size.
    pub fn new(arch: Arch) -> ArchSpec {
        let s = arch.default_image_size();
        let classes = if s == 32 { 10 } else { 1000 };
        ArchSpec {
            arch,
            width: 1.0,
            classes,
            in_ch: 3,
            image: [s, s],
        }
    }

    /// Check the options make sense before building.
    pub fn check(&self) -> Result<()> {
        if !(self.width > 0.0 && self.width.is_finite()) {
            return Err(Error::Config(format!(
                "--width must be positive, got {}",
                self.width
            )));
        }
        if self.classes == 0 || self.in_ch == 0 || self.image[0] == 0 || self.image[1] == 0 {
            return Err(Error::Config(format!(
                "classes, input channels and image size must be positive, got {} classes, {} channels, {:?}",
                self.classes, self.in_ch, self.image
            )));
        }
        Ok(())
    }

    /// The spec as JSON (stored in checkpoint headers).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("specs serialise")
    }

    /// A spec from JSON.
    pub fn from_json(json: &str) -> Result<ArchSpec> {
        serde_json::from_str(json)
            .map_err(|e| Error::Config(format!("cannot parse the architecture: {e}")))
    }
}

/// The graph of `spec` and how its linear layers are initialised (torchvision's choice per family).
pub fn build(spec: &ArchSpec) -> Result<(Graph, LinearInit)> {
    spec.check()?;
    let (graph, init) = match spec.arch {
        Arch::Resnet18 | Arch::Resnet34 | Arch::Resnet18Cifar | Arch::Resnet34Cifar => {
            (resnet::build(spec), LinearInit::Uniform)
        }
        // torchvision initialises these classifiers with normal(0, 0.01) weights, zero biases.
        Arch::Vgg16Bn | Arch::Vgg16BnCifar => (vgg::build(spec), LinearInit::Normal(0.01)),
        Arch::MobilenetV2 => (mobilenet::build(spec), LinearInit::Normal(0.01)),
    };
    graph.validate().map_err(|e| {
        Error::Config(format!(
            "{} does not fit a {}x{}x{} input: {e}{}",
            spec.arch.name(),
            spec.in_ch,
            spec.image[0],
            spec.image[1],
            // Five 2x2 pools need a side of at least 32; small images can be zero-padded.
            if spec.image[0] < 32 {
                " (for small images, pad them when training: --pad-to 32)"
            } else {
                ""
            }
        ))
    })?;
    Ok((graph, init))
}

/// `arch` at `width` on `image`x`image` inputs with `classes` outputs, initialised from `seed`,
/// then given random batch-norm statistics, affine parameters and biases
/// ([`tlc_engine::testing::randomize_model`]): a fresh model's identity batch-norms and zero
/// shifts would hide mistakes in passes, plans and TLC's channel decisions. For tests and benches.
pub fn randomized(
    arch: Arch,
    width: f32,
    image: usize,
    classes: usize,
    seed: u64,
) -> Result<Model> {
    let spec = ArchSpec {
        width,
        image: [image, image],
        classes,
        ..ArchSpec::new(arch)
    };
    let (g, init) = build(&spec)?;
    let mut rng = tlc_engine::Rng::new(seed);
    let mut m = Model::init(g, init, &mut rng)?;
    tlc_engine::testing::randomize_model(&mut m, false, &mut rng);
    Ok(m)
}

/// `channels * width`, rounded, at least 1.
pub(crate) fn scaled(channels: usize, width: f32) -> usize {
    ((channels as f32 * width).round() as usize).max(1)
}

/// Helpers the builders share: conv (+ BN (+ activation)) with torchvision's eps and momentum.
pub(crate) struct Builder {
    pub g: Graph,
}

impl Builder {
    pub fn new(spec: &ArchSpec) -> Builder {
        Builder {
            g: Graph::new(&[spec.in_ch, spec.image[0], spec.image[1]]),
        }
    }

    pub fn conv(&mut self, name: &str, spec: ConvSpec, x: NodeId) -> NodeId {
        self.g.push(name, Op::Conv2d(spec), &[x])
    }

    pub fn bn(&mut self, name: &str, channels: usize, x: NodeId) -> NodeId {
        self.g.push(
            name,
            Op::BatchNorm(BatchNormSpec {
                channels,
                eps: 1e-5,
                momentum: 0.1,
            }),
            &[x],
        )
    }

    pub fn act(&mut self, name: &str, act: ActKind, x: NodeId) -> NodeId {
        self.g.push(name, Op::Activation { act }, &[x])
    }
}

#[cfg(test)]
mod tests;
