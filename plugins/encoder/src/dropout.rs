//! Dropout with masks drawn from a counter-based generator, on every device.
//!
//! `torch.nn.functional.dropout` on the CPU fills a float tensor with
//! `bernoulli_`, divides it by `1 - p` and multiplies: on a 2-core machine the
//! `bernoulli_` calls alone took 11% of a MiniLM training step in float32 and
//! 21% in bf16. Here a mask of `0` and `1 / (1 - p)` is written in one pass by
//! a SplitMix64 hash of (key, call, position), vectorised (AVX-512 or AVX2 when
//! the CPU has them) and split over threads, then multiplied in: gradients flow
//! through the product as they do through torch's dropout.
//!
//! A [`MaskRng`] lives for one forward pass: its key is the pass's
//! `dropout_key`, which the runner derives from the run seed and the
//! micro-batch's global index, and each mask is a pure function of that key and
//! the number of masks drawn before it in the pass. The model holds no random
//! state: a resumed run, or another process training the same micro-batch,
//! draws the same masks. The drop
//! probability is rounded to a multiple of 2^-16 (0.1 becomes 0.1000061) and
//! the keep scale uses the rounded value, so the expectation stays exact.
//!
//! On other devices (CUDA) the same hash is computed with int64 tensor ops on
//! the device ([`MaskRng::mask_on`]): wrapping multiplication, xor, and shifts
//! masked to act as logical ones. It gives the CPU kernel's masks bit for bit
//! (tested on the CPU), so a CUDA run draws the masks a CPU run draws, keyed
//! only by (run seed, global micro-batch index): not by torch's generator, the
//! rank or the number of processes. It costs about twenty elementwise kernels
//! over a quarter of the mask's elements per mask.

use std::sync::atomic::{AtomicU64, Ordering};

use tch::{Device, Kind, Tensor};

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// The SplitMix64 output function: a bijective 64-bit mix.
#[inline(always)]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Source of the dropout masks of one forward pass.
#[derive(Debug)]
pub struct MaskRng {
    key: u64,
    /// Masks drawn so far in this pass.
    calls: AtomicU64,
}

impl MaskRng {
    /// The generator of a pass whose dropout key is `key`.
    pub fn new(key: u64) -> Self {
        MaskRng { key, calls: AtomicU64::new(0) }
    }

    /// Dropout of `x` with probability `p` when `train`; `x` itself otherwise.
    pub fn dropout(&self, x: &Tensor, p: f64, train: bool) -> Tensor {
        if !train || p <= 0.0 {
            return x.shallow_clone();
        }
        if p >= 1.0 {
            return x * 0.0;
        }
        match x.device() {
            Device::Cpu => x * self.mask(&x.size(), x.kind(), p),
            device => x * self.mask_on(&x.size(), x.kind(), p, device),
        }
    }

    /// The key, drop threshold (of 2^16) and keep scale of the next mask.
    fn next(&self, p: f64) -> (u64, u16, f64) {
        let call = self.calls.fetch_add(1, Ordering::Relaxed);
        let key = mix(self.key ^ mix(call.wrapping_add(1).wrapping_mul(GOLDEN)));
        let threshold = ((p * 65536.0).round() as u32).clamp(1, 65535) as u16;
        (key, threshold, 65536.0 / (65536.0 - threshold as f64))
    }

    /// A fresh mask of `0` and `1 / (1 - p)` values, `p` in (0, 1), on the CPU.
    pub fn mask(&self, shape: &[i64], kind: Kind, p: f64) -> Tensor {
        let (key, threshold, scale) = self.next(p);
        // Written directly in float32, float64 and bf16; any other kind via float32.
        let written = match kind {
            Kind::Double | Kind::BFloat16 => kind,
            _ => Kind::Float,
        };
        let mask = Tensor::empty(shape, (written, Device::Cpu));
        let n = mask.numel();
        let ptr = mask.data_ptr();
        // SAFETY: `mask` is a fresh contiguous CPU tensor of `n` elements of
        // `written`; the slice is dropped before the tensor is returned.
        unsafe {
            match written {
                Kind::Double => fill(std::slice::from_raw_parts_mut(ptr as *mut f64, n), key, threshold, scale, 0.0),
                Kind::BFloat16 => {
                    let bits = (scale as f32).to_bits();
                    // round to nearest even, as torch converts float to bf16
                    let bf16 = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) as u16;
                    fill(std::slice::from_raw_parts_mut(ptr as *mut u16, n), key, threshold, bf16, 0)
                }
                _ => fill(std::slice::from_raw_parts_mut(ptr as *mut f32, n), key, threshold, scale as f32, 0.0),
            }
        }
        if written == kind { mask } else { mask.to_kind(kind) }
    }
}

