//! Sparse execution against the plain definition: the bitmask compressed-row kernels equal the dense
//! product with zeros (up to summation order) on awkward shapes, both instruction-set paths, any
//! thread count bit for bit; a pruned random model gives the same logits sparse and dense.

mod common;
use candle_core::{DType, Device, Tensor};
use common::rel_diff;
use dlpx::model::synthetic::{random_model, random_windows};
use dlpx::model::LlamaConfig;
use dlpx::rng::SplitMix64;
use dlpx::sparse::kernels::{gemm_with, gemv_with, Isa, TILE};
use dlpx::sparse::{SparseMatrix, SparseMode};
use proptest::prelude::*;

/// A `[rows, cols]` matrix whose entries are zero with probability `p` (plus, by `kind`, an
/// empty row, a full row, or an N:M pattern).
fn matrix(rows: usize, cols: usize, p: f64, kind: u8, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed);
    let mut w: Vec<f32> = (0..rows * cols)
        .map(|_| {
            let keep = unit(&mut rng) >= p;
            let v = (unit(&mut rng) * 2.0 - 1.0) as f32;
            if keep {
                v
            } else {
                0.0
            }
        })
        .collect();
    match kind {
        1 if rows > 0 => w[..cols].iter_mut().for_each(|x| *x = 0.0),
        2 if rows > 1 => w[cols..2 * cols]
            .iter_mut()
            .enumerate()
            .for_each(|(j, x)| *x = 0.5 + j as f32 * 1e-3),
        3 => {
            // 2:4 — in every group of 4 columns keep the first two (cols padded by the caller).
            for (i, x) in w.iter_mut().enumerate() {
                let c = i % cols;
                *x = if c % 4 < 2 {
                    0.25 + (i % 7) as f32
                } else {
                    0.0
                };
            }
        }
        _ => {}
    }
    w
}

/// A uniform draw in [0, 1).
fn unit(rng: &mut SplitMix64) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// The plain definition in f64: `y[t, r] = Σ_c x[t, c] w[r, c]`, and `Σ |x w|` for the bound.
fn reference(w: &[f32], x: &[f32], n: usize, rows: usize, cols: usize) -> (Vec<f64>, Vec<f64>) {
    let mut y = vec![0f64; n * rows];
    let mut mag = vec![0f64; n * rows];
    for t in 0..n {
        for r in 0..rows {
            for c in 0..cols {
                let p = x[t * cols + c] as f64 * w[r * cols + c] as f64;
                y[t * rows + r] += p;
                mag[t * rows + r] += p.abs();
            }
        }
    }
    (y, mag)
}

fn inputs(n: usize, cols: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed ^ 0x5EED);
    (0..n * cols)
        .map(|_| (unit(&mut rng) * 4.0 - 2.0) as f32)
        .collect()
}

fn isas() -> Vec<Isa> {
    match Isa::detect() {
        Isa::Avx512 => vec![Isa::Avx512, Isa::Portable],
        Isa::Portable => vec![Isa::Portable],
    }
}

/// f32 summation in any order is within `cols · ε · Σ|x w|` of the exact sum.
fn assert_close(got: &[f32], want: &[f64], mag: &[f64], cols: usize, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: output length");
    for (i, ((&g, &e), &m)) in got.iter().zip(want).zip(mag).enumerate() {
        let tol = (cols as f64 + 2.0) * f32::EPSILON as f64 * m + 1e-30;
        assert!(
            (g as f64 - e).abs() <= tol,
            "{what}: element {i}: {g} vs {e} (tolerance {tol:e})"
        );
    }
}

