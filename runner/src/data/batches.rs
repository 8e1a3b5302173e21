//! Masked, padded batches. The micro-batch with global index `i` is a pure
//! function of `(seed, i)`: the epoch's shuffle comes from `(seed, epoch)` and
//! the masks from a ChaCha stream numbered `i`. A run can therefore resume at
//! any step without replaying data, and batches can be built on a background
//! thread while the model trains.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;

use anyhow::Result;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::{Device, Tensor};

use runner_api::{MaskedSequence, Masker, MlmBatch, IGNORE_INDEX};

use super::Examples;

/// A batch on the host, row-major (rows, cols).
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub input_ids: Vec<i64>,
    pub attention_mask: Vec<i64>,
    pub labels: Vec<i64>,
    /// Each token's document within its row (-1 at padding), when attention
    /// keeps to documents (`data.document_attention`).
    pub documents: Option<Vec<i64>>,
    pub rows: usize,
    pub cols: usize,
    /// Real (non-padding) tokens.
    pub tokens: usize,
}

impl Batch {
    /// Pads masked sequences to the longest one.
    pub fn pad(seqs: Vec<MaskedSequence>, pad_id: i64) -> Self {
        let rows = seqs.len();
        let cols = seqs.iter().map(|s| s.input_ids.len()).max().unwrap_or(0);
        let mut b = Batch {
            input_ids: vec![pad_id; rows * cols],
            attention_mask: vec![0; rows * cols],
            labels: vec![IGNORE_INDEX; rows * cols],
            documents: None,
            rows,
            cols,
            tokens: 0,
        };
        for (r, s) in seqs.iter().enumerate() {
            let n = s.input_ids.len();
            let at = r * cols;
            b.input_ids[at..at + n].copy_from_slice(&s.input_ids);
            b.labels[at..at + n].copy_from_slice(&s.labels);
            b.attention_mask[at..at + n].fill(1);
            b.tokens += n;
        }
        b
    }

    /// Each row's tokens' documents (`Examples::documents`), -1 at padding.
    fn with_documents(mut self, docs: Vec<Vec<i64>>) -> Self {
        let mut all = vec![-1; self.rows * self.cols];
        for (r, d) in docs.iter().enumerate() {
            all[r * self.cols..r * self.cols + d.len()].copy_from_slice(d);
        }
        self.documents = Some(all);
        self
    }

    /// Copies the batch to `device` as int64 tensors. To a GPU the copies go
    /// from pinned memory without blocking: a blocking copy would first wait
    /// for every kernel already queued (the previous step's), stalling the
    /// host. libtorch's pinned-memory allocator keeps the host buffer until
    /// the copy is done.
    pub fn to_device(&self, device: Device) -> MlmBatch {
        let shape = [self.rows as i64, self.cols as i64];
        let t = |v: &[i64]| {
            let host = Tensor::from_slice(v).view(shape);
            match device {
                Device::Cuda(_) => host.pin_memory(device).to_device_(device, tch::Kind::Int64, true, false),
                _ => host.to_device(device),
            }
        };
        MlmBatch {
            input_ids: t(&self.input_ids),
            attention_mask: t(&self.attention_mask),
            labels: t(&self.labels),
            documents: self.documents.as_deref().map(t),
        }
    }

    /// Number of labelled positions.
    pub fn masked(&self) -> usize {
        self.labels.iter().filter(|&&l| l != IGNORE_INDEX).count()
    }
}

/// Examples `idx`, masked and padded into a batch (with their documents,
/// under document attention).
fn masked(examples: &Examples, idx: &[usize], masker: &dyn Masker, rng: &mut ChaCha8Rng, pad_id: i64) -> Result<Batch> {
    let seqs = idx.iter().map(|&i| masker.mask(&examples.ids(i), rng)).collect::<Result<Vec<_>>>()?;
    let batch = Batch::pad(seqs, pad_id);
    let docs: Option<Vec<Vec<i64>>> = idx.iter().map(|&i| examples.documents(i)).collect();
    Ok(match docs {
        Some(docs) => batch.with_documents(docs),
        None => batch,
    })
}

