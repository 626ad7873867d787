//! Built-in architectures: functions that build a [`Graph`]. Node names follow PyTorch's
//! conventions where a standard model exists (torchvision's `vgg11_bn` `features.N`, ResNet's
//! `layerL.B.conv1`), so a PyTorch state dict's tensor names are our `node.role` names.

use crate::error::{Error, Result};
use crate::model::graph::{Graph, GraphBuilder, Op};

/// Every architecture name `--arch` accepts, with the input shape it is designed for.
pub const ARCHITECTURES: &[(&str, [usize; 3], &str)] = &[
    ("lenet", [1, 28, 28], "Caffe's LeNet: 2 conv (20, 50) + 2 fully connected; 28x28 grey"),
    ("deepid", [1, 55, 47], "the paper's face network: 4 conv, pool3 and conv4 both feed the classifier"),
    ("speechnet", [1, 64, 64], "AlexNet-style, 5 conv + 3 fully connected, for spectrograms"),
    ("signnet", [3, 32, 32], "3 conv+BN blocks + 2 fully connected, for 32x32 traffic signs"),
    ("vgg11-small", [3, 32, 32], "VGG-11 with BatchNorm at half width, CIFAR-style"),
    ("resnet18", [3, 32, 32], "ResNet-18, CIFAR-style (3x3 stem, no initial max-pool)"),
];

/// Builds `arch` for samples of `input` shape (channels, height, width) and `classes` outputs.
pub fn build(arch: &str, input: [usize; 3], classes: usize) -> Result<Graph> {
    if classes < 2 {
        return Err(Error::invalid(format!("a classifier needs at least 2 classes, got {classes}")));
    }
    let min_side = match arch {
        "lenet" => 16,
        "deepid" => 30,
        "speechnet" | "signnet" | "vgg11-small" | "resnet18" => 32,
        _ => {
            let names: Vec<&str> = ARCHITECTURES.iter().map(|a| a.0).collect();
            return Err(Error::invalid(format!("unknown architecture {arch:?}; known: {}", names.join(", "))));
        }
    };
    if input[1] < min_side || input[2] < min_side {
        return Err(Error::invalid(format!(
            "{arch} needs inputs of at least {min_side}x{min_side}, got {}x{}",
            input[1], input[2]
        )));
    }
    Ok(match arch {
        "lenet" => lenet(input, classes),
        "deepid" => deepid(input, classes),
        "speechnet" => speechnet(input, classes),
        "signnet" => signnet(input, classes),
        "vgg11-small" => vgg11_small(input, classes),
        "resnet18" => resnet18(input, classes),
        _ => unreachable!(),
    })
}

pub fn default_input(arch: &str) -> Option<[usize; 3]> {
    ARCHITECTURES.iter().find(|a| a.0 == arch).map(|a| a.1)
}

fn lenet(input: [usize; 3], classes: usize) -> Graph {
    let mut b = GraphBuilder::new(input);
    let x = b.conv("conv1", 0, 20, 5, 1, 0);
    let x = b.relu("relu1", x);
    let x = b.max_pool("pool1", x, 2, 2);
    let x = b.conv("conv2", x, 50, 5, 1, 0);
    let x = b.relu("relu2", x);
    let x = b.max_pool("pool2", x, 2, 2);
    let x = b.flatten("flatten", x);
    let x = b.linear("fc1", x, 500);
    let x = b.relu("relu3", x);
    let x = b.linear("fc2", x, classes);
    b.finish(x, "relu2")
}