fn check(rows: usize, cols: usize, n: usize, p: f64, kind: u8, seed: u64) {
    let w = matrix(rows, cols, p, kind, seed);
    let s = SparseMatrix::from_dense(&w, rows, cols).unwrap();
    assert_eq!(s.to_dense(), w, "round trip");
    assert_eq!(s.nnz(), w.iter().filter(|&&v| v != 0.0).count());
    let x = inputs(n, cols, seed);
    let (want, mag) = reference(&w, &x, n, rows, cols);
    for isa in isas() {
        let mut y = vec![f32::NAN; n * rows];
        gemm_with(isa, s.blocked(), &x, n, &mut y);
        assert_close(
            &y,
            &want,
            &mag,
            cols,
            &format!("gemm {isa:?} {rows}x{cols} n {n}"),
        );
        let mut y1 = vec![f32::NAN; rows];
        gemv_with(isa, s.blocked(), &x[..cols], &mut y1);
        assert_close(
            &y1,
            &want[..rows],
            &mag[..rows],
            cols,
            &format!("gemv {isa:?} {rows}x{cols}"),
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Random shapes (columns rarely a multiple of 16), sparsity from 0 to 1, 1 to 150 tokens
    /// (partial tiles), with an empty row, a full row, or neither.
    #[test]
    fn kernels_equal_the_dense_product(
        rows in 1usize..80, cols in 1usize..700, n in 1usize..150,
        p in 0.0f64..=1.0, kind in 0u8..3, seed in any::<u64>(),
    ) {
        check(rows, cols, n, p, kind, seed);
    }
}

#[test]
fn edge_cases_all_zero_dense_and_two_of_four() {
    // All zeros: every output is exactly zero.
    check(7, 33, 5, 1.0, 0, 1);
    // No zeros at all.
    check(9, 17, 70, 0.0, 0, 2);
    // 2:4 on a width that is a multiple of 4 but not of 16.
    check(12, 36, 65, 0.0, 3, 3);
    // Several column blocks (the last one partial), many tokens (tile-parallel and row-parallel paths).
    check(40, 1100, 2 * TILE + 3, 0.7, 1, 4);
    check(300, 512, 3, 0.7, 2, 5);
    // Thousands of sparse blocks and one full row (every quarter of its masks full, so the
    // 16-value loads reach the next row and, at the end, the padding).
    check(3000, 64, 2, 0.8, 2, 6);
    check(1500, 130, 2, 0.6, 2, 7);
}

/// An infinite weight makes its own row infinite and no other: the matrix–vector kernel's lanes
/// past a quarter's kept weights multiply zeros by the following values, which must not turn
/// `0 · ∞` into a NaN elsewhere.
#[test]
fn an_infinite_weight_stays_in_its_row() {
    let (rows, cols) = (4, 40);
    let mut w = matrix(rows, cols, 0.7, 0, 11);
    w[cols + 3] = f32::INFINITY; // row 1, column 3
    let s = SparseMatrix::from_dense(&w, rows, cols).unwrap();
    let x: Vec<f32> = (0..cols).map(|c| 1.0 + c as f32 * 0.01).collect();
    for isa in isas() {
        let mut y = vec![0f32; rows];
        gemv_with(isa, s.blocked(), &x, &mut y);
        assert_eq!(y[1], f32::INFINITY, "{isa:?}");
        for r in [0, 2, 3] {
            let want: f64 = (0..cols)
                .map(|c| w[r * cols + c] as f64 * x[c] as f64)
                .sum();
            assert!(
                (y[r] as f64 - want).abs() < 1e-4,
                "{isa:?} row {r}: {}",
                y[r]
            );
        }
    }
}

/// The decode attention's weighted sum `out[d] = Σ_j p[j] v[j·stride + d]` equals the scalar
/// loop (a multiply then an add per position, in order) bit for bit, for head sizes around the
/// 16- and 64-lane steps and rows longer than the output.
#[test]
fn weighted_rows_equal_the_scalar_loop() {
    for (n, stride) in [
        (0, 4),
        (1, 1),
        (5, 8),
        (16, 16),
        (17, 20),
        (64, 64),
        (80, 80),
        (130, 131),
    ] {
        for positions in [0, 1, 7, 40] {
            let p = inputs(1, positions, (n + positions) as u64);
            let v = inputs(1, positions.max(1) * stride, 7 + n as u64);
            let mut want = vec![0f32; n];
            for (j, &pj) in p.iter().enumerate() {
                for (d, o) in want.iter_mut().enumerate() {
                    *o += pj * v[j * stride + d];
                }
            }
            let mut got = vec![f32::NAN; n];
            dlpx::sparse::kernels::weighted_rows(&p, &v, stride, &mut got);
            assert_eq!(got, want, "n {n}, stride {stride}, {positions} positions");
        }
    }
}

/// Big enough for the parallel paths; the result must not depend on the thread count.
#[test]
fn bits_do_not_depend_on_the_thread_count() {
    let (rows, cols) = (1536, 576);
    let w = matrix(rows, cols, 0.7, 0, 9);
    let s = SparseMatrix::from_dense(&w, rows, cols).unwrap();
    let run = |threads: usize, n: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let x = inputs(n, cols, 7);
        pool.install(|| {
            let mut y = vec![0f32; n * rows];
            match n {
                1 => gemv_with(Isa::detect(), s.blocked(), &x, &mut y),
                _ => gemm_with(Isa::detect(), s.blocked(), &x, n, &mut y),
            }
            y
        })
    };
    for n in [1, 5, 300] {
        let one = run(1, n);
        assert!(one.iter().any(|&v| v != 0.0));
        assert_eq!(one, run(4, n), "n = {n}: 1 vs 4 threads");
        assert_eq!(one, run(3, n), "n = {n}: 1 vs 3 threads");
    }
}

fn tiny_config() -> LlamaConfig {
    LlamaConfig::from_hf_json(
        r#"{"architectures":["LlamaForCausalLM"],"model_type":"llama","hidden_size":96,
        "intermediate_size":200,"num_attention_heads":6,"num_key_value_heads":2,
        "num_hidden_layers":2,"rms_norm_eps":1e-5,"rope_theta":10000.0,"vocab_size":128,
        "max_position_embeddings":256,"tie_word_embeddings":true}"#,
    )
    .unwrap()
}

