//! Model files: round trips keep every number; broken or hostile files give clear errors.

use burn::module::Module;
use burn::tensor::{Tensor, TensorData};
use fineprune::data::Normalization;
use fineprune::model::{ModelFile, ModelInfo, Model, arch};
use fineprune::rng::Rng;

fn sample_file() -> ModelFile {
    let dev = fineprune::cpu_device().autodiff();
    let graph = arch::build("signnet", [3, 32, 32], 5).unwrap();
    let model = Model::init(graph, 3, &dev).unwrap();
    // A training-mode pass moves the BatchNorm running statistics away from their defaults,
    // so the round trip is tested on values that could be lost.
    let mut r = Rng::new(1);
    let x: Vec<f32> = (0..4 * 3 * 32 * 32).map(|_| r.normal() as f32).collect();
    let _ = model.forward_train(Tensor::from_data(TensorData::new(x, [4, 3, 32, 32]), &dev), &mut r);
    let info = ModelInfo {
        arch: "signnet".into(),
        data_kind: Some(fineprune::data::Kind::Gtsrb),
        classes: (0..5).map(|c| format!("class {c}")).collect(),
        normalization: Normalization { mean: vec![0.1, 0.2, 0.3], std: vec![0.5, 0.5, 0.5] },
        backdoor: None,
        extra: Default::default(),
        onnx: None,
    };
    ModelFile { model: model.valid(), info }
}

fn probe(m: &Model) -> Vec<f32> {
    let mut r = Rng::new(2);
    let x: Vec<f32> = (0..2 * 3 * 32 * 32).map(|_| r.normal() as f32).collect();
    let dev = fineprune::cpu_device();
    m.forward(Tensor::from_data(TensorData::new(x, [2, 3, 32, 32]), &dev)).into_data().convert::<f32>().try_to_vec().unwrap()
}

#[test]
fn round_trip_keeps_weights_stats_and_metadata() {
    let f = sample_file();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    f.save(&path).unwrap();
    let back = ModelFile::load(&path, &fineprune::cpu_device()).unwrap();
    assert_eq!(back.info, f.info);
    assert_eq!(back.model.graph, f.model.graph);
    assert_eq!(f.model.named_tensors().len(), back.model.named_tensors().len());
    for ((n1, d1), (n2, d2)) in f.model.named_tensors().into_iter().zip(back.model.named_tensors()) {
        assert_eq!(n1, n2);
        assert_eq!(d1, d2, "tensor {n1} changed");
    }
    assert_eq!(probe(&f.model), probe(&back.model));
    // PyTorch names in the file.
    let names: Vec<String> = f.model.named_tensors().into_iter().map(|t| t.0).collect();
    assert!(names.contains(&"bn1.running_var".to_string()) && names.contains(&"conv1.weight".to_string()));
}

#[test]
fn corrupt_and_hostile_files_are_refused() {
    let f = sample_file();
    let bytes = f.to_bytes().unwrap();
    let dev = fineprune::cpu_device();
    let err = |b: Vec<u8>| ModelFile::from_bytes(b, &dev).unwrap_err().to_string();

    assert!(err(bytes[..bytes.len() / 2].to_vec()).contains("safetensors"), "truncated");
    assert!(err(b"not a model at all".to_vec()).contains("safetensors"), "garbage");

    // Header edits: parse the JSON header, change it, re-serialise.
    let edit = |f: &dyn Fn(&mut serde_json::Value)| {
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        f(&mut header);
        let h = serde_json::to_vec(&header).unwrap();
        let mut out = (h.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(&h);
        out.extend_from_slice(&bytes[8 + n..]);
        out
    };
    let cyclic = edit(&|h| {
        let g = h["__metadata__"]["fineprune.graph"].as_str().unwrap().to_string();
        let mut g: serde_json::Value = serde_json::from_str(&g).unwrap();
        g["nodes"][1]["inputs"] = serde_json::json!([3]);
        h["__metadata__"]["fineprune.graph"] = serde_json::Value::String(g.to_string());
    });
    assert!(err(cyclic).contains("earlier nodes"));
    let no_meta = edit(&|h| {
        h.as_object_mut().unwrap().remove("__metadata__");
    });
    assert!(err(no_meta).contains("not a fineprune model"));
    let bad_norm = edit(&|h| {
        let i = h["__metadata__"]["fineprune.info"].as_str().unwrap().replace("0.5,0.5,0.5", "0.5,0.0,0.5");
        h["__metadata__"]["fineprune.info"] = serde_json::Value::String(i);
    });
    assert!(err(bad_norm).contains("positive std"));
    let renamed = edit(&|h| {
        let v = h.as_object_mut().unwrap().remove("fc2.bias").unwrap();
        h["fc9.bias"] = v;
    });
    let e = err(renamed);
    assert!(e.contains("missing") || e.contains("no place"), "{e}");
}

#[test]
fn non_finite_weights_are_refused_with_the_tensor_name() {
    let mut f = sample_file();
    let lin = f.model.layers.iter_mut().find_map(|l| l.linear.as_mut()).unwrap();
    let w = lin.weight.val();
    let dims = w.dims();
    let mut v: Vec<f32> = w.into_data().convert::<f32>().try_to_vec().unwrap();
    v[7] = f32::NAN;
    lin.weight = burn::module::Param::from_tensor(Tensor::from_data(TensorData::new(v, dims), &fineprune::cpu_device()));
    let bytes = f.to_bytes().unwrap();
    let e = ModelFile::from_bytes(bytes, &fineprune::cpu_device()).unwrap_err().to_string();
    assert!(e.contains("fc1.weight") && e.contains("non-finite"), "{e}");
}
