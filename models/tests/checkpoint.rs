//! Checkpoints: a tlc checkpoint rebuilds itself from its header; a plain export needs the
//! architecture; tensors that do not fit are named; the stored graph wins over the spec; saving
//! is atomic.

use std::path::{Path, PathBuf};
use tlc_engine::graph::{Graph, Op};
use tlc_engine::{Model, Optimizer, Rng, Sgd, SgdConfig, Tensor, TensorStore};
use tlc_models::checkpoint::{
    Checkpoint, GraphSource, ARCH_KEY, FORMAT_KEY, GRAPH_KEY, OPTIM_PREFIX, TRAIN_KEY,
};
use tlc_models::train::{init_model, Normalization, TrainConfig, TrainState};
use tlc_models::zoo::{Arch, ArchSpec};

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("tlc-ckpt-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn entries(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn spec(width: f32) -> ArchSpec {
    ArchSpec {
        width,
        in_ch: 1,
        classes: 10,
        image: [28, 28],
        ..ArchSpec::new(Arch::Resnet18Cifar)
    }
}

fn values(m: &Model) -> Vec<(String, Vec<f32>)> {
    m.to_store()
        .iter()
        .map(|(n, t)| (n.to_string(), t.to_vec()))
        .collect()
}

/// A model after one SGD step with momentum, so the optimizer has state and BN statistics moved.
fn stepped(width: f32) -> (Model, Sgd) {
    let mut m = init_model(&spec(width), 3).unwrap();
    let mut rng = Rng::new(1);
    let x = Tensor::randn(&[4, 1, 28, 28], &mut rng);
    let loss = m
        .forward(&x, tlc_engine::Mode::Train, &mut rng)
        .unwrap()
        .cross_entropy(&[1, 2, 3, 4], 0.0)
        .unwrap();
    let grads = loss.backward().unwrap();
    let mut opt = Sgd::new(SgdConfig::new(0.1).momentum(0.9)).unwrap();
    opt.step(m.params_mut(), &grads).unwrap();
    (m, opt)
}

fn train_state() -> TrainState {
    TrainState {
        epochs_done: 2,
        config: TrainConfig {
            data: "fashion-mnist".into(),
            ..TrainConfig::default()
        },
        norm: Normalization {
            mean: vec![0.286],
            std: vec![0.353],
        },
        history: vec![],
        best: None,
    }
}

#[test]
fn a_tlc_checkpoint_rebuilds_itself_with_its_training_and_optimizer_state() {
    let dir = TempDir::new("roundtrip");
    let (model, opt) = stepped(0.125);
    let ckpt = Checkpoint {
        model: model.clone(),
        spec: Some(spec(0.125)),
        train: Some(train_state()),
        optim: Some(opt.state()),
    };
    let p = dir.path("last.safetensors");
    ckpt.save(&p).unwrap();

    // The header describes the file.
    let store = TensorStore::load(&p).unwrap();
    for key in [FORMAT_KEY, ARCH_KEY, GRAPH_KEY, TRAIN_KEY] {
        assert!(store.metadata_get(key).is_some(), "{key} missing");
    }
    assert_eq!(
        ArchSpec::from_json(store.metadata_get(ARCH_KEY).unwrap()).unwrap(),
        spec(0.125)
    );
    assert!(store.names().any(|n| n.starts_with(OPTIM_PREFIX)));

    let back = Checkpoint::load(&p, None).unwrap();
    assert_eq!(back.graph_source, GraphSource::Stored);
    let c = back.checkpoint;
    assert_eq!(c.spec, Some(spec(0.125)));
    assert_eq!(c.model.graph(), model.graph());
    assert_eq!(values(&c.model), values(&model));
    assert_eq!(c.train, Some(train_state()));
    // The optimizer state restores into a fresh optimizer and gives back the same state.
    let mut fresh = Sgd::new(SgdConfig::new(0.1).momentum(0.9)).unwrap();
    fresh.load_state(c.optim.as_ref().unwrap()).unwrap();
    let (a, b) = (fresh.state(), opt.state());
    assert_eq!(a.num_params, b.num_params);
    assert_eq!(a.tensors.len(), b.tensors.len());
    for ((na, ta), (nb, tb)) in a.tensors.iter().zip(&b.tensors) {
        assert_eq!((na, ta.to_vec()), (nb, tb.to_vec()));
    }
    // Giving the same architecture explicitly changes nothing.
    let again = Checkpoint::load(&p, Some(&spec(0.125))).unwrap();
    assert_eq!(again.graph_source, GraphSource::Stored);
}

#[test]
fn a_plain_export_loads_when_the_architecture_is_given() {
    let dir = TempDir::new("plain");
    let (model, _) = stepped(0.125);
    let p = dir.path("export.safetensors");
    // What `safetensors.torch.save_file(model.state_dict(), ...)` writes: tensors, no metadata.
    model.to_store().save(&p).unwrap();
    let e = Checkpoint::load(&p, None).unwrap_err().to_string();
    assert!(
        e.contains("--model") && e.contains("export.safetensors"),
        "{e}"
    );
    let l = Checkpoint::load(&p, Some(&spec(0.125))).unwrap();
    assert_eq!(l.graph_source, GraphSource::Given);
    assert_eq!(values(&l.checkpoint.model), values(&model));
    assert!(l.checkpoint.train.is_none() && l.checkpoint.optim.is_none());
}