/// DeepID as in the authors' Caffe prototxt (see PAPER.md), at the paper's sizes: the
/// flattened pool3 and conv4 outputs each go through a linear layer; the two are summed.
fn deepid(input: [usize; 3], classes: usize) -> Graph {
    let mut b = GraphBuilder::new(input);
    let x = b.conv("conv1", 0, 20, 4, 1, 0);
    let x = b.relu("relu1", x);
    let x = b.max_pool("pool1", x, 2, 2);
    let x = b.conv("conv2", x, 40, 3, 1, 0);
    let x = b.relu("relu2", x);
    let x = b.max_pool("pool2", x, 2, 2);
    let x = b.conv("conv3", x, 60, 3, 1, 0);
    let x = b.relu("relu3", x);
    let pool3 = b.max_pool("pool3", x, 2, 2);
    let x = b.conv("conv4", pool3, 80, 2, 1, 0);
    let conv4 = b.relu("relu4", x);
    let f3 = b.flatten("flatten3", pool3);
    let f4 = b.flatten("flatten4", conv4);
    let fc1 = b.linear("fc160_1", f3, 160);
    let fc2 = b.linear("fc160_2", f4, 160);
    let sum = b.add("fc160", Op::Add, &[fc1, fc2]);
    let x = b.relu("relu5", sum);
    let x = b.dropout("dropout", x, 0.4);
    let x = b.linear("fc_out", x, classes);
    // The authors' pruning script prunes conv3, ranked by pool3's activations: pool3 is the
    // conv3 output the classifier reads. Masking pool3 channels is masking conv3's.
    b.finish(x, "pool3")
}

fn speechnet(input: [usize; 3], classes: usize) -> Graph {
    let mut b = GraphBuilder::new(input);
    let x = b.conv("conv1", 0, 32, 5, 2, 2);
    let x = b.relu("relu1", x);
    let x = b.max_pool("pool1", x, 2, 2);
    let x = b.conv("conv2", x, 64, 3, 1, 1);
    let x = b.relu("relu2", x);
    let x = b.max_pool("pool2", x, 2, 2);
    let x = b.conv("conv3", x, 96, 3, 1, 1);
    let x = b.relu("relu3", x);
    let x = b.conv("conv4", x, 96, 3, 1, 1);
    let x = b.relu("relu4", x);
    let x = b.conv("conv5", x, 64, 3, 1, 1);
    let x = b.relu("relu5", x);
    let x = b.max_pool("pool5", x, 2, 2);
    let x = b.flatten("flatten", x);
    let x = b.linear("fc6", x, 256);
    let x = b.relu("relu6", x);
    let x = b.dropout("drop6", x, 0.5);
    let x = b.linear("fc7", x, 128);
    let x = b.relu("relu7", x);
    let x = b.dropout("drop7", x, 0.5);
    let x = b.linear("fc8", x, classes);
    b.finish(x, "relu5")
}

fn signnet(input: [usize; 3], classes: usize) -> Graph {
    let mut b = GraphBuilder::new(input);
    let mut x = 0;
    for (i, width) in [32, 64, 128].into_iter().enumerate() {
        let n = i + 1;
        x = b.conv(&format!("conv{n}"), x, width, 3, 1, 1);
        x = b.bn(&format!("bn{n}"), x);
        x = b.relu(&format!("relu{n}"), x);
        x = b.max_pool(&format!("pool{n}"), x, 2, 2);
    }
    let x = b.flatten("flatten", x);
    let x = b.linear("fc1", x, 256);
    let x = b.relu("relu4", x);
    let x = b.dropout("dropout", x, 0.5);
    let x = b.linear("fc2", x, classes);
    b.finish(x, "relu3")
}

/// torchvision's `vgg11_bn` layout (`features.N`, `classifier`), half width, CIFAR-sized.
fn vgg11_small(input: [usize; 3], classes: usize) -> Graph {
    const CFG: [Option<usize>; 13] =
        [Some(32), None, Some(64), None, Some(128), Some(128), None, Some(256), Some(256), None, Some(256), Some(256), None];
    let mut b = GraphBuilder::new(input);
    let mut x = 0;
    let mut idx = 0;
    let mut site = String::new();
    for entry in CFG {
        match entry {
            Some(width) => {
                x = b.conv(&format!("features.{idx}"), x, width, 3, 1, 1);
                x = b.bn(&format!("features.{}", idx + 1), x);
                site = format!("features.{}", idx + 2);
                x = b.relu(&site, x);
                idx += 3;
            }
            None => {
                x = b.max_pool(&format!("features.{idx}"), x, 2, 2);
                idx += 1;
            }
        }
    }
    let x = b.add("avgpool", Op::GlobalAvgPool, &[x]);
    let x = b.flatten("flatten", x);
    let x = b.linear("classifier", x, classes);
    b.finish(x, &site)
}

