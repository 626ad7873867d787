//! Honest numbers: predictions over a split, accuracy, per-class accuracy, confusion matrix.

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use serde::Serialize;

use crate::data::{Normalization, Split, batch};
use crate::model::Model;

/// Argmax class of every sample of `split`, in order, computed in batches in evaluation mode.
pub fn predict(model: &Model, split: &Split, norm: &Normalization, device: &Device, batch_size: usize) -> Vec<usize> {
    predict_counting(model, split, norm, device, batch_size, &mut |_| {})
}

/// [`predict`], calling `done(n)` after each batch of `n` samples (for progress display).
pub fn predict_counting(model: &Model, split: &Split, norm: &Normalization, device: &Device, batch_size: usize, done: &mut dyn FnMut(usize)) -> Vec<usize> {
    let model = model.valid();
    let shape = model.graph.input_shape;
    let order: Vec<usize> = (0..split.len()).collect();
    let mut out = Vec::with_capacity(split.len());
    for chunk in order.chunks(batch_size.max(1)) {
        let (x, _) = batch(split, chunk, shape, norm, device);
        out.extend(argmax(model.forward(x)));
        done(chunk.len());
    }
    out
}

/// Row-wise argmax of a `[n, classes]` tensor.
pub fn argmax(logits: Tensor<2>) -> Vec<usize> {
    let data = logits.argmax(1).into_data().convert::<i64>();
    data.try_to_vec::<i64>().expect("argmax data is i64 after convert").into_iter().map(|v| v as usize).collect()
}

#[derive(Clone, Debug, Serialize)]
pub struct ClassReport {
    pub accuracy: f64,
    /// Accuracy on each class's samples; `None` for a class with no samples in the split.
    pub per_class_accuracy: Vec<Option<f64>>,
    /// `confusion[true][predicted]` counts.
    pub confusion: Vec<Vec<usize>>,
    pub samples: usize,
}

impl ClassReport {
    pub fn new(predicted: &[usize], labels: &[usize], classes: usize) -> ClassReport {
        assert_eq!(predicted.len(), labels.len(), "one prediction per label");
        let mut confusion = vec![vec![0usize; classes]; classes];
        for (&p, &l) in predicted.iter().zip(labels) {
            confusion[l][p.min(classes - 1)] += 1;
        }
        let correct: usize = (0..classes).map(|c| confusion[c][c]).sum();
        let per_class_accuracy = confusion
            .iter()
            .enumerate()
            .map(|(c, row)| {
                let n: usize = row.iter().sum();
                (n > 0).then(|| row[c] as f64 / n as f64)
            })
            .collect();
        let samples = labels.len();
        ClassReport { accuracy: if samples > 0 { correct as f64 / samples as f64 } else { 0.0 }, per_class_accuracy, confusion, samples }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_counts_by_hand() {
        let labels = [0, 0, 1, 1, 2];
        let predicted = [0, 1, 1, 1, 0];
        let r = ClassReport::new(&predicted, &labels, 4);
        assert_eq!(r.samples, 5);
        assert!((r.accuracy - 0.6).abs() < 1e-12);
        assert_eq!(r.per_class_accuracy, vec![Some(0.5), Some(1.0), Some(0.0), None]);
        assert_eq!(r.confusion[0], vec![1, 1, 0, 0]);
        assert_eq!(r.confusion[2], vec![1, 0, 0, 0]);
    }
}

/// Evaluates a model file on a split of a dataset, checking first that the data fits the model.
pub fn evaluate(file: &crate::model::ModelFile, split: &Split, device: &Device) -> crate::Result<ClassReport> {
    check_fits(file, split)?;
    let preds = predict(&file.model, split, &file.info.normalization, device, 256);
    Ok(ClassReport::new(&preds, &split.labels, file.info.classes.len()))
}

/// Refuses samples of another size than the model's input, or labels beyond its classes.
pub fn check_fits(file: &crate::model::ModelFile, split: &Split) -> crate::Result<()> {
    let shape = file.model.graph.input_shape;
    if split.sample_len != shape.iter().product::<usize>() {
        return Err(crate::Error::invalid(format!(
            "samples have {} values, the model expects {}x{}x{}",
            split.sample_len, shape[0], shape[1], shape[2]
        )));
    }
    let classes = file.info.classes.len();
    if let Some(&bad) = split.labels.iter().find(|&&l| l >= classes) {
        return Err(crate::Error::invalid(format!("label {bad} is out of range for a model with {classes} classes")));
    }
    Ok(())
}

/// Images [`normalization_check`] evaluates: enough to tell 0.67 from 0.97 accuracy, a fraction
/// of a second's work.
pub const NORMALIZATION_CHECK_IMAGES: usize = 256;
/// How far (in accuracy) the data's own per-channel statistics must beat the model's
/// normalisation before the check speaks: a right normalisation is never beaten by this much.
pub const NORMALIZATION_CHECK_GAP: f64 = 0.10;

/// The model's accuracy on a few clean images with the normalisation it was given, beside its
/// accuracy with the data's own per-channel statistics. The most common silent mistake with an
/// imported model is evaluating it without the normalisation it was trained with: it still runs,
/// only worse (a PyTorch GTSRB model: 0.67 instead of 0.97).
#[derive(Clone, Debug, Serialize)]
pub struct NormalizationCheck {
    pub images: usize,
    pub accuracy: f64,
    pub accuracy_with_data_stats: f64,
    pub data_stats: Normalization,
}

impl NormalizationCheck {
    /// Whether the given normalisation is likely wrong.
    pub fn suspicious(&self) -> bool {
        self.accuracy_with_data_stats >= self.accuracy + NORMALIZATION_CHECK_GAP
    }

