//! TensorStore round trips, cross-checks with the reference safetensors implementation and with a
//! file PyTorch wrote, and one test per kind of malformed file.

use super::atomic::tests::TempDir;
use super::TensorStore;
use crate::error::Error;
use crate::storage::{DType, Storage};
use crate::tensor::Tensor;
use crate::testing::fixtures_dir;
use half::{bf16, f16};
use std::path::Path;

fn seq(n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|i| (i as f32 - 3.0) * scale).collect()
}

fn sample_store() -> TensorStore {
    let mut s = TensorStore::new();
    s.insert(
        "layer.weight",
        Tensor::from_vec(seq(12, 0.25), &[3, 4]).unwrap(),
    );
    s.insert(
        "half",
        Tensor::from_vec(seq(5, 0.5), &[5])
            .unwrap()
            .to_dtype(DType::F16),
    );
    s.insert("layer.bias", Tensor::from_vec(seq(3, 1.5), &[3]).unwrap());
    s.insert(
        "brain",
        Tensor::from_vec(seq(6, 0.125), &[2, 3])
            .unwrap()
            .to_dtype(DType::BF16),
    );
    s.insert("scalar", Tensor::scalar(7.5));
    s.insert("empty", Tensor::zeros(&[0, 4]));
    s.set_metadata("format", "pt");
    s.set_metadata("note", "quote \" and unicode é");
    s
}

fn assert_same(a: &TensorStore, b: &TensorStore) {
    assert_eq!(a.names().collect::<Vec<_>>(), b.names().collect::<Vec<_>>());
    for (name, t) in a.iter() {
        let u = b.get(name).unwrap();
        assert_eq!(t.shape(), u.shape(), "{name}");
        assert_eq!(t.dtype(), u.dtype(), "{name}");
        let (x, y) = (t.to_vec(), u.to_vec());
        assert!(
            x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()),
            "{name}: {x:?} vs {y:?}"
        );
    }
    assert_eq!(a.metadata(), b.metadata());
}

/// A file of the given header JSON (padded as the writers do) followed by `data`.
fn craft(header: &str, data: &[u8]) -> Vec<u8> {
    let mut h = header.as_bytes().to_vec();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut f = (h.len() as u64).to_le_bytes().to_vec();
    f.extend_from_slice(&h);
    f.extend_from_slice(data);
    f
}

fn load_bytes(dir: &TempDir, name: &str, bytes: &[u8]) -> crate::error::Result<TensorStore> {
    let p = dir.path(name);
    std::fs::write(&p, bytes).unwrap();
    TensorStore::load(&p)
}

/// The load error for `bytes`, which must be a format error naming the file.
fn format_error(bytes: &[u8]) -> String {
    let dir = TempDir::new("io-bad");
    let err = load_bytes(&dir, "bad.safetensors", bytes).unwrap_err();
    assert!(
        matches!(err, Error::Format { .. }),
        "not a format error: {err}"
    );
    let msg = err.to_string();
    assert!(msg.contains("bad.safetensors"), "file not named: {msg}");
    msg
}

const ONE_F32: &str = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;

// ----- round trips -------------------------------------------------------------------------------

#[test]
fn save_load_round_trip_keeps_order_types_values_and_metadata() {
    let dir = TempDir::new("io-rt");
    let p = dir.path("m.safetensors");
    let s = sample_store();
    s.save(&p).unwrap();
    let back = TensorStore::load(&p).unwrap();
    assert_same(&s, &back);
    assert_eq!(back.len(), 6);
    assert_eq!(back.source(), p.display().to_string());
    // f32 tensors come straight from the map: every f32 starts aligned because the writer lays
    // out the widest types first.
    for name in ["layer.weight", "layer.bias", "scalar"] {
        assert!(
            matches!(back.get(name).unwrap().storage(), Storage::Mapped(_)),
            "{name} was copied"
        );
    }
    assert!(matches!(
        back.get("half").unwrap().storage(),
        Storage::F16(_)
    ));
    assert!(matches!(
        back.get("brain").unwrap().storage(),
        Storage::BF16(_)
    ));
    // Saving what was loaded gives the same bytes.
    let p2 = dir.path("m2.safetensors");
    back.save(&p2).unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), std::fs::read(&p2).unwrap());
    assert_eq!(dir.entries(), vec!["m.safetensors", "m2.safetensors"]);
}

