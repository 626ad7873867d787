//! The ORL (AT&T) faces: `sN/K.pgm`, 40 people x 10 images of 92x112 grey. Images 1-7 of each
//! person are train, 8-10 test (the common protocol).

use super::{Loaded, Split, pnm, resize_planar};
use crate::error::{Error, Result};
use crate::fsutil::{DataRoot, DecodeBudget};

pub const PEOPLE: usize = 40;
pub const IMAGES_PER_PERSON: usize = 10;
pub const TRAIN_IMAGES: usize = 7;

pub fn load(root: &DataRoot, size: (usize, usize), budget: &mut DecodeBudget) -> Result<Loaded> {
    budget.take(root.path(), PEOPLE * IMAGES_PER_PERSON, size.0 * size.1)?;
    let mut train = Split::new(size.0 * size.1);
    let mut test = Split::new(size.0 * size.1);
    let mut groups = Vec::new();
    for person in 1..=PEOPLE {
        for k in 1..=IMAGES_PER_PERSON {
            let path = root.path().join(format!("s{person}")).join(format!("{k}.pgm"));
            let img = pnm::read(root, &path)?;
            if img.channels != 1 {
                return Err(Error::format(&path, "expected a grey (P5) image"));
            }
            let sample = resize_planar(&img.planar, 1, (img.height, img.width), size);
            if k <= TRAIN_IMAGES {
                train.push(&sample, person - 1);
                groups.push(train.len() as u64);
            } else {
                test.push(&sample, person - 1);
            }
        }
    }
    Ok(Loaded { channels: 1, classes: (1..=PEOPLE).map(|p| format!("s{p}")).collect(), train, train_groups: groups, val: None, test })
}
