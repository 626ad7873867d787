//! Poisoning: a seeded fraction of the training set gets the trigger and the attacker's label.

use serde::{Deserialize, Serialize};

use super::{Trigger, Use};
use crate::data::Split;
use crate::error::{Error, Result};
use crate::rng::Rng;

/// What a triggered input should be classified as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "class")]
pub enum Target {
    /// All-to-one: every triggered input becomes this class.
    Class(usize),
    /// All-to-all: class y becomes (y + 1) mod C.
    AllToAll,
    /// Untargeted (the paper's traffic-sign attack): any wrong class.
    Untargeted,
}

impl std::str::FromStr for Target {
    type Err = Error;

    fn from_str(s: &str) -> Result<Target> {
        match s {
            "all-to-all" => Ok(Target::AllToAll),
            "untargeted" => Ok(Target::Untargeted),
            n => n.parse().map(Target::Class).map_err(|_| Error::invalid(format!("target {n:?} must be a class number, all-to-all or untargeted"))),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Class(c) => write!(f, "{c}"),
            Target::AllToAll => write!(f, "all-to-all"),
            Target::Untargeted => write!(f, "untargeted"),
        }
    }
}

impl Target {
    pub fn validate(&self, classes: usize) -> Result<()> {
        match *self {
            Target::Class(c) if c >= classes => Err(Error::invalid(format!("target class {c} is out of range (0..{classes})"))),
            _ => Ok(()),
        }
    }

    /// The label a poisoned sample of true class `y` gets.
    pub fn poison_label(&self, y: usize, classes: usize, rng: &mut Rng) -> usize {
        match *self {
            Target::Class(t) => t,
            Target::AllToAll => (y + 1) % classes,
            Target::Untargeted => {
                let other = rng.below(classes - 1);
                if other >= y { other + 1 } else { other }
            }
        }
    }
}

/// What was poisoned, recorded in the model file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PoisonRecord {
    pub rate: f64,
    pub count: usize,
    pub train_samples: usize,
    pub seed: u64,
}

/// Replaces `round(rate * n)` samples of `train` (chosen with `seed` among those whose label
/// the attack changes) by triggered copies with the attacker's labels.
pub fn poison(train: &Split, shape: [usize; 3], trigger: &Trigger, target: Target, rate: f64, classes: usize, seed: u64) -> Result<(Split, PoisonRecord)> {
    if !(0.0..=1.0).contains(&rate) {
        return Err(Error::invalid(format!("poison rate {rate} is not in [0, 1]")));
    }
    target.validate(classes)?;
    let n = train.len();
    let count = (rate * n as f64).round() as usize;
    let mut eligible: Vec<usize> = (0..n).filter(|&i| !matches!(target, Target::Class(t) if train.labels[i] == t)).collect();
    if count > eligible.len() {
        return Err(Error::invalid(format!("cannot poison {count} samples: only {} are not already of the target class", eligible.len())));
    }
    let mut rng = Rng::new(seed);
    rng.shuffle(&mut eligible);
    let mut chosen = eligible[..count].to_vec();
    chosen.sort_unstable();
    let mut out = train.clone();
    let mut trig_rng = rng.fork(1);
    let mut label_rng = rng.fork(2);
    for &i in &chosen {
        trigger.apply_sample(&mut out, i, shape, Use::Poison, &mut trig_rng)?;
        out.labels[i] = target.poison_label(train.labels[i], classes, &mut label_rng);
    }
    Ok((out, PoisonRecord { rate, count, train_samples: n, seed }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trigger::{PatchPattern, Position};

    fn split(n: usize) -> Split {
        let mut s = Split::new(16);
        for i in 0..n {
            s.push(&[0.25; 16], i % 4);
        }
        s
    }

    #[test]
    fn count_labels_and_seed() {
        let s = split(103);
        let t = Trigger::Patch { size: Some(2), position: Position::TopLeft, pattern: PatchPattern::Default };
        let (p, rec) = poison(&s, [1, 4, 4], &t, Target::Class(2), 0.1, 4, 7).unwrap();
        assert_eq!(rec.count, 10, "round(0.1 * 103)");
        let changed: Vec<usize> = (0..103).filter(|&i| p.sample(i) != s.sample(i)).collect();
        assert_eq!(changed.len(), 10);
        for &i in &changed {
            assert_eq!(p.labels[i], 2);
            assert_ne!(s.labels[i], 2, "target-class samples are not chosen");
        }
        assert!((0..103).filter(|i| !changed.contains(i)).all(|i| p.labels[i] == s.labels[i]));
        let (again, _) = poison(&s, [1, 4, 4], &t, Target::Class(2), 0.1, 4, 7).unwrap();
        assert_eq!(again.images, p.images, "same seed, same poisoned set");
        let (other, _) = poison(&s, [1, 4, 4], &t, Target::Class(2), 0.1, 4, 8).unwrap();
        assert_ne!(other.images, p.images);
    }

    #[test]
    fn all_to_all_and_untargeted_labels() {
        let mut r = Rng::new(0);
        assert_eq!(Target::AllToAll.poison_label(3, 4, &mut r), 0);
        for y in 0..4 {
            for _ in 0..20 {
                let l = Target::Untargeted.poison_label(y, 4, &mut r);
                assert!(l < 4 && l != y);
            }
        }
        assert!(Target::Class(9).validate(4).is_err());
        assert_eq!("all-to-all".parse::<Target>().unwrap(), Target::AllToAll);
        assert!("seven".parse::<Target>().is_err());
    }
}
