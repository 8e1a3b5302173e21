//! Rows that hold several documents (`MlmBatch::documents`, from
//! `data.document_attention`): each token's position within its document, and
//! which keys each query may see (the real tokens of its own document). A
//! query that would see none (a padding position) sees itself, so no softmax
//! row is empty.

use tch::{Device, Kind, Tensor};

/// Each token's position: its index in the row, or in its document when rows
/// hold several. (1, T) or (B, T) int64.
pub fn positions(t: i64, documents: Option<&Tensor>, device: Device) -> Tensor {
    let index = Tensor::arange(t, (Kind::Int64, device)).unsqueeze(0); // (1, T)
    let Some(docs) = documents else { return index };
    let index = index.expand_as(docs);
    // A document starts where the number changes; each token counts from the last start.
    let previous = Tensor::cat(&[docs.narrow(1, 0, 1) - 1, docs.narrow(1, 0, t - 1)], 1);
    let starts = index.where_self(&docs.ne_tensor(&previous), &index.zeros_like());
    &index - starts.cummax(1).0
}

/// (B, 1, T, T) bool: query `i` may see key `j` when `j` is a real token
/// (`attention_mask` 1) of `i`'s document; a query that would see nothing sees itself.
pub fn keys_within(attention_mask: &Tensor, documents: &Tensor) -> Tensor {
    let (b, t) = attention_mask.size2().expect("attention_mask is (B, T)");
    let same = documents.view([b, 1, t, 1]).eq_tensor(&documents.view([b, 1, 1, t]));
    let keys = attention_mask.eq(1).view([b, 1, 1, t]).logical_and(&same);
    with_self_if_empty(&keys, &Tensor::eye(t, (Kind::Bool, attention_mask.device())))
}

/// `allowed` with each query that sees no key given itself (`own`: where a
/// query meets its own key, broadcast against `allowed`).
pub fn with_self_if_empty(allowed: &Tensor, own: &Tensor) -> Tensor {
    let empty = allowed.any_dim(-1, true).logical_not();
    allowed.logical_or(&own.logical_and(&empty))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_restart_at_each_document() {
        let docs = Tensor::from_slice2(&[[0i64, 0, 0, 1, 1, 2, -1, -1], [0, 0, 0, 0, 0, 0, 0, 0]]);
        let got = Vec::<i64>::try_from(&positions(8, Some(&docs), Device::Cpu).flatten(0, -1)).unwrap();
        assert_eq!(got, [0, 1, 2, 0, 1, 0, 0, 1, 0, 1, 2, 3, 4, 5, 6, 7]);
    }

    #[test]
    fn queries_see_the_real_keys_of_their_document() {
        let docs = Tensor::from_slice2(&[[0i64, 0, 1, -1]]);
        let mask = Tensor::from_slice2(&[[1i64, 1, 1, 0]]);
        let got = Vec::<bool>::try_from(&keys_within(&mask, &docs).flatten(0, -1)).unwrap();
        #[rustfmt::skip]
        let want = [true, true, false, false,  true, true, false, false,  false, false, true, false,  false, false, false, true];
        assert_eq!(got, want);
    }
}
