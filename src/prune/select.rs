//! Exact order statistics of large f32 sets on all cores: a radix select. The top 16 bits of each
//! value's order-preserving key make a histogram (integer counts, so the same whatever the
//! split); the one bucket that holds the wanted rank is then selected exactly. Used for the
//! block median (statistics) and the magnitude threshold (masks).

use rayon::prelude::*;

/// Values per parallel task in the passes over scores.
const PAR_CHUNK: usize = 1 << 16;

/// Histogram of the top 16 bits of each value's order key, over all cores (integer counts, so
/// exact whatever the split).
pub fn key_histogram(part: &[f32]) -> Vec<usize> {
    part.par_chunks(PAR_CHUNK)
        .fold(
            || vec![0usize; 1 << 16],
            |mut h, c| {
                c.iter()
                    .for_each(|&v| h[(order_key(v) >> 16) as usize] += 1);
                h
            },
        )
        .reduce(
            || vec![0usize; 1 << 16],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                a
            },
        )
}

/// The `k`-th smallest value (0-based, `f32::total_cmp` order) of `values`, exactly: a
/// histogram on all cores, then a selection inside one bucket.
pub fn kth_smallest(values: &[f32], k: usize) -> f32 {
    let (bucket, below) = bucket_of(&key_histogram(values), k);
    let mut inside = bucket_values(values, bucket);
    let (_, &mut v, _) = inside.select_nth_unstable_by(k - below, |a, b| a.total_cmp(b));
    v
}

/// The histogram bucket that holds rank `k`, and the count of values in the buckets below it.
pub fn bucket_of(hist: &[usize], k: usize) -> (usize, usize) {
    let mut below = 0;
    for (b, &c) in hist.iter().enumerate() {
        if below + c > k {
            return (b, below);
        }
        below += c;
    }
    (0, 0)
}

/// The values of `part` whose key falls in histogram bucket `bucket`.
pub fn bucket_values(part: &[f32], bucket: usize) -> Vec<f32> {
    part.par_iter()
        .copied()
        .filter(|&v| (order_key(v) >> 16) as usize == bucket)
        .collect()
}

/// A u32 whose unsigned order is `f32::total_cmp`'s order.
fn order_key(v: f32) -> u32 {
    let b = v.to_bits();
    if b >> 31 == 1 {
        !b
    } else {
        b | 0x8000_0000
    }
}