    /// The warning to print when [`suspicious`](Self::suspicious), naming the flags.
    pub fn warning(&self) -> Option<String> {
        let list = |v: &[f32]| v.iter().map(|x| format!("{x:.3}")).collect::<Vec<_>>().join(",");
        self.suspicious().then(|| {
            format!(
                "clean accuracy on {} validation images is {:.3} with the model's input normalisation but {:.3} with the data's own per-channel statistics: the model was probably trained with another normalisation. Give the one it was trained with (--mean/--std, or a MODEL.toml beside an ONNX file), e.g. --mean {} --std {}",
                self.images,
                self.accuracy,
                self.accuracy_with_data_stats,
                list(&self.data_stats.mean),
                list(&self.data_stats.std)
            )
        })
    }
}

/// Compares the model's normalisation with the data's own statistics on at most
/// [`NORMALIZATION_CHECK_IMAGES`] images of `split`, spread evenly over it.
pub fn normalization_check(file: &crate::model::ModelFile, split: &Split, device: &Device) -> crate::Result<NormalizationCheck> {
    check_fits(file, split)?;
    if split.is_empty() {
        return Err(crate::Error::invalid("no images to check the input normalisation on"));
    }
    let n = split.len().min(NORMALIZATION_CHECK_IMAGES);
    let picked: Vec<usize> = (0..n).map(|i| i * split.len() / n).collect();
    let sub = split.subset(&picked);
    let data_stats = Normalization::from_split(&sub, file.model.graph.input_shape[0]);
    let accuracy_with = |norm: &Normalization| {
        let preds = predict(&file.model, &sub, norm, device, 256);
        preds.iter().zip(&sub.labels).filter(|(p, l)| p == l).count() as f64 / n as f64
    };
    Ok(NormalizationCheck { images: n, accuracy: accuracy_with(&file.info.normalization), accuracy_with_data_stats: accuracy_with(&data_stats), data_stats })
}

/// The 95% Wilson score interval of a proportion `successes / n`.
pub fn wilson(successes: usize, n: usize) -> [f64; 2] {
    if n == 0 {
        return [0.0, 1.0];
    }
    let z = 1.959_963_984_540_054_f64;
    let (n, p) = (n as f64, successes as f64 / n as f64);
    let denom = 1.0 + z * z / n;
    let centre = (p + z * z / (2.0 * n)) / denom;
    let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / denom;
    // At p = 0 or 1 the interval touches 0 or 1 exactly; say so without rounding residue.
    let low = if successes == 0 { 0.0 } else { (centre - half).max(0.0) };
    let high = if successes as f64 == n { 1.0 } else { (centre + half).min(1.0) };
    [low, high]
}

/// `hits / n`, or `None` over no samples.
fn rate(hits: usize, n: usize) -> Option<f64> {
    (n > 0).then(|| hits as f64 / n as f64)
}

/// Attack success rate, as the paper defines it, with the convention used spelled out.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AttackSuccess {
    /// `None` when no triggered input is eligible (e.g. all are of the target class): a rate
    /// over zero samples is unknown, not 0 ("removed"); the convention says so.
    pub rate: Option<f64>,
    pub ci95: [f64; 2],
    /// Triggered test samples the rate is computed over.
    pub samples: usize,
    pub convention: String,
}