#[test]
fn to_f32_widens_half_tensors_only() {
    let dir = TempDir::new("io-widen");
    let p = dir.path("m.safetensors");
    sample_store().save(&p).unwrap();
    let mut s = TensorStore::load(&p).unwrap();
    let before: Vec<Vec<f32>> = s.iter().map(|(_, t)| t.to_vec()).collect();
    s.to_f32();
    assert!(s.iter().all(|(_, t)| t.dtype() == DType::F32));
    assert!(matches!(
        s.get("layer.weight").unwrap().storage(),
        Storage::Mapped(_)
    ));
    let after: Vec<Vec<f32>> = s.iter().map(|(_, t)| t.to_vec()).collect();
    assert_eq!(before, after);
}

#[test]
fn saves_views_by_their_logical_values() {
    let dir = TempDir::new("io-view");
    let p = dir.path("v.safetensors");
    let t = Tensor::from_vec(seq(6, 1.0), &[2, 3]).unwrap();
    let tt = t.transpose(0, 1).unwrap();
    let h = tt.to_dtype(DType::F16).transpose(0, 1).unwrap();
    let s: TensorStore = [("t", tt.clone()), ("h", h.clone())].into_iter().collect();
    s.save(&p).unwrap();
    let back = TensorStore::load(&p).unwrap();
    assert_eq!(back.get("t").unwrap().to_vec(), tt.to_vec());
    assert_eq!(back.get("h").unwrap().to_vec(), h.to_vec());
    assert_eq!(back.get("h").unwrap().shape(), &[2, 3]);
}

#[test]
fn replacing_a_mapped_file_leaves_loaded_tensors_intact() {
    let dir = TempDir::new("io-replace");
    let p = dir.path("ckpt.safetensors");
    sample_store().save(&p).unwrap();
    let old = TensorStore::load(&p).unwrap();
    let w_before = old.get("layer.weight").unwrap().to_vec();
    let mut new = old.clone();
    new.insert("layer.weight", Tensor::full(&[3, 4], 9.0));
    new.save(&p).unwrap();
    assert_eq!(old.get("layer.weight").unwrap().to_vec(), w_before);
    assert_eq!(
        TensorStore::load(&p)
            .unwrap()
            .get("layer.weight")
            .unwrap()
            .to_vec(),
        vec![9.0; 12]
    );
}

#[test]
fn misaligned_f32_data_is_copied() {
    // One f16 element first puts the f32 tensor at data offset 2: not 4-byte aligned.
    let header = r#"{"h":{"dtype":"F16","shape":[1],"data_offsets":[0,2]},"a":{"dtype":"F32","shape":[2],"data_offsets":[2,10]}}"#;
    let mut data = f16::from_f32(0.5).to_bits().to_le_bytes().to_vec();
    data.extend(1.25f32.to_le_bytes());
    data.extend((-4.0f32).to_le_bytes());
    let dir = TempDir::new("io-misaligned");
    let s = load_bytes(&dir, "m.safetensors", &craft(header, &data)).unwrap();
    assert_eq!(s.names().collect::<Vec<_>>(), vec!["h", "a"]);
    let a = s.get("a").unwrap();
    assert!(matches!(a.storage(), Storage::F32(_)));
    assert_eq!(a.to_vec(), vec![1.25, -4.0]);
    assert_eq!(s.get("h").unwrap().to_vec(), vec![0.5]);
}

#[test]
fn converts_i64_and_f64_and_rejects_u8() {
    let header = r#"{"position_ids":{"dtype":"I64","shape":[1,3],"data_offsets":[0,24]},"d":{"dtype":"F64","shape":[1],"data_offsets":[24,32]}}"#;
    let mut data: Vec<u8> = [0i64, 1, 2].iter().flat_map(|v| v.to_le_bytes()).collect();
    data.extend(0.25f64.to_le_bytes());
    let dir = TempDir::new("io-convert");
    let s = load_bytes(&dir, "c.safetensors", &craft(header, &data)).unwrap();
    assert_eq!(s.get("position_ids").unwrap().to_vec(), vec![0.0, 1.0, 2.0]);
    assert_eq!(s.get("position_ids").unwrap().shape(), &[1, 3]);
    assert_eq!(s.get("d").unwrap().to_vec(), vec![0.25]);

    let bad = craft(
        r#"{"mask":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}"#,
        &[1, 0],
    );
    let msg = format_error(&bad);
    assert!(msg.contains("`mask`") && msg.contains("U8"), "{msg}");
}