/// A random model pruned to 70 % (half the linears to 40 %, which `auto` keeps dense):
/// sparse and dense-with-zeros give the same logits, full and KV-cached, and `off` frees nothing.
#[test]
fn pruned_model_runs_the_same_sparse_and_dense() {
    let dev = Device::Cpu;
    let mut m = random_model(&tiny_config(), 2, 128, 11, &dev, DType::F32).unwrap();
    m.set_sparse(SparseMode::Off).unwrap();
    let mut rng = SplitMix64::new(3);
    for (bi, b) in m.blocks.iter_mut().enumerate() {
        for (k, l) in b.linears.iter_mut().enumerate() {
            let p = if (bi + k) % 2 == 0 { 0.7 } else { 0.4 };
            let (rows, cols) = (l.out_features(), l.in_features());
            let keep: Vec<u8> = (0..rows * cols)
                .map(|_| u8::from(unit(&mut rng) >= p))
                .collect();
            l.set_mask(Tensor::from_vec(keep, (rows, cols), &dev).unwrap())
                .unwrap();
        }
    }
    let dense_bytes = m.linear_bytes();
    let ids = Tensor::new(random_windows(2, 20, 128, 5), &dev).unwrap();
    let dense = m.forward(&ids, 0, None).unwrap();
    let mut sparse_m = m.clone();
    sparse_m.set_sparse(SparseMode::Auto).unwrap();
    let n_sparse = sparse_m
        .blocks
        .iter()
        .flat_map(|b| b.linears.iter())
        .filter(|l| l.sparse().is_some())
        .count();
    assert_eq!(n_sparse, 7, "auto: the 70 % linears only");
    assert!(sparse_m.linear_bytes() < dense_bytes);
    let sparse = sparse_m.forward(&ids, 0, None).unwrap();
    let rel = rel_diff(&dense, &sparse);
    assert!(rel < 1e-5, "logits differ by {rel:e} relative");
    // KV-cached decode (gemv path), token by token.
    let row: Vec<u32> = random_windows(1, 12, 128, 8).remove(0);
    let mut c1 = dlpx::model::llama::KvCache::new(2);
    let mut c2 = dlpx::model::llama::KvCache::new(2);
    for (i, &t) in row.iter().enumerate() {
        let x = Tensor::new(&[[t]], &dev).unwrap();
        let a = m.forward_last(&x, i, Some(&mut c1)).unwrap();
        let b = sparse_m.forward_last(&x, i, Some(&mut c2)).unwrap();
        let rel = rel_diff(&a, &b);
        assert!(rel < 1e-5, "step {i}: {rel:e}");
    }
    // Back to dense: the same weights as before.
    let mut back = sparse_m.clone();
    back.set_sparse(SparseMode::Off).unwrap();
    assert_eq!(back.linear_bytes(), dense_bytes);
    for (a, b) in back.blocks.iter().zip(&m.blocks) {
        for (la, lb) in a.linears.iter().zip(&b.linears) {
            assert_eq!(
                la.weight().unwrap().to_vec2::<f32>().unwrap(),
                lb.weight().unwrap().to_vec2::<f32>().unwrap()
            );
        }
    }
}