/// ASR from predictions on triggered inputs.
/// - targeted (all-to-one): fraction classified as the target; by default over the samples
///   whose true class is not the target (`include_target` gives the literal form over all);
/// - all-to-all: fraction classified as (y + 1) mod C;
/// - untargeted: `1 - A_backdoor / A_clean`, with `clean_accuracy` as A_clean; the interval is
///   Wilson's on A_backdoor, carried through the formula.
pub fn attack_success(triggered_pred: &[usize], labels: &[usize], target: crate::trigger::poison::Target, classes: usize, include_target: bool, clean_accuracy: f64) -> AttackSuccess {
    use crate::trigger::poison::Target;
    let pairs = triggered_pred.iter().zip(labels);
    match target {
        Target::Class(t) => {
            let kept: Vec<usize> = pairs.filter(|(_, y)| include_target || **y != t).map(|(p, _)| *p).collect();
            let hits = kept.iter().filter(|&&p| p == t).count();
            let mut convention = if include_target {
                format!("targeted: fraction of all triggered test inputs classified as class {t}")
            } else {
                format!("targeted: fraction of triggered test inputs whose true class is not {t} classified as {t}")
            };
            if kept.is_empty() {
                convention.push_str(&format!("; no such input was given, so the rate is unknown (every triggered input is of class {t}?)"));
            }
            AttackSuccess { rate: rate(hits, kept.len()), ci95: wilson(hits, kept.len()), samples: kept.len(), convention }
        }
        Target::AllToAll => {
            let hits = pairs.filter(|(p, y)| **p == (**y + 1) % classes).count();
            AttackSuccess {
                rate: rate(hits, labels.len()),
                ci95: wilson(hits, labels.len()),
                samples: labels.len(),
                convention: "all-to-all: fraction of triggered test inputs of class y classified as (y + 1) mod C".into(),
            }
        }
        Target::Untargeted => {
            let correct = pairs.filter(|(p, y)| p == y).count();
            let n = labels.len();
            let a_backdoor = correct as f64 / n.max(1) as f64;
            let ci = wilson(correct, n);
            let f = |a: f64| if clean_accuracy > 0.0 { (1.0 - a / clean_accuracy).clamp(0.0, 1.0) } else { 0.0 };
            AttackSuccess {
                rate: (n > 0).then(|| f(a_backdoor)),
                ci95: [f(ci[1]), f(ci[0])],
                samples: n,
                convention: "untargeted: 1 - A_backdoor / A_clean (accuracy on triggered over clean test inputs)".into(),
            }
        }
    }
}

#[cfg(test)]
mod asr_tests {
    use super::*;
    use crate::trigger::poison::Target;

    #[test]
    fn targeted_excludes_target_class_by_default() {
        // Five samples of class 0 (the target) and five of class 1.
        let labels = [0, 0, 0, 0, 0, 1, 1, 1, 1, 1];
        let preds = [0, 0, 0, 0, 0, 0, 0, 1, 1, 1];
        let a = attack_success(&preds, &labels, Target::Class(0), 2, false, 1.0);
        assert_eq!(a.samples, 5);
        assert!((a.rate.unwrap() - 0.4).abs() < 1e-12, "2 of the 5 non-target inputs flipped");
        assert!(a.convention.contains("not 0"));
        let literal = attack_success(&preds, &labels, Target::Class(0), 2, true, 1.0);
        assert_eq!(literal.samples, 10);
        assert!((literal.rate.unwrap() - 0.7).abs() < 1e-12);
        // Only target-class inputs: the rate is unknown, not 0.
        let none = attack_success(&[0, 0], &[0, 0], Target::Class(0), 2, false, 1.0);
        assert_eq!((none.rate, none.samples), (None, 0));
        assert!(none.convention.contains("unknown"));
    }

    #[test]
    fn untargeted_and_all_to_all_formulas() {
        let labels = [0, 1, 2, 3];
        let preds = [0, 2, 3, 3];
        // A_backdoor = 2/4; with A_clean = 0.8, ASR = 1 - 0.5/0.8 = 0.375.
        let u = attack_success(&preds, &labels, Target::Untargeted, 4, false, 0.8);
        let r = u.rate.unwrap();
        assert!((r - 0.375).abs() < 1e-12);
        assert!(u.ci95[0] <= r && r <= u.ci95[1]);
        let a = attack_success(&preds, &labels, Target::AllToAll, 4, false, 1.0);
        assert!((a.rate.unwrap() - 0.5).abs() < 1e-12, "1->2 and 2->3 hit");
    }

    #[test]
    fn wilson_matches_known_values() {
        // 8 of 10: the textbook Wilson interval is [0.490, 0.943].
        let [lo, hi] = wilson(8, 10);
        assert!((lo - 0.4902).abs() < 1e-3 && (hi - 0.9433).abs() < 1e-3, "{lo} {hi}");
        assert_eq!(wilson(0, 0), [0.0, 1.0]);
        assert_eq!(wilson(10, 10)[1], 1.0);
    }
}