// ----- the store API -----------------------------------------------------------------------------

#[test]
fn store_api() {
    let mut s = sample_store();
    assert_eq!(s.len(), 6);
    assert!(!s.is_empty() && s.contains("scalar") && !s.contains("nope"));
    assert_eq!(s.source(), "memory");
    let err = s.get("encoder.layer.0.weight").unwrap_err();
    assert!(matches!(err, Error::MissingTensor { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("encoder.layer.0.weight") && msg.contains("memory"),
        "{msg}"
    );
    assert!(s.try_get("nope").is_none());

    assert_eq!(s.get_shaped("layer.weight", &[3, 4]).unwrap().numel(), 12);
    let err = s.get_shaped("layer.weight", &[4, 3]).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("layer.weight") && msg.contains("[4, 3]") && msg.contains("[3, 4]"),
        "{msg}"
    );

    // Replacement keeps the position; a new name goes last.
    let old = s.insert("layer.bias", Tensor::zeros(&[3])).unwrap();
    assert_eq!(old.to_vec(), vec![-4.5, -3.0, -1.5]);
    assert!(s.insert("new", Tensor::ones(&[1])).is_none());
    assert_eq!(
        s.names().collect::<Vec<_>>(),
        vec![
            "layer.weight",
            "half",
            "layer.bias",
            "brain",
            "scalar",
            "empty",
            "new"
        ]
    );
    assert_eq!(s.remove("half").unwrap().dtype(), DType::F16);
    assert!(s.remove("half").is_none());
    assert!(matches!(s.take("half"), Err(Error::MissingTensor { .. })));
    assert_eq!(s.take("new").unwrap().to_vec(), vec![1.0]);
    assert_eq!(
        s.iter().map(|(n, t)| (n, t.numel())).collect::<Vec<_>>(),
        vec![
            ("layer.weight", 12),
            ("layer.bias", 3),
            ("brain", 6),
            ("scalar", 1),
            ("empty", 0)
        ]
    );

    assert_eq!(s.metadata_get("format"), Some("pt"));
    assert_eq!(s.set_metadata("format", "tlc").as_deref(), Some("pt"));
    assert_eq!(s.metadata_get("format"), Some("tlc"));
    assert_eq!(s.metadata().len(), 2);
    assert_eq!(s.metadata_get("missing"), None);
}

#[test]
fn missing_tensor_error_names_the_file() {
    let dir = TempDir::new("io-missing");
    let p = dir.path("weights.safetensors");
    sample_store().save(&p).unwrap();
    let s = TensorStore::load(&p).unwrap();
    let msg = s.get("fc.weight").unwrap_err().to_string();
    assert!(
        msg.contains("fc.weight") && msg.contains("weights.safetensors"),
        "{msg}"
    );
}

#[test]
fn the_metadata_key_is_not_a_tensor_name() {
    let dir = TempDir::new("io-reserved");
    let s: TensorStore = [("__metadata__", Tensor::ones(&[1]))].into_iter().collect();
    let msg = s.save(dir.path("r.safetensors")).unwrap_err().to_string();
    assert!(msg.contains("reserved"), "{msg}");
    assert!(dir.entries().is_empty());
}

// ----- the reference implementation --------------------------------------------------------------

#[test]
fn the_reference_reader_accepts_our_files() {
    let dir = TempDir::new("io-ref-read");
    let p = dir.path("m.safetensors");
    let s = sample_store();
    s.save(&p).unwrap();
    let bytes = std::fs::read(&p).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(
        meta.metadata().as_ref().unwrap()["note"],
        "quote \" and unicode é"
    );
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.len(), s.len());
    let w = st.tensor("layer.weight").unwrap();
    assert_eq!(w.dtype(), safetensors::Dtype::F32);
    assert_eq!(w.shape(), &[3, 4]);
    let vals: Vec<f32> = w
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(vals, seq(12, 0.25));
    let h = st.tensor("brain").unwrap();
    assert_eq!(h.dtype(), safetensors::Dtype::BF16);
    let vals: Vec<f32> = h
        .data()
        .chunks_exact(2)
        .map(|b| bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
        .collect();
    assert_eq!(vals, s.get("brain").unwrap().to_vec());
}

#[test]
fn we_read_the_reference_writers_files() {
    use safetensors::tensor::TensorView;
    let w: Vec<u8> = seq(6, 0.5).iter().flat_map(|v| v.to_le_bytes()).collect();
    let h: Vec<u8> = [1.0f32, 2.0, 3.0]
        .iter()
        .flat_map(|&v| f16::from_f32(v).to_bits().to_le_bytes())
        .collect();
    let views = vec![
        (
            "w",
            TensorView::new(safetensors::Dtype::F32, vec![2, 3], &w).unwrap(),
        ),
        (
            "h",
            TensorView::new(safetensors::Dtype::F16, vec![3], &h).unwrap(),
        ),
    ];
    let meta = std::collections::HashMap::from([("k".to_string(), "v".to_string())]);
    let bytes = safetensors::serialize(views, &Some(meta)).unwrap();
    let dir = TempDir::new("io-ref-write");
    let s = load_bytes(&dir, "r.safetensors", &bytes).unwrap();
    assert_eq!(s.get("w").unwrap().to_vec(), seq(6, 0.5));
    assert!(matches!(s.get("w").unwrap().storage(), Storage::Mapped(_)));
    assert_eq!(s.get("h").unwrap().to_vec(), vec![1.0, 2.0, 3.0]);
    assert_eq!(s.metadata_get("k"), Some("v"));
}

#[test]
fn pytorch_parity_loads_a_file_written_by_torch() {
    let path = fixtures_dir().join("io.safetensors");
    let s = TensorStore::load(&path).unwrap();
    assert_eq!(s.metadata_get("format"), Some("pt"));
    assert_eq!(
        s.metadata_get("writer"),
        Some("safetensors.torch.save_file")
    );
    let expect = [
        ("raw/f32_matrix", DType::F32),
        ("raw/f32_scalar", DType::F32),
        ("raw/f32_empty", DType::F32),
        ("raw/f16_vec", DType::F16),
        ("raw/bf16_matrix", DType::BF16),
        ("raw/f64_vec", DType::F32),
        ("raw/position_ids", DType::F32),
        ("raw/i32_vec", DType::F32),
    ];
    for (name, dtype) in expect {
        let t = s.get(name).unwrap();
        assert_eq!(t.dtype(), dtype, "{name}");
        // Each raw tensor has an f32 reference computed by torch (`.float()`).
        let want = s.get(&name.replace("raw/", "ref/")).unwrap();
        assert_eq!(t.shape(), want.shape(), "{name}");
        let (a, b) = (t.to_vec(), want.to_vec());
        assert!(
            a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{name}: {a:?} vs {b:?}"
        );
    }
    assert!(matches!(
        s.get("raw/f32_matrix").unwrap().storage(),
        Storage::Mapped(_)
    ));
    // Rejected types are named: the fixture has none, but its uint8 twin does.
    let msg = TensorStore::load(fixtures_dir().join("io_u8.safetensors"))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("`mask`") && msg.contains("U8"), "{msg}");
}

