//! `tlc infer`: run a checkpoint in evaluation mode on the tensor `input` (NCHW f32) of a
//! safetensors file and write the logits as `output`.

use super::{existing_file, load_checkpoint, network_line, CliError, DataShape, ModelArgs, Result};
use clap::Args;
use std::path::PathBuf;
use tlc_engine::{no_grad, Mode, Rng, Tensor, TensorStore};

#[derive(Args, Debug)]
pub struct InferArgs {
    /// The checkpoint (a tlc checkpoint, or a plain safetensors export with --model ...).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// A safetensors file holding the tensor `input`, shape [N, C, H, W].
    #[arg(long)]
    pub input: PathBuf,
    /// Where to write the logits, the tensor `output` of shape [N, classes].
    #[arg(long)]
    pub output: PathBuf,
    /// The input holds pixels in [0, 1]: apply the checkpoint's training normalisation first
    /// (otherwise the input is fed to the network as it is).
    #[arg(long)]
    pub normalize: bool,
    /// Images per forward pass (bounds memory on large inputs).
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    #[command(flatten)]
    pub model: ModelArgs,
}

pub fn run(args: InferArgs) -> Result<()> {
    let path = existing_file(&args.checkpoint, "--checkpoint")?;
    let input_path = existing_file(&args.input, "--input")?;
    if args.batch == 0 {
        return Err(CliError::Usage("--batch must be at least 1".into()));
    }
    let inputs = TensorStore::load(&input_path)?;
    let x = inputs.get("input")?.to_f32();
    if x.rank() != 4 {
        return Err(CliError::Usage(format!(
            "tensor `input` of {} has shape {:?}; expected [N, C, H, W]",
            input_path.display(),
            x.shape()
        )));
    }
    let data = (x.shape()[2] == x.shape()[3]).then(|| DataShape {
        channels: x.shape()[1],
        side: x.shape()[2],
        classes: None,
    });
    let store = TensorStore::load(&path)?;
    let loaded = load_checkpoint(&path, &store, &args.model, data)?;
    eprintln!("{}", network_line(&loaded));
    let ckpt = loaded.checkpoint;
    let x = if args.normalize {
        let norm = ckpt.train.as_ref().map(|t| &t.norm).ok_or_else(|| {
            CliError::Usage("--normalize: the checkpoint stores no training normalisation".into())
        })?;
        let c = x.shape()[1];
        if norm.mean.len() != c {
            return Err(CliError::Usage(format!(
                "--normalize: the checkpoint normalises {} channels, the input has {c}",
                norm.mean.len()
            )));
        }
        let plane = x.shape()[2] * x.shape()[3];
        let mut v = x.to_vec();
        for (i, px) in v.iter_mut().enumerate() {
            let ch = (i / plane) % c;
            *px = (*px - norm.mean[ch]) / norm.std[ch];
        }
        Tensor::from_vec(v, x.shape())?
    } else {
        x
    };
    let n = x.shape()[0];
    let mut model = ckpt.model;
    let mut rng = Rng::new(0);
    let mut parts = Vec::new();
    no_grad(|| -> Result<()> {
        for start in (0..n).step_by(args.batch) {
            let end = (start + args.batch).min(n);
            let chunk = x.slice(0, start, end, 1)?.contiguous();
            parts.push(model.forward(&chunk, Mode::Eval, &mut rng)?);
        }
        Ok(())
    })?;
    let out = match parts.len() {
        0 => {
            return Err(CliError::Usage(format!(
                "tensor `input` of {} holds no images",
                input_path.display()
            )))
        }
        1 => parts.pop().expect("one part"),
        _ => Tensor::concat(&parts.iter().collect::<Vec<_>>(), 0)?,
    };
    let mut result = TensorStore::new();
    result.insert("output", out.detach());
    result.set_metadata("tlc.checkpoint", path.display().to_string());
    result.save(&args.output)?;
    outln!(
        "wrote {}: output {:?} (logits)",
        args.output.display(),
        out.shape()
    );
    Ok(())
}