impl MaskRng {
    /// The mask [`mask`](Self::mask) would draw next, computed on `device` with
    /// tensor ops: the same values, bit for bit, on any device. Nothing is read
    /// back to the host and nothing is copied to the device.
    pub fn mask_on(&self, shape: &[i64], kind: Kind, p: f64, device: Device) -> Tensor {
        let (key, threshold, scale) = self.next(p);
        let n: i64 = shape.iter().product();
        let words = Tensor::arange((n + 3) / 4, (Kind::Int64, device));
        // int64 arithmetic wraps as u64 arithmetic does, bit for bit.
        let r = mix_tensor(words.f_mul_scalar(GOLDEN as i64).unwrap().f_add_scalar(key as i64).unwrap());
        // Element 4w + l reads bits 16l..16l+16 of word w; `& 0xFFFF` undoes the
        // sign extension of torch's arithmetic shift.
        let lane = |l: i64| r.bitwise_right_shift_tensor_scalar(16 * l).bitwise_and(0xFFFF);
        let lanes = Tensor::stack(&[lane(0), lane(1), lane(2), lane(3)], 1).flatten(0, 1).narrow(0, 0, n);
        let written = if kind == Kind::Double { Kind::Double } else { Kind::Float };
        // 1 * scale rounds as `scale as f32` does; bf16 and others then round
        // from float32 as the CPU kernel's bf16 and `to_kind` do.
        let mask = lanes.ge(threshold as i64).to_kind(written).f_mul_scalar(scale).unwrap().reshape(shape);
        if written == kind { mask } else { mask.to_kind(kind) }
    }
}

/// [`mix`] on every element of an int64 tensor (consumed and reused in place).
fn mix_tensor(mut z: Tensor) -> Tensor {
    // A logical right shift by s: arithmetic shift, then keep the low 64 - s bits.
    let shr = |z: &Tensor, s: i64| z.bitwise_right_shift_tensor_scalar(s).bitwise_and(((1u64 << (64 - s)) - 1) as i64);
    let _ = z.bitwise_xor_tensor_(&shr(&z, 30));
    let _ = z.f_mul_scalar_(0xBF58_476D_1CE4_E5B9u64 as i64).unwrap();
    let _ = z.bitwise_xor_tensor_(&shr(&z, 27));
    let _ = z.f_mul_scalar_(0x94D0_49BB_1331_11EBu64 as i64).unwrap();
    let _ = z.bitwise_xor_tensor_(&shr(&z, 31));
    z
}

/// Writes `keep` or `drop` into every element, four elements per hash, on
/// up to `tch::get_num_threads()` threads.
fn fill<T: Copy + Send>(out: &mut [T], key: u64, threshold: u16, keep: T, drop: T) {
    const MIN_CHUNK: usize = 1 << 16;
    let threads = (tch::get_num_threads().max(1) as usize).min(out.len() / MIN_CHUNK + 1);
    if threads <= 1 {
        fill_chunk(out, key, 0, threshold, keep, drop);
        return;
    }
    // Chunks hold a multiple of 4 elements so each starts on a hash boundary.
    let chunk = out.len().div_ceil(threads).div_ceil(4) * 4;
    std::thread::scope(|s| {
        let mut parts = out.chunks_mut(chunk).enumerate();
        let (_, first) = parts.next().expect("at least one chunk");
        for (i, part) in parts {
            s.spawn(move || fill_chunk(part, key, (i * chunk / 4) as u64, threshold, keep, drop));
        }
        fill_chunk(first, key, 0, threshold, keep, drop);
    });
}

fn fill_chunk<T: Copy>(out: &mut [T], key: u64, first_word: u64, threshold: u16, keep: T, drop: T) {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512dq") {
            // SAFETY: the CPU has the features the function is compiled for.
            return unsafe { fill_avx512(out, key, first_word, threshold, keep, drop) };
        }
        if is_x86_feature_detected!("avx2") {
            // SAFETY: as above.
            return unsafe { fill_avx2(out, key, first_word, threshold, keep, drop) };
        }
    }
    fill_kernel(out, key, first_word, threshold, keep, drop)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl")]
