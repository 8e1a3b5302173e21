//! Gradients averaged over processes in flat buckets: tensors are packed into
//! buffers of up to [`BUCKET_BYTES`], one all-reduce per buffer instead of one
//! per tensor, then unpacked and divided by the number of processes.

use anyhow::Result;
use tch::Tensor;

use super::Collective;

/// The size of one all-reduce (PyTorch DDP's default bucket is 25 MiB).
pub const BUCKET_BYTES: usize = 25 << 20;

/// Averages `tensors` over every process, in place. Tensors must share one
/// kind and device; every process passes the same shapes in the same order.
pub fn all_reduce_mean(c: &dyn Collective, tensors: &[Tensor]) -> Result<()> {
    let world = c.world_size();
    if world == 1 || tensors.is_empty() {
        return Ok(());
    }
    let _guard = tch::no_grad_guard();
    for bucket in buckets(tensors, BUCKET_BYTES) {
        let mut flat = Tensor::f_cat(&bucket.iter().map(|t| t.f_reshape([-1])).collect::<Result<Vec<_>, _>>()?, 0)?;
        c.all_reduce_sum(std::slice::from_ref(&flat))?;
        let _ = flat.f_div_scalar_(world as f64)?;
        let mut at = 0;
        for t in bucket {
            let n = t.numel() as i64;
            let mut t = t.shallow_clone();
            t.f_copy_(&flat.f_narrow(0, at, n)?.f_view(t.size().as_slice())?)?;
            at += n;
        }
    }
    Ok(())
}

/// Consecutive runs of tensors of at most `max_bytes` each (a larger tensor alone).
fn buckets(tensors: &[Tensor], max_bytes: usize) -> Vec<&[Tensor]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, t) in tensors.iter().enumerate() {
        let size = t.numel() * t.kind().elt_size_in_bytes();
        if i > start && bytes + size > max_bytes {
            out.push(&tensors[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < tensors.len() {
        out.push(&tensors[start..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_tensor_once_within_the_size() {
        let ts: Vec<Tensor> = [10, 20, 5, 100, 1].iter().map(|&n| Tensor::zeros([n], (tch::Kind::Float, tch::Device::Cpu))).collect();
        let b = buckets(&ts, 30 * 4);
        let sizes: Vec<Vec<usize>> = b.iter().map(|s| s.iter().map(|t| t.numel()).collect()).collect();
        assert_eq!(sizes, vec![vec![10, 20], vec![5], vec![100], vec![1]]);
    }
}
