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
    /// Clean-label: only target-class samples were triggered, labels unchanged; `rate` is then
    /// the share of the target class.
    #[serde(default)]
    pub clean_label: bool,
    /// Cover samples, labels kept: WaNet's noise mode (a jittered warp) or Adap-Blend's
    /// regularisation samples (a partial trigger).
    #[serde(default)]
    pub cover_count: usize,
}

/// Replaces `round(rate * n)` samples of `train` (chosen with `seed` among those whose label
/// the attack changes) by triggered copies with the attacker's labels. Clean-label
/// (`clean_label`): `round(rate * m)` of the `m` target-class samples get the trigger and keep
/// their labels. Rate as a share of the target class, not of the whole set: a small class
/// (GTSRB's class 0 holds 0.5% of the set) could not reach a whole-set rate. Triggers with
/// cover samples ([`Trigger::cover_ratio`]) then give that many more per poisoned sample their
/// cover form at the true label.
pub fn poison(train: &Split, shape: [usize; 3], trigger: &Trigger, target: Target, rate: f64, classes: usize, seed: u64, clean_label: bool) -> Result<(Split, PoisonRecord)> {
    if !(0.0..=1.0).contains(&rate) {
        return Err(Error::invalid(format!("poison rate {rate} is not in [0, 1]")));
    }
    target.validate(classes)?;
    let n = train.len();
    let mut eligible: Vec<usize> = match (clean_label, target) {
        (false, _) => (0..n).filter(|&i| !matches!(target, Target::Class(t) if train.labels[i] == t)).collect(),
        (true, Target::Class(t)) => (0..n).filter(|&i| train.labels[i] == t).collect(),
        (true, _) => return Err(Error::invalid("clean-label poisoning needs a target class (the labels are not changed)")),
    };
    let count = (rate * if clean_label { eligible.len() } else { n } as f64).round() as usize;
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
    let stamp = trigger.stamper(shape)?;
    for &i in &chosen {
        stamp.apply_sample(&mut out, i, Use::Poison, &mut trig_rng)?;
        if !clean_label {
            out.labels[i] = target.poison_label(train.labels[i], classes, &mut label_rng);
        }
    }
    // Cover samples: as many more as the trigger's ratio asks, drawn from the rest, get the
    // trigger's cover form (jittered or partial) at their true labels.
    let mut rest: Vec<usize> = (0..n).filter(|i| chosen.binary_search(i).is_err()).collect();
    let cover_count = ((trigger.cover_ratio() as f64 * count as f64).round() as usize).min(rest.len());
    let mut cover_rng = rng.fork(3);
    cover_rng.shuffle(&mut rest);
    for &i in &rest[..cover_count] {
        stamp.apply_sample(&mut out, i, Use::Cover, &mut cover_rng)?;
    }
    Ok((out, PoisonRecord { rate, count, train_samples: n, seed, clean_label, cover_count }))
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
        let (p, rec) = poison(&s, [1, 4, 4], &t, Target::Class(2), 0.1, 4, 7, false).unwrap();
        assert_eq!(rec.count, 10, "round(0.1 * 103)");
        let changed: Vec<usize> = (0..103).filter(|&i| p.sample(i) != s.sample(i)).collect();
        assert_eq!(changed.len(), 10);
        for &i in &changed {
            assert_eq!(p.labels[i], 2);
            assert_ne!(s.labels[i], 2, "target-class samples are not chosen");
        }
        assert!((0..103).filter(|i| !changed.contains(i)).all(|i| p.labels[i] == s.labels[i]));
        let (again, _) = poison(&s, [1, 4, 4], &t, Target::Class(2), 0.1, 4, 7, false).unwrap();
        assert_eq!(again.images, p.images, "same seed, same poisoned set");
        let (other, _) = poison(&s, [1, 4, 4], &t, Target::Class(2), 0.1, 4, 8, false).unwrap();
        assert_ne!(other.images, p.images);
    }

    #[test]
    fn clean_label_triggers_a_share_of_the_target_class_and_keeps_every_label() {
        let s = split(100);
        let t = Trigger::Sig { delta: 0.1, freq: 1.0 };
        let (p, rec) = poison(&s, [1, 4, 4], &t, Target::Class(1), 0.4, 4, 3, true).unwrap();
        assert_eq!(rec.count, 10, "40% of the 25 samples of class 1");
        assert!(rec.clean_label);
        assert_eq!(p.labels, s.labels, "no label changes");
        let changed: Vec<usize> = (0..100).filter(|&i| p.sample(i) != s.sample(i)).collect();
        assert_eq!(changed.len(), 10);
        assert!(changed.iter().all(|&i| s.labels[i] == 1), "only target-class samples are triggered");
        assert!(poison(&s, [1, 4, 4], &t, Target::Untargeted, 0.4, 4, 3, true).is_err(), "no target class, no clean-label attack");
    }

    #[test]
    fn noise_mode_warps_more_samples_at_their_true_labels() {
        let mut s = Split::new(64);
        for i in 0..100 {
            s.push(&(0..64).map(|p| ((p * 7 + i) % 13) as f32 / 12.0).collect::<Vec<_>>(), i % 4);
        }
        let t = Trigger::Warp { grid: 4, strength: 2.0, seed: 0, noise: 2.0 };
        let (p, rec) = poison(&s, [1, 8, 8], &t, Target::Class(0), 0.1, 4, 5, false).unwrap();
        assert_eq!((rec.count, rec.cover_count), (10, 20));
        let changed: Vec<usize> = (0..100).filter(|&i| p.sample(i) != s.sample(i)).collect();
        assert_eq!(changed.len(), 30, "10 poisoned and 20 noise-mode samples");
        let relabelled: Vec<usize> = changed.iter().copied().filter(|&i| p.labels[i] != s.labels[i]).collect();
        assert_eq!(relabelled.len(), 10, "noise-mode samples keep their labels");
        assert!(relabelled.iter().all(|&i| p.labels[i] == 0));
        let plain = Trigger::Warp { grid: 4, strength: 2.0, seed: 0, noise: 0.0 };
        assert_eq!(poison(&s, [1, 8, 8], &plain, Target::Class(0), 0.1, 4, 5, false).unwrap().1.cover_count, 0);
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