unsafe fn fill_avx512<T: Copy>(out: &mut [T], key: u64, first_word: u64, threshold: u16, keep: T, drop: T) {
    fill_kernel(out, key, first_word, threshold, keep, drop)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn fill_avx2<T: Copy>(out: &mut [T], key: u64, first_word: u64, threshold: u16, keep: T, drop: T) {
    fill_kernel(out, key, first_word, threshold, keep, drop)
}

/// Element `4w + l` is dropped when bits `16l..16l+16` of `mix(key + w * GOLDEN)`
/// fall below `threshold`.
#[inline(always)]
fn fill_kernel<T: Copy>(out: &mut [T], key: u64, first_word: u64, threshold: u16, keep: T, drop: T) {
    let mut quads = out.chunks_exact_mut(4);
    let mut w = first_word;
    for quad in &mut quads {
        let r = mix(key.wrapping_add(w.wrapping_mul(GOLDEN)));
        quad[0] = if (r as u16) < threshold { drop } else { keep };
        quad[1] = if ((r >> 16) as u16) < threshold { drop } else { keep };
        quad[2] = if ((r >> 32) as u16) < threshold { drop } else { keep };
        quad[3] = if ((r >> 48) as u16) < threshold { drop } else { keep };
        w += 1;
    }
    let rest = quads.into_remainder();
    if !rest.is_empty() {
        let r = mix(key.wrapping_add(w.wrapping_mul(GOLDEN)));
        for (l, o) in rest.iter_mut().enumerate() {
            *o = if ((r >> (16 * l)) as u16) < threshold { drop } else { keep };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(t: &Tensor) -> Vec<f32> {
        Vec::try_from(&t.to_kind(Kind::Float).flatten(0, -1)).unwrap()
    }

    #[test]
    fn drop_rate_and_scale_match_p() {
        let rng = MaskRng::new(7);
        for p in [0.1, 0.5, 0.9] {
            let m = values(&rng.mask(&[1000, 1000], Kind::Float, p));
            let dropped = m.iter().filter(|&&v| v == 0.0).count() as f64 / m.len() as f64;
            assert!((dropped - p).abs() < 2e-3, "p={p}: dropped {dropped}");
            let mean = m.iter().map(|&v| v as f64).sum::<f64>() / m.len() as f64;
            assert!((mean - 1.0).abs() < 5e-3, "p={p}: mean {mean}");
            let keep = m.iter().copied().find(|&v| v != 0.0).unwrap() as f64;
            assert!((keep * (1.0 - p) - 1.0).abs() < 1e-4, "p={p}: keep scale {keep}");
        }
    }

    #[test]
    fn masks_differ_within_a_pass_and_repeat_for_the_same_key() {
        let a = MaskRng::new(3);
        let first = values(&a.mask(&[64, 64], Kind::Float, 0.5));
        let second = values(&a.mask(&[64, 64], Kind::Float, 0.5));
        assert_ne!(first, second);
        let b = MaskRng::new(3);
        assert_eq!(values(&b.mask(&[64, 64], Kind::Float, 0.5)), first);
        assert_eq!(values(&b.mask(&[64, 64], Kind::Float, 0.5)), second);
        assert_ne!(values(&MaskRng::new(4).mask(&[64, 64], Kind::Float, 0.5)), first);
    }

    #[test]
    fn thread_split_does_not_change_the_mask() {
        let one = MaskRng::new(11);
        tch::set_num_threads(1);
        let serial = values(&one.mask(&[3, 100_003], Kind::Float, 0.3));
        tch::set_num_threads(2);
        let two = MaskRng::new(11);
        assert_eq!(values(&two.mask(&[3, 100_003], Kind::Float, 0.3)), serial);
    }

    #[test]
    fn neighbouring_elements_are_independent() {
        // Drops of element i and i+1 (same hash word or not) co-occur at p^2.
        let m = values(&MaskRng::new(5).mask(&[4_000_000], Kind::Float, 0.5));
        let both = m.windows(2).filter(|w| w[0] == 0.0 && w[1] == 0.0).count() as f64 / (m.len() - 1) as f64;
        assert!((both - 0.25).abs() < 2e-3, "{both}");
    }

    #[test]
    fn bf16_masks_carry_the_rounded_scale() {
        let m = values(&MaskRng::new(1).mask(&[10_000], Kind::BFloat16, 0.1));
        let keep = m.iter().copied().find(|&v| v != 0.0).unwrap();
        assert_eq!(keep, Tensor::from(1.0f32 / 0.9).to_kind(Kind::BFloat16).to_kind(Kind::Float).double_value(&[]) as f32);
    }

    /// The tensor-op masks that CUDA uses equal the CPU kernel's bit for bit,
    /// in every kind, for odd sizes, small and large p.
    #[test]
    fn tensor_op_masks_equal_the_cpu_kernel_bit_for_bit() {
        for kind in [Kind::Float, Kind::Double, Kind::BFloat16, Kind::Half] {
            for (shape, p) in [(vec![7_i64], 0.1), (vec![3, 5, 33], 0.5), (vec![2, 4, 128, 128], 0.1), (vec![1001], 0.9999)] {
                let (cpu, ops) = (MaskRng::new(42), MaskRng::new(42));
                for _ in 0..2 {
                    let a = cpu.mask(&shape, kind, p);
                    let b = ops.mask_on(&shape, kind, p, Device::Cpu);
                    assert_eq!((a.kind(), a.size()), (b.kind(), b.size()));
                    let bits = |t: &Tensor| Vec::<f64>::try_from(&t.to_kind(Kind::Double).flatten(0, -1)).unwrap();
                    assert_eq!(bits(&a), bits(&b), "{kind:?} {shape:?} p={p}");
                }
            }
        }
        let (a, b) = (mix(0x1234_5678_9abc_def0), mix_tensor(Tensor::from_slice(&[0x1234_5678_9abc_def0_i64])).int64_value(&[0]));
        assert_eq!(a, b as u64);
    }

    #[test]
    fn gradient_flows_through_the_mask() {
        let x = Tensor::ones([1000], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let rng = MaskRng::new(9);
        let y = rng.dropout(&x, 0.5, true);
        y.sum(Kind::Float).backward();
        assert_eq!(values(&x.grad()), values(&y.detach()));
        assert_eq!(values(&rng.dropout(&x, 0.5, false).detach()), vec![1.0; 1000]);
    }
}
