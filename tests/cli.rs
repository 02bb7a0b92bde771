//! The `tlc` binary end to end: real training on a Fashion-MNIST subset with an accuracy bar,
//! eval / info / infer on the checkpoint it writes, a run killed mid-epoch and resumed, and the
//! errors a user meets (missing or corrupt data, a checkpoint of another width, a plain export).
//!
//! Needs Fashion-MNIST in /usr/share/datasets/fashion-mnist (`apt-get install -y
//! dataset-fashion-mnist`; `.ci/run` installs it). Without it these tests fail, and the failure
//! shows tlc's error message, which names that command.

use std::path::Path;
use std::time::{Duration, Instant};
use tlc::engine::{Tensor, TensorStore};
use tlc_models::checkpoint::Checkpoint;
use tlc_models::data::fashion_mnist;
use tlc_models::train::EpochMetrics;

mod common;
use common::{fails, kill_at, ok, text, tlc, TempDir};

fn log(dir: &Path) -> Vec<EpochMetrics> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The number after `accuracy ` in `tlc eval`'s summary line, as a fraction.
fn eval_accuracy(stdout: &str) -> f64 {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("test: "))
        .unwrap_or_else(|| panic!("no summary in {stdout}"));
    let pct = line
        .rsplit("accuracy ")
        .next()
        .unwrap()
        .trim_end_matches('%');
    pct.parse::<f64>().unwrap() / 100.0
}

/// The smoke test: one epoch on 5000 Fashion-MNIST images with a ResNet-18 (CIFAR form) at an
/// eighth of torchvision's width (176k parameters), then the other commands on its checkpoint.
#[test]
fn train_a_small_resnet_on_fashion_mnist_then_eval_info_infer() {
    let dir = TempDir::new("smoke");
    let out = dir.path("run");
    let out_s = out.to_str().unwrap();
    let start = Instant::now();
    let stdout = ok(&[
        "train",
        "--model",
        "resnet18-cifar",
        "--width",
        "0.125",
        "--in-ch",
        "1",
        "--data",
        "fashion-mnist",
        "--epochs",
        "1",
        "--train-limit",
        "5000",
        "--val-fraction",
        "0",
        "--batch",
        "32",
        "--lr",
        "0.05",
        "--nesterov",
        "--weight-decay",
        "0",
        "--crop-padding",
        "0",
        "--hflip",
        "false",
        "--out",
        out_s,
    ]);
    eprintln!(
        "train took {:.1} s:\n{stdout}",
        start.elapsed().as_secs_f64()
    );
    let h = log(&out);
    assert_eq!(h.len(), 1);
    let acc = h[0].test_acc.expect("the test set is evaluated");
    // Measured 79.9 % (10 000 test images); chance is 10 %, a linear model needs many epochs
    // to pass 80 %.
    assert!(acc >= 0.75, "test accuracy {acc} after one epoch");
    assert!(h[0].train_loss < 1.5, "{:?}", h[0]);

    // eval reproduces the logged test accuracy from the checkpoint alone.
    let last = out.join("last.safetensors");
    let last_s = last.to_str().unwrap();
    let ev = ok(&["eval", "--checkpoint", last_s]);
    assert!((eval_accuracy(&ev) - acc).abs() < 1e-4, "{ev} vs {acc}");
    assert!(ev.contains("Ankle boot"), "{ev}");

    // info: the layer table with MACs, and the training state.
    let info = ok(&["info", "--checkpoint", last_s]);
    for want in [
        "resnet18-cifar (width 0.125, 1 input channel, 28x28, 10 classes)",
        "layer4.1.conv2",
        "MACs",
        "176,258 parameters",
        "1 of 1 epochs done",
        "optimizer state: sgd",
    ] {
        assert!(info.contains(want), "`{want}` missing from:\n{info}");
    }

    // infer on the first 64 test images: raw pixels in [0, 1] with --normalize, and the same
    // images normalised by hand without it, give the same logits; most predictions are right.
    let (_, test) = fashion_mnist::load(None).unwrap();
    let n = 64;
    let raw: Vec<f32> = test.pixels[..n * 784]
        .iter()
        .map(|&p| p as f32 / 255.0)
        .collect();
    let state = Checkpoint::load(&last, None)
        .unwrap()
        .checkpoint
        .train
        .unwrap();
    let (m, s) = (state.norm.mean[0], state.norm.std[0]);
    let normed: Vec<f32> = raw.iter().map(|v| (v - m) / s).collect();
    let mut logits = vec![];
    for (name, data, flag) in [("raw", raw, true), ("normed", normed, false)] {
        let input = dir.path(&format!("{name}.safetensors"));
        let output = dir.path(&format!("{name}-out.safetensors"));
        let mut st = TensorStore::new();
        st.insert("input", Tensor::from_vec(data, &[n, 1, 28, 28]).unwrap());
        st.save(&input).unwrap();
        let mut args = vec![
            "infer",
            "--checkpoint",
            last_s,
            "--input",
            input.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
            "--batch",
            "24",
        ];
        if flag {
            args.push("--normalize");
        }
        ok(&args);
        let y = TensorStore::load(&output)
            .unwrap()
            .get("output")
            .unwrap()
            .clone();
        assert_eq!(y.shape(), &[n, 10]);
        logits.push(y);
    }
    let (a, b) = (logits[0].to_vec(), logits[1].to_vec());
    assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-3));
    let right = logits[0]
        .argmax(1)
        .unwrap()
        .iter()
        .zip(&test.labels)
        .filter(|(p, l)| **p == **l as usize)
        .count();
    assert!(right as f64 >= 0.6 * n as f64, "{right}/{n} right");

    // A checkpoint of another width: the first tensor that does not fit is named.
    let e = fails(&[
        "eval",
        "--checkpoint",
        last_s,
        "--model",
        "resnet18-cifar",
        "--width",
        "0.25",
    ]);
    assert!(
        e.contains("conv1.weight") && e.contains("expected shape"),
        "{e}"
    );

    // A plain export (tensors only): needs the architecture, then works like the checkpoint.
    let plain = dir.path("plain.safetensors");
    let full = TensorStore::load(&last).unwrap();
    let tensors: TensorStore = full
        .iter()
        .filter(|(name, _)| !name.starts_with("optim."))
        .map(|(name, t)| (name.to_string(), t.clone()))
        .collect();
    tensors.save(&plain).unwrap();
    let plain_s = plain.to_str().unwrap();
    let e = fails(&["info", "--checkpoint", plain_s]);
    assert!(e.contains("--model"), "{e}");
    let spec = [
        "--model",
        "resnet18-cifar",
        "--width",
        "0.125",
        "--in-ch",
        "1",
        "--classes",
        "10",
        "--image",
        "28",
    ];
    let info = ok(&[&["info", "--checkpoint", plain_s], &spec[..]].concat());
    assert!(info.contains("176,258 parameters"), "{info}");
    // Without stored normalisation eval uses the data's; the network is the same.
    let ev = ok(&[
        &["eval", "--checkpoint", plain_s, "--data", "fashion-mnist"],
        &spec[..],
    ]
    .concat());
    assert!((eval_accuracy(&ev) - acc).abs() < 0.02, "{ev} vs {acc}");
}