/// Makes training micro-batches: shuffled each epoch, masked afresh each time.
pub struct BatchMaker {
    pub examples: Arc<Examples>,
    pub masker: Arc<dyn Masker>,
    pub batch_size: usize,
    pub seed: u64,
    pub pad_id: i64,
    /// Order each epoch so that batches hold examples of similar length.
    pub group_by_length: bool,
}

/// Examples per length-sorted group, in batches (transformers uses 50 too).
const GROUP_BATCHES: usize = 50;

impl BatchMaker {
    pub fn batches_per_epoch(&self) -> u64 {
        self.examples.len().div_ceil(self.batch_size) as u64
    }

    /// The epoch's example order: a shuffle; with `group_by_length`, each run of
    /// `GROUP_BATCHES` batches in it is then sorted by length and cut into
    /// batches, whose order within the run is shuffled again, so a batch pads
    /// to a length close to its own and lengths do not trend over the steps.
    fn permutation(&self, epoch: u64) -> Vec<usize> {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(epoch);
        let mut order: Vec<usize> = (0..self.examples.len()).collect();
        order.shuffle(&mut rng);
        if self.group_by_length {
            let size = self.batch_size;
            let mut grouped = Vec::with_capacity(order.len());
            for group in order.chunks(size * GROUP_BATCHES) {
                let mut group = group.to_vec();
                group.sort_by_key(|&i| std::cmp::Reverse(self.examples.example_len(i)));
                let mut batches: Vec<&[usize]> = group.chunks(size).collect();
                // A short last batch stays last: batch() cuts the order every `size`.
                let full = group.len() / size;
                batches[..full].shuffle(&mut rng);
                grouped.extend(batches.concat());
            }
            order = grouped;
        }
        order
    }

    /// Micro-batch number `i` (counting from 0 over the whole run).
    pub fn batch(&self, i: u64, cache: &mut Option<(u64, Vec<usize>)>) -> Result<Batch> {
        let per_epoch = self.batches_per_epoch();
        let (epoch, pos) = (i / per_epoch, (i % per_epoch) as usize);
        if cache.as_ref().is_none_or(|(e, _)| *e != epoch) {
            *cache = Some((epoch, self.permutation(epoch)));
        }
        let order = &cache.as_ref().expect("just filled").1;
        let rows = &order[pos * self.batch_size..((pos + 1) * self.batch_size).min(order.len())];
        // Masks: seed's key, stream u64::MAX - i keeps them apart from the shuffle streams.
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(u64::MAX - i);
        masked(&self.examples, rows, self.masker.as_ref(), &mut rng, self.pad_id)
    }

    /// The documents (numbered in the split) micro-batch `i` takes its examples from.
    pub fn documents(&self, i: u64) -> Vec<usize> {
        let per_epoch = self.batches_per_epoch();
        let (epoch, pos) = (i / per_epoch, (i % per_epoch) as usize);
        let order = self.permutation(epoch);
        let rows = &order[pos * self.batch_size..((pos + 1) * self.batch_size).min(order.len())];
        let mut docs: Vec<usize> = rows.iter().flat_map(|&r| self.examples.documents_of(r)).collect();
        docs.sort();
        docs.dedup();
        docs
    }

    /// Builds the micro-batches numbered by `indices`, in that order, on a
    /// background thread, a few ahead.
    pub fn prefetch(self: Arc<Self>, indices: impl Iterator<Item = u64> + Send + 'static) -> Receiver<Result<Batch>> {
        let (tx, rx) = sync_channel(4);
        std::thread::Builder::new()
            .name("batches".into())
            .spawn(move || {
                let mut cache = None;
                for i in indices {
                    let batch = self.batch(i, &mut cache);
                    let failed = batch.is_err();
                    if tx.send(batch).is_err() || failed {
                        return; // the trainer stopped early, or masking failed
                    }
                }
            })
            .expect("spawning the batch thread");
        rx
    }
}