// ----- malformed files ---------------------------------------------------------------------------

#[test]
fn rejects_an_empty_or_too_short_file() {
    let msg = format_error(&[]);
    assert!(msg.contains("0 bytes long"), "{msg}");
    let msg = format_error(&[1, 2, 3]);
    assert!(msg.contains("3 bytes long"), "{msg}");
}

#[test]
fn rejects_a_header_length_beyond_the_file() {
    let mut f = craft(ONE_F32, &[0; 8]);
    f[..8].copy_from_slice(&10_000u64.to_le_bytes());
    let msg = format_error(&f);
    assert!(msg.contains("10000") && msg.contains("truncated"), "{msg}");
    let mut f = vec![0u8; 12];
    f[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    let msg = format_error(&f);
    assert!(msg.contains("header length"), "{msg}");
}

#[test]
fn rejects_truncated_data() {
    let f = craft(ONE_F32, &[0; 8]);
    let msg = format_error(&f[..f.len() - 3]);
    assert!(msg.contains("`a`") && msg.contains("truncated"), "{msg}");
}

#[test]
fn rejects_corrupt_header_json() {
    let msg = format_error(&craft(r#"{"a":{"dtype":"F32","shape":[2],"#, &[0; 8]));
    assert!(msg.contains("corrupt header JSON"), "{msg}");
    let msg = format_error(&craft("[1, 2]", &[]));
    assert!(msg.contains("corrupt header JSON"), "{msg}");
    let mut f = craft(ONE_F32, &[0; 8]);
    f[10] = 0xff; // invalid UTF-8 inside the tensor name
    let msg = format_error(&f);
    assert!(msg.contains("corrupt header JSON"), "{msg}");
    // Well-formed JSON with malformed entries.
    let msg = format_error(&craft(
        r#"{"a":{"dtype":"F32","data_offsets":[0,8]}}"#,
        &[0; 8],
    ));
    assert!(msg.contains("`a`") && msg.contains("no `shape`"), "{msg}");
    let msg = format_error(&craft(
        r#"{"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}"#,
        &[0; 8],
    ));
    assert!(msg.contains("`shape`"), "{msg}");
    let msg = format_error(&craft(
        r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0]}}"#,
        &[0; 8],
    ));
    assert!(msg.contains("`data_offsets`"), "{msg}");
    let msg = format_error(&craft(r#"{"__metadata__":{"n":3}}"#, &[]));
    assert!(msg.contains("not a string"), "{msg}");
    let msg = format_error(&craft(
        r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
        &[0; 8],
    ));
    assert!(msg.contains("`a` appears twice"), "{msg}");
}

#[test]
fn rejects_offsets_past_the_end() {
    let msg = format_error(&craft(
        r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[400,408]}}"#,
        &[0; 8],
    ));
    assert!(
        msg.contains("`a`") && msg.contains("[400, 408]") && msg.contains("8 bytes"),
        "{msg}"
    );
}