/// Kill a run in the middle of its second epoch, resume it, and check it finishes all epochs
/// having lost only the interrupted one.
#[test]
fn a_run_killed_mid_epoch_resumes_and_finishes() {
    let dir = TempDir::new("resume");
    let out = dir.path("run");
    let out_s = out.to_str().unwrap().to_string();
    let args = [
        "train",
        "--model",
        "resnet18-cifar",
        "--width",
        "0.0625",
        "--data",
        "fashion-mnist",
        "--epochs",
        "3",
        "--train-limit",
        "2000",
        "--test-limit",
        "500",
        "--batch",
        "32",
        "--lr",
        "0.05",
        "--progress",
        "plain",
        "--out",
        &out_s,
    ];
    let threaded = [&args[..], &["--threads", "2"]].concat();
    kill_at(&threaded, Duration::from_secs(600), |line| {
        // "epoch 2/3 batch 12/56: ..." before the epoch's last batch.
        let mid_epoch_2 = line
            .strip_prefix("epoch 2/3 batch ")
            .and_then(|r| r.split(':').next())
            .and_then(|r| r.split_once('/'))
            .is_some_and(|(b, n)| b != n);
        mid_epoch_2 && out.join("last.safetensors").exists()
    });

    // The checkpoint holds epoch 1, whole; the log agrees.
    let ckpt = Checkpoint::load(out.join("last.safetensors"), None).unwrap();
    assert_eq!(ckpt.checkpoint.train.unwrap().epochs_done, 1);
    assert_eq!(log(&out).len(), 1);

    // A new run into the same directory is refused; --resume continues with the stored options.
    let e = fails(&args);
    assert!(e.contains("--resume"), "{e}");
    let e = fails(&["train", "--out", &out_s, "--resume", "--lr", "0.1"]);
    assert!(e.contains("lr (stored 0.05, given 0.1)"), "{e}");
    let stdout = ok(&["train", "--out", &out_s, "--resume"]);
    assert!(stdout.contains("resuming"), "{stdout}");
    let h = log(&out);
    assert_eq!(h.iter().map(|m| m.epoch).collect::<Vec<_>>(), vec![1, 2, 3]);
    let done = Checkpoint::load(out.join("last.safetensors"), None).unwrap();
    assert_eq!(done.checkpoint.train.unwrap().epochs_done, 3);
    assert!(h[2].test_acc.unwrap() > 0.6, "{:?}", h[2]);
    // Finished: resuming again is a no-op; more --epochs extends the run.
    let again = ok(&["train", "--out", &out_s, "--resume"]);
    assert!(again.contains("already finished 3 of 3"), "{again}");
}