/// Held-out batches with masks fixed by a seed, built once: every eval of a
/// run, and every run with the same data and `eval.seed`, scores the same tokens.
pub struct EvalSet {
    pub batches: Vec<Batch>,
    /// The same sequences unmasked, for metrics that run the model themselves.
    pub sequences: Vec<Vec<i64>>,
}

impl EvalSet {
    pub fn new(examples: &Examples, masker: &dyn Masker, batch_size: usize, max_sequences: Option<usize>, seed: u64, pad_id: i64) -> Result<Self> {
        let n = max_sequences.map_or(examples.len(), |m| m.min(examples.len()));
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let all: Vec<usize> = (0..n).collect();
        let batches = all.chunks(batch_size.max(1)).map(|idx| masked(examples, idx, masker, &mut rng, pad_id)).collect::<Result<_>>()?;
        Ok(EvalSet { batches, sequences: (0..n).map(|i| examples.ids(i)).collect() })
    }

    pub fn sequences(&self) -> usize {
        self.batches.iter().map(|b| b.rows).sum()
    }

    pub fn masked_tokens(&self) -> usize {
        self.batches.iter().map(|b| b.masked()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keeps every token; labels the first one.
    struct NoMask;
    impl Masker for NoMask {
        fn mask(&self, ids: &[i64], _: &mut dyn rand::RngCore) -> Result<MaskedSequence> {
            let mut labels = vec![IGNORE_INDEX; ids.len()];
            labels[0] = ids[0];
            Ok(MaskedSequence { input_ids: ids.to_vec(), labels })
        }
    }

    /// 1000 examples of lengths 3..=130, in a random order.
    fn maker(group_by_length: bool) -> BatchMaker {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut lengths: Vec<usize> = (0..1000).map(|i| 3 + i % 128).collect();
        lengths.shuffle(&mut rng);
        let examples = Examples::Listed(lengths.into_iter().enumerate().map(|(i, len)| vec![i as u32; len]).collect());
        BatchMaker { examples: Arc::new(examples), masker: Arc::new(NoMask), batch_size: 8, seed: 0, pad_id: 0, group_by_length }
    }

    fn epoch(maker: &BatchMaker, epoch: u64) -> Vec<Batch> {
        let n = maker.batches_per_epoch();
        let mut cache = None;
        (epoch * n..(epoch + 1) * n).map(|i| maker.batch(i, &mut cache).unwrap()).collect()
    }

    #[test]
    fn grouping_by_length_cuts_padding_and_keeps_every_example_once() {
        let (plain, grouped) = (maker(false), maker(true));
        let padded = |batches: &[Batch]| batches.iter().map(|b| b.rows * b.cols).sum::<usize>();
        let real: usize = plain.examples.num_tokens();
        let (p, g) = (epoch(&plain, 0), epoch(&grouped, 0));
        assert_eq!(g.iter().map(|b| b.tokens).sum::<usize>(), real);
        // Each example appears in exactly one batch (its tokens are its index).
        let mut seen: Vec<i64> = g.iter().flat_map(|b| b.labels.iter().copied().filter(|&l| l != IGNORE_INDEX)).collect();
        seen.sort();
        assert_eq!(seen, (0..1000).collect::<Vec<i64>>());
        assert!(padded(&p) as f64 > 1.5 * real as f64, "random batches pad a lot: {} for {real}", padded(&p));
        assert!((padded(&g) as f64) < 1.1 * real as f64, "grouped batches pad little: {} for {real}", padded(&g));
        // Batch lengths do not run longest to shortest within a group.
        let cols: Vec<usize> = g.iter().take(GROUP_BATCHES).map(|b| b.cols).collect();
        assert!(cols.windows(2).any(|w| w[0] < w[1]), "{cols:?}");
        // A new epoch, a new order; the same epoch, the same batches.
        assert_ne!(epoch(&grouped, 1), g);
        assert_eq!(epoch(&grouped, 0), g);
    }
}