#[test]
fn rejects_offsets_that_do_not_match_the_shape() {
    let msg = format_error(&craft(
        r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
        &[0; 8],
    ));
    assert!(
        msg.contains("`a`") && msg.contains("needs 12 bytes") && msg.contains("span 8"),
        "{msg}"
    );
}

#[test]
fn rejects_overlapping_reversed_and_gapped_ranges() {
    let msg = format_error(&craft(
        r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
        &[0; 12],
    ));
    assert!(
        msg.contains("`b`") && msg.contains("overlaps") && msg.contains("`a`"),
        "{msg}"
    );
    let msg = format_error(&craft(
        r#"{"a":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}}"#,
        &[0; 8],
    ));
    assert!(msg.contains("`a`") && msg.contains("reversed"), "{msg}");
    let msg = format_error(&craft(
        r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
        &[0; 8],
    ));
    assert!(
        msg.contains("bytes 0..4") && msg.contains("no tensor"),
        "{msg}"
    );
    let msg = format_error(&craft(ONE_F32, &[0; 12]));
    assert!(msg.contains("4 trailing bytes"), "{msg}");
}

#[test]
fn rejects_an_unknown_dtype() {
    let msg = format_error(&craft(
        r#"{"a":{"dtype":"F17","shape":[2],"data_offsets":[0,8]}}"#,
        &[0; 8],
    ));
    assert!(
        msg.contains("`a`") && msg.contains("unknown dtype `F17`"),
        "{msg}"
    );
}

#[test]
fn a_missing_file_is_an_io_error_naming_the_path() {
    let err = TensorStore::load(Path::new("/nonexistent/dir/model.safetensors")).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("/nonexistent/dir/model.safetensors"),
        "{err}"
    );
}

#[test]
fn a_header_only_file_is_an_empty_store() {
    let dir = TempDir::new("io-emptystore");
    let s = load_bytes(
        &dir,
        "e.safetensors",
        &craft(r#"{"__metadata__":{"a":"b"}}"#, &[]),
    )
    .unwrap();
    assert!(s.is_empty());
    assert_eq!(s.metadata_get("a"), Some("b"));
    let p = dir.path("e2.safetensors");
    TensorStore::new().save(&p).unwrap();
    assert!(TensorStore::load(&p).unwrap().is_empty());
}
