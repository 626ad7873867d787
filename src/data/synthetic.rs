//! A built-in, procedurally generated traffic-sign-like dataset, so `fineprune demo` runs with
//! no downloads and no data paths. Classes are shape x colour (circle, triangle, square,
//! diamond; red, blue), drawn at a random position and scale on a noisy background.

use super::{Loaded, Split};
use crate::rng::Rng;

pub const SIZE: usize = 32;
const SHAPES: [&str; 4] = ["circle", "triangle", "square", "diamond"];
const COLOURS: [(&str, [f32; 3]); 2] = [("red", [0.85, 0.1, 0.1]), ("blue", [0.1, 0.2, 0.85])];

pub fn class_names() -> Vec<String> {
    COLOURS.iter().flat_map(|(c, _)| SHAPES.iter().map(move |s| format!("{c} {s}"))).collect()
}

/// Is the point (u, v), relative to the centre in units of the radius, inside the shape?
fn inside(shape: usize, u: f32, v: f32) -> bool {
    match shape {
        0 => u * u + v * v <= 1.0,
        1 => v <= 0.8 && v >= -0.9 + 1.7 * u.abs() * 1.1,
        2 => u.abs() <= 0.8 && v.abs() <= 0.8,
        _ => u.abs() + v.abs() <= 1.0,
    }
}

fn render(class: usize, rng: &mut Rng) -> Vec<f32> {
    let (shape, colour) = (class % SHAPES.len(), COLOURS[class / SHAPES.len()].1);
    let bg = [0.3 + 0.4 * rng.uniform() as f32, 0.3 + 0.4 * rng.uniform() as f32, 0.3 + 0.4 * rng.uniform() as f32];
    let radius = 8.0 + 5.0 * rng.uniform() as f32;
    let cx = SIZE as f32 / 2.0 + (rng.uniform() as f32 - 0.5) * 8.0;
    let cy = SIZE as f32 / 2.0 + (rng.uniform() as f32 - 0.5) * 8.0;
    let brightness = 0.7 + 0.3 * rng.uniform() as f32;
    let mut img = vec![0f32; 3 * SIZE * SIZE];
    for y in 0..SIZE {
        for x in 0..SIZE {
            let (u, v) = ((x as f32 - cx) / radius, (y as f32 - cy) / radius);
            // A white inner symbol (a bar) makes the sign look like a sign and adds texture.
            let symbol = inside(shape, u, v) && u.abs() < 0.45 && v.abs() < 0.12;
            for c in 0..3 {
                let base = if symbol {
                    0.95
                } else if inside(shape, u, v) {
                    colour[c] * brightness
                } else {
                    bg[c]
                };
                let noisy = base + 0.08 * rng.normal() as f32;
                img[c * SIZE * SIZE + y * SIZE + x] = noisy.clamp(0.0, 1.0);
            }
        }
    }
    img
}

fn split(n: usize, rng: &mut Rng) -> Split {
    let classes = SHAPES.len() * COLOURS.len();
    let mut s = Split::new(3 * SIZE * SIZE);
    for i in 0..n {
        let class = i % classes;
        s.push(&render(class, rng), class);
    }
    s
}

/// `n_train` and `n_test` samples, balanced across classes, fully determined by `seed`.
pub fn generate(n_train: usize, n_test: usize, seed: u64) -> Loaded {
    let mut rng = Rng::new(seed);
    let train = split(n_train, &mut rng.fork(1));
    let test = split(n_test, &mut rng.fork(2));
    let train_groups = (0..n_train as u64).collect();
    Loaded { channels: 3, classes: class_names(), train, train_groups, val: None, test }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_balanced_and_in_range() {
        let a = generate(80, 16, 3);
        let b = generate(80, 16, 3);
        assert_eq!(a.train.images, b.train.images);
        assert_ne!(a.train.images, generate(80, 16, 4).train.images);
        for c in 0..8 {
            assert_eq!(a.train.labels.iter().filter(|&&l| l == c).count(), 10);
        }
        assert!(a.train.images.iter().all(|v| (0.0..=1.0).contains(v)));
    }

    #[test]
    fn classes_differ_in_colour_or_shape() {
        // Mean red minus blue over the image separates the two colour families.
        let mut rng = Rng::new(1);
        let plane = SIZE * SIZE;
        let red_minus_blue = |img: &[f32]| img[..plane].iter().sum::<f32>() - img[2 * plane..].iter().sum::<f32>();
        assert!(red_minus_blue(&render(0, &mut rng)) > red_minus_blue(&render(4, &mut rng)));
    }
}