#[test]
fn another_width_or_architecture_is_an_error_naming_the_first_mismatched_tensor() {
    let dir = TempDir::new("mismatch");
    let p = dir.path("w0125.safetensors");
    Checkpoint::of_model(stepped(0.125).0, Some(spec(0.125)))
        .save(&p)
        .unwrap();
    let e = Checkpoint::load(&p, Some(&spec(0.25)))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`conv1.weight`") && e.contains("[16, 1, 3, 3]") && e.contains("[8, 1, 3, 3]"),
        "{e}"
    );
    assert!(e.contains("width 0.25"), "{e}");
    // ResNet-34 has every tensor of ResNet-18 up to its third block of layer1.
    let r34 = ArchSpec {
        arch: Arch::Resnet34Cifar,
        ..spec(0.125)
    };
    let e = Checkpoint::load(&p, Some(&r34)).unwrap_err().to_string();
    assert!(e.contains("`layer1.2.conv1.weight`"), "{e}");
    // And the other way: tensors the architecture has no place for.
    let p34 = dir.path("r34.safetensors");
    Checkpoint::of_model(init_model(&r34, 0).unwrap(), Some(r34.clone()))
        .save(&p34)
        .unwrap();
    let e = Checkpoint::load(&p34, Some(&spec(0.125)))
        .unwrap_err()
        .to_string();
    assert!(e.contains("`layer1.2.conv1.weight`"), "{e}");
}

#[test]
fn the_stored_graph_is_the_truth_after_a_rewrite() {
    let dir = TempDir::new("graph");
    let (mut model, _) = stepped(0.125);
    // A pass replaced an activation by the identity (as TLC does).
    let mut g: Graph = model.graph().clone();
    let id = g.find("layer1.0.relu1").unwrap();
    g.node_mut(id).op = Op::Identity;
    model.set_graph(g.clone()).unwrap();
    let p = dir.path("rewritten.safetensors");
    Checkpoint::of_model(model.clone(), Some(spec(0.125)))
        .save(&p)
        .unwrap();
    for given in [None, Some(spec(0.125))] {
        let l = Checkpoint::load(&p, given.as_ref()).unwrap();
        assert_eq!(l.checkpoint.model.graph(), &g);
    }
    // The rewritten graph computes something else than the architecture rebuilt from the spec.
    let x = Tensor::randn(&[2, 1, 28, 28], &mut Rng::new(5));
    let stored = Checkpoint::load(&p, None).unwrap().checkpoint.model;
    let rebuilt = Model::from_store(
        tlc_models::zoo::build(&spec(0.125)).unwrap().0,
        &model.to_store(),
        &[],
    )
    .unwrap();
    assert_ne!(
        stored.eval(&x).unwrap().to_vec(),
        rebuilt.eval(&x).unwrap().to_vec()
    );
    assert_eq!(
        stored.eval(&x).unwrap().to_vec(),
        model.eval(&x).unwrap().to_vec()
    );
}

#[test]
fn bad_header_entries_are_named() {
    let dir = TempDir::new("header");
    let (model, _) = stepped(0.125);
    let p = dir.path("bad.safetensors");
    for (key, value, expect) in [
        (ARCH_KEY, "{\"arch\": \"resnet19\"}", ARCH_KEY),
        (GRAPH_KEY, "[1, 2]", GRAPH_KEY),
        (TRAIN_KEY, "{}", TRAIN_KEY),
        (FORMAT_KEY, "99", "layout version 99"),
    ] {
        let mut store = Checkpoint::of_model(model.clone(), Some(spec(0.125))).to_store();
        store.set_metadata(key, value);
        store.save(&p).unwrap();
        let e = Checkpoint::load(&p, None).unwrap_err().to_string();
        assert!(e.contains(expect) && e.contains("bad.safetensors"), "{e}");
    }
}

#[test]
fn saving_replaces_the_file_whole_and_leaves_no_temporary() {
    let dir = TempDir::new("atomic");
    let p = dir.path("last.safetensors");
    let (a, _) = stepped(0.125);
    Checkpoint::of_model(a.clone(), Some(spec(0.125)))
        .save(&p)
        .unwrap();
    // Load (memory-mapped), then overwrite while the old mapping is alive: the old tensors keep
    // their values, the file holds the new model, and only the one file is left.
    let old = Checkpoint::load(&p, None).unwrap().checkpoint.model;
    let b = init_model(&spec(0.125), 99).unwrap();
    Checkpoint::of_model(b.clone(), Some(spec(0.125)))
        .save(&p)
        .unwrap();
    assert_eq!(values(&old), values(&a));
    let new = Checkpoint::load(&p, None).unwrap().checkpoint.model;
    assert_eq!(values(&new), values(&b));
    assert_eq!(dir.entries(), vec!["last.safetensors".to_string()]);
    // A save that cannot complete leaves nothing behind.
    let e = Checkpoint::of_model(b, None)
        .save(Path::new(&dir.path("missing/dir/x.safetensors")))
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing/dir"), "{e}");
    assert_eq!(dir.entries(), vec!["last.safetensors".to_string()]);
}
