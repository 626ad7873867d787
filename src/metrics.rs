//! Honest numbers: predictions over a split, accuracy, per-class accuracy, confusion matrix.

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use serde::Serialize;

use crate::data::{Normalization, Split, batch};
use crate::model::Model;

/// Argmax class of every sample of `split`, in order, computed in batches in evaluation mode.
pub fn predict(model: &Model, split: &Split, norm: &Normalization, device: &Device, batch_size: usize) -> Vec<usize> {
    let model = model.valid();
    let shape = model.graph.input_shape;
    let order: Vec<usize> = (0..split.len()).collect();
    let mut out = Vec::with_capacity(split.len());
    for chunk in order.chunks(batch_size.max(1)) {
        let (x, _) = batch(split, chunk, shape, norm, device);
        out.extend(argmax(model.forward(x)));
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
    let preds = predict(&file.model, split, &file.info.normalization, device, 256);
    Ok(ClassReport::new(&preds, &split.labels, classes))
}
