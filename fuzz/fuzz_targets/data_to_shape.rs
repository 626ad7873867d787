#![no_main]
//! What the CLI runs on an untrusted data file: the loader *and* the conversion to the model's
//! shape. The first bytes choose the kind (npz, CIFAR binary) and a model input shape (channels,
//! height, width up to 1024, classes); the rest is the file. A 64 MiB budget on the decoded
//! output must hold whatever the file and shape declare (libFuzzer's -malloc_limit_mb turns any
//! larger allocation into a finding).
use fineprune::data::{DataSpec, Dataset, Kind, LoadOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 6 {
        return;
    }
    let (head, body) = data.split_at(6);
    let channels = if head[0] & 1 == 0 { 1 } else { 3 };
    let side = |b: u8, c: u8| 1 + (u16::from_le_bytes([b, c]) as usize % 1024);
    let size = (side(head[1], head[2]), side(head[3], head[4]));
    let classes = 2 + (head[5] as usize % 100);
    let opts = LoadOptions { size: Some(size), channels: Some(channels), classes: Some(classes), max_decoded_bytes: Some(64 << 20), ..LoadOptions::default() };
    let spec = if head[0] & 2 == 0 {
        DataSpec { kind: Kind::Npz, path: fineprune_fuzz::scratch_file("shape.npz", body) }
    } else {
        let dir = fineprune_fuzz::scratch_dir().join("cifar");
        std::fs::create_dir_all(&dir).expect("scratch folder");
        for name in ["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin", "test_batch.bin"] {
            std::fs::write(dir.join(name), body).expect("scratch file");
        }
        DataSpec { kind: Kind::Cifar10, path: dir }
    };
    if let Ok(ds) = Dataset::load(&spec, &opts) {
        assert_eq!(ds.shape, [channels, size.0, size.1]);
        assert!(ds.train.labels.iter().chain(&ds.test.labels).all(|&l| l < classes.max(10)));
    }
});