/// ResNet-18 for 32x32 inputs, torchvision names. The prune site is the last block's output
/// after the skip addition and ReLU: pruning a channel there removes it from the residual
/// stream too, so the skip path cannot leak it.
fn resnet18(input: [usize; 3], classes: usize) -> Graph {
    let mut b = GraphBuilder::new(input);
    let x = b.conv_ext("conv1", 0, 64, 3, 1, 1, false);
    let x = b.bn("bn1", x);
    let mut x = b.relu("relu", x);
    let mut in_ch = 64;
    let mut site = String::new();
    for (l, (width, stride)) in [(64, 1), (128, 2), (256, 2), (512, 2)].into_iter().enumerate() {
        for blk in 0..2 {
            let p = format!("layer{}.{blk}", l + 1);
            let s = if blk == 0 { stride } else { 1 };
            let y = b.conv_ext(&format!("{p}.conv1"), x, width, 3, s, 1, false);
            let y = b.bn(&format!("{p}.bn1"), y);
            let y = b.relu(&format!("{p}.relu1"), y);
            let y = b.conv_ext(&format!("{p}.conv2"), y, width, 3, 1, 1, false);
            let y = b.bn(&format!("{p}.bn2"), y);
            let shortcut = if s != 1 || in_ch != width {
                let d = b.conv_ext(&format!("{p}.downsample.0"), x, width, 1, s, 0, false);
                b.bn(&format!("{p}.downsample.1"), d)
            } else {
                x
            };
            let sum = b.add(&format!("{p}.add"), Op::Add, &[y, shortcut]);
            site = format!("{p}.relu2");
            x = b.relu(&site, sum);
            in_ch = width;
        }
    }
    let x = b.add("avgpool", Op::GlobalAvgPool, &[x]);
    let x = b.flatten("flatten", x);
    let x = b.linear("fc", x, classes);
    b.finish(x, &site)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::graph::Shape;

    #[test]
    fn every_architecture_builds_at_its_default_size() {
        for (name, input, _) in ARCHITECTURES {
            let g = build(name, *input, 10).unwrap();
            let shapes = g.validate().unwrap();
            assert_eq!(shapes[g.output], Shape::Flat(10), "{name}");
            let site = g.index_of(g.prune_site.as_ref().unwrap()).unwrap();
            // The prune site is a feature map downstream of the last convolution.
            let last_conv = g.nodes.iter().rposition(|n| n.op.is_conv()).unwrap();
            assert!(matches!(shapes[site], Shape::Map(_)), "{name}");
            assert!(site > 0 && g.nodes[..=site].iter().any(|n| n.op.is_conv()), "{name}");
            if name != &"deepid" {
                assert!(site > last_conv, "{name}: site must follow the last conv");
            }
        }
    }

    #[test]
    fn known_parameter_counts() {
        // Caffe LeNet: 20*25+20 + 50*20*25+50 + 800*500+500 + 500*10+10 = 431080.
        assert_eq!(build("lenet", [1, 28, 28], 10).unwrap().param_count(), 431_080);
        // ResNet-18 (CIFAR) has 11,173,962 weights for 10 classes, plus 2 running stats per
        // BatchNorm channel (4800 channels) that param_count also counts.
        assert_eq!(build("resnet18", [3, 32, 32], 10).unwrap().param_count(), 11_173_962 + 2 * 4800);
    }

    #[test]
    fn bad_requests_are_errors() {
        assert!(build("alexnet", [3, 32, 32], 10).unwrap_err().to_string().contains("unknown architecture"));
        assert!(build("lenet", [1, 8, 8], 10).is_err());
        assert!(build("lenet", [1, 28, 28], 1).is_err());
    }
}