/// VGG's five 2x2 pools do not fit 28x28 images: the error says how to pad them, a run with
/// `--pad-to 32` trains, and `eval` pads the test images the same way from the checkpoint alone.
#[test]
fn small_images_are_padded_for_vgg_and_eval_pads_alike() {
    let dir = TempDir::new("pad");
    let out = dir.path("run");
    let base = [
        "train",
        "--model",
        "vgg16-bn-cifar",
        "--width",
        "0.0625",
        "--in-ch",
        "1",
        "--epochs",
        "1",
        "--train-limit",
        "1000",
        "--batch",
        "50",
        "--progress",
        "quiet",
        "--out",
        out.to_str().unwrap(),
    ];
    let e = fails(&base);
    assert!(e.contains("--pad-to 32"), "{e}");
    ok(&[&base[..], &["--pad-to", "32"]].concat());
    let h = log(&out);
    let acc = h[0].test_acc.expect("the test set is evaluated");
    let last = out.join("last.safetensors");
    let info = ok(&["info", "--checkpoint", last.to_str().unwrap()]);
    assert!(info.contains("32x32"), "{info}");
    // Unpadded 28x28 images could not even pass the network; the loss pins the same inputs.
    let ev = ok(&["eval", "--checkpoint", last.to_str().unwrap()]);
    assert!((eval_accuracy(&ev) - acc).abs() < 1e-4, "{ev} vs {acc}");
    let loss = h[0].test_loss.expect("the test loss is logged");
    assert!(ev.contains(&format!("loss {loss:.4}")), "{ev} vs {loss}");
}

#[test]
fn missing_or_corrupt_data_is_a_clean_error() {
    let dir = TempDir::new("data");
    let out = dir.path("run");
    let base = ["train", "--model", "resnet18-cifar", "--width", "0.0625"];
    let missing = dir.path("nowhere");
    let e = fails(
        &[
            &base[..],
            &[
                "--data",
                missing.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ],
        ]
        .concat(),
    );
    assert!(
        e.contains("apt-get install -y dataset-fashion-mnist"),
        "{e}"
    );

    // IDX files whose image file is truncated.
    let idx = dir.path("idx");
    std::fs::create_dir_all(&idx).unwrap();
    let header = |magic: u32, dims: &[u32]| -> Vec<u8> {
        let mut v = magic.to_be_bytes().to_vec();
        dims.iter().for_each(|d| v.extend(d.to_be_bytes()));
        v
    };
    for prefix in ["train", "t10k"] {
        let mut images = header(0x0803, &[10, 28, 28]);
        images.extend(vec![0u8; 10 * 784 - 100]);
        let mut labels = header(0x0801, &[10]);
        labels.extend([1u8; 10]);
        std::fs::write(idx.join(format!("{prefix}-images-idx3-ubyte")), images).unwrap();
        std::fs::write(idx.join(format!("{prefix}-labels-idx1-ubyte")), labels).unwrap();
    }
    let e = fails(
        &[
            &base[..],
            &[
                "--data",
                idx.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ],
        ]
        .concat(),
    );
    assert!(e.contains("train-images-idx3-ubyte"), "{e}");

    // A CIFAR-10 directory with a batch of the wrong length.
    let cifar = dir.path("cifar");
    std::fs::create_dir_all(&cifar).unwrap();
    std::fs::write(cifar.join("data_batch_1.bin"), vec![0u8; 3073 * 2 + 5]).unwrap();
    let e = fails(
        &[
            &base[..],
            &[
                "--data",
                cifar.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ],
        ]
        .concat(),
    );
    assert!(
        e.contains("data_batch_1.bin") && e.contains("whole number"),
        "{e}"
    );
    assert!(!out.join("last.safetensors").exists());
}

#[test]
fn demo_learns_and_bad_arguments_are_reported() {
    let out = ok(&["demo", "--epochs", "3", "--images", "1500"]);
    let last = out
        .lines()
        .find(|l| l.starts_with("after training"))
        .unwrap_or_else(|| panic!("{out}"));
    let acc: f64 = last
        .rsplit(' ')
        .next()
        .unwrap()
        .trim_end_matches('%')
        .parse()
        .unwrap();
    assert!(acc > 50.0, "{out}");
    let e = fails(&["eval", "--checkpoint", "/nonexistent.safetensors"]);
    assert!(e.contains("/nonexistent.safetensors"), "{e}");
    // Unknown model names are clap usage errors listing the zoo.
    let out = tlc(&["train", "--model", "resnet19", "--out", "/tmp/x"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("resnet18-cifar"));
}
