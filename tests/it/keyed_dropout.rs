//! Keyed dropout as a CUDA run draws it: the masks are built with the tensor
//! ops the CUDA path runs (`MaskRng::mask_on`, here on the CPU), from the keys
//! the trainer gives each micro-batch. Whatever the number of processes, the
//! rank and the accumulation that make up a global batch, a micro-batch's
//! masks depend only on the run seed and its global index.

use std::collections::BTreeMap;

use runner::train::trainer::{dropout_key, micro_batch_index};
use runner_encoder::dropout::MaskRng;
use tch::{Device, Kind, Tensor};

/// The masks of one forward pass: one of hidden states, one of attention probabilities.
fn pass_masks(key: u64) -> Vec<Vec<f32>> {
    let rng = MaskRng::new(key);
    [rng.mask_on(&[2, 8, 16], Kind::Float, 0.1, Device::Cpu), rng.mask_on(&[2, 4, 8, 8], Kind::BFloat16, 0.1, Device::Cpu)]
        .iter()
        .map(|m: &Tensor| Vec::<f32>::try_from(&m.to_kind(Kind::Float).flatten(0, -1)).unwrap())
        .collect()
}

#[test]
fn device_masks_depend_on_seed_and_global_index_only() {
    let (seed, steps, global) = (42, 3, 4);
    // Every split of a global batch of 4 micro-batches: processes x accumulation.
    let mut runs: Vec<BTreeMap<u64, Vec<Vec<f32>>>> = Vec::new();
    for world in [1u64, 2, 4] {
        let accum = global / world;
        let mut masks = BTreeMap::new();
        for rank in 0..world {
            for step in 0..steps {
                for j in 0..accum {
                    let index = micro_batch_index(step, world, rank, accum, j);
                    assert!(masks.insert(index, pass_masks(dropout_key(seed, index))).is_none(), "index {index} twice");
                }
            }
        }
        assert_eq!(masks.keys().copied().collect::<Vec<_>>(), (0..steps * global).collect::<Vec<_>>());
        runs.push(masks);
    }
    assert_eq!(runs[0], runs[1], "1 process x 4 vs 2 processes x 2");
    assert_eq!(runs[0], runs[2], "1 process x 4 vs 4 processes x 1");
    // Other micro-batches and other seeds draw other masks.
    assert_ne!(runs[0][&0], runs[0][&1]);
    assert_ne!(pass_masks(dropout_key(seed, 0)), pass_masks(dropout_key(seed + 1, 0)));
    // And a CUDA pass draws what a CPU pass draws for the same key.
    let (cpu, ops) = (MaskRng::new(dropout_key(seed, 5)), MaskRng::new(dropout_key(seed, 5)));
    let a = cpu.mask(&[3, 7, 11], Kind::Float, 0.1);
    let b = ops.mask_on(&[3, 7, 11], Kind::Float, 0.1, Device::Cpu);
    assert_eq!(Vec::<f32>::try_from(&a.flatten(0, -1)).unwrap(), Vec::<f32>::try_from(&b.flatten(0, -1)).unwrap());
}
