//! Each fused training op against the composed candle ops it replaces: values and the
//! gradients of every input, on random shapes (odd sizes, grouped-query heads).

use candle_core::{Device, Tensor, Var, D};

use super::*;

fn randn(dims: &[usize], seed: u64) -> Tensor {
    let mut rng = crate::rng::SplitMix64::new(seed);
    let n: usize = dims.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| ((rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0)
        .collect();
    Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
}

/// `max |a − b| / max(max |b|, 1e-2)`: relative to the reference's scale, absolute where the
/// reference is (mathematically) zero, as a single token's query gradient or a one-element
/// norm's input gradient are, up to rounding. Inputs and upstream gradients are of order 1.
fn rel(a: &Tensor, b: &Tensor) -> f32 {
    let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
    let s = b.abs().unwrap().max_all().unwrap();
    d.to_scalar::<f32>().unwrap() / s.to_scalar::<f32>().unwrap().max(1e-2)
}

/// Values of `f` on fresh variables `inputs`, and the gradients of `Σ f(inputs) · g` for a
/// random `g`.
fn value_and_grads(
    f: impl Fn(&[Tensor]) -> Tensor,
    inputs: &[Tensor],
    seed: u64,
) -> (Tensor, Vec<Tensor>) {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(t).unwrap())
        .collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let y = f(&ts);
    let g = randn(y.dims(), seed);
    let grads = (&y * g).unwrap().sum_all().unwrap().backward().unwrap();
    let gs = ts.iter().map(|t| grads.get(t).unwrap().clone()).collect();
    (y.detach(), gs)
}

/// The fused op `fused` and the composed `composed` agree on values and every gradient to
/// `tol` relative to the largest reference magnitude.
fn check(
    what: &str,
    fused: impl Fn(&[Tensor]) -> Tensor,
    composed: impl Fn(&[Tensor]) -> Tensor,
    inputs: &[Tensor],
    tol: f32,
) {
    let (yf, gf) = value_and_grads(fused, inputs, 99);
    let (yc, gc) = value_and_grads(composed, inputs, 99);
    assert_eq!(yf.dims(), yc.dims(), "{what}: shape");
    let e = rel(&yf, &yc);
    assert!(e < tol, "{what}: values differ by {e}");
    for (i, (a, b)) in gf.iter().zip(&gc).enumerate() {
        let e = rel(a, b);
        assert!(e < tol, "{what}: gradient of input {i} differs by {e}");
    }
}

#[test]
fn rms_norm_matches_the_composed_norm() {
    for (i, dims) in [vec![1, 1], vec![3, 7], vec![2, 5, 33], vec![4, 64, 576]]
        .into_iter()
        .enumerate()
    {
        let d = *dims.last().unwrap();
        let w = randn(&[d], 7 + i as u64);
        let x = randn(&dims, i as u64);
        check(
            &format!("rms norm {dims:?}"),
            |t| rms_norm(&t[0], &w, 1e-5).unwrap().unwrap(),
            |t| candle_nn::ops::rms_norm_slow(&t[0], &w, 1e-5).unwrap(),
            &[x],
            1e-5,
        );
    }
}

#[test]
fn rope_matches_the_composed_rope() {
    for (i, &(b, h, t, d)) in [(1, 1, 1, 2), (2, 3, 5, 8), (1, 2, 7, 6), (2, 9, 33, 64)]
        .iter()
        .enumerate()
    {
        let angles: Vec<f32> = (0..t * d / 2)
            .map(|j| (j / (d / 2)) as f32 * 0.3 / (1 + j % (d / 2)) as f32)
            .collect();
        let a = Tensor::from_vec(angles, (t, d / 2), &Device::Cpu).unwrap();
        let (cos, sin) = (a.cos().unwrap(), a.sin().unwrap());
        let x = randn(&[b, h, t, d], 20 + i as u64);
        check(
            &format!("rope {b}x{h}x{t}x{d}"),
            |x| rope(&x[0], &cos, &sin).unwrap().unwrap(),
            |x| candle_nn::rotary_emb::rope_slow(&x[0], &cos, &sin).unwrap(),
            &[x],
            1e-5,
        );
    }
    // Per-row tables (packed sequences) are left to the composed op.
    let x = randn(&[2, 1, 3, 4], 1);
    let c = randn(&[2, 3, 2], 2);
    assert!(rope(&x, &c, &c).unwrap().is_none());
}

#[test]
fn softmax_matches_the_composed_softmax() {
    for (i, dims) in [vec![1, 1], vec![4, 9], vec![2, 3, 17], vec![2, 4, 255]]
        .into_iter()
        .enumerate()
    {
        // Some masked entries, as attention scores have.
        let x = randn(&dims, 40 + i as u64);
        let n = *dims.last().unwrap();
        let mask: Vec<f32> = (0..x.elem_count())
            .map(|j| match j % n > 0 && j % 3 == 0 {
                true => f32::NEG_INFINITY,
                false => 0.0,
            })
            .collect();
        let mask = Tensor::from_vec(mask, dims.as_slice(), &Device::Cpu).unwrap();
        check(
            &format!("softmax {dims:?}"),
            |t| {
                softmax_last_dim(&(&t[0] + &mask).unwrap())
                    .unwrap()
                    .unwrap()
            },
            |t| candle_nn::ops::softmax(&(&t[0] + &mask).unwrap(), D::Minus1).unwrap(),
            &[x],
            1e-5,
        );
    }
}

/// The composed causal attention of `Llama`'s block before this module: repeated keys and
/// values, full scores, the additive mask, softmax, weighted values.
fn composed_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Tensor {
    let (b, nh, t, _) = q.dims4().unwrap();
    let (_, nkv, _, d) = k.dims4().unwrap();
    let rep = |x: &Tensor| {
        x.unsqueeze(2)
            .unwrap()
            .expand((b, nkv, nh / nkv, t, d))
            .unwrap()
            .reshape((b, nh, t, d))
            .unwrap()
    };
    let mask: Vec<f32> = (0..t * t)
        .map(|ij| match ij % t > ij / t {
            true => f32::NEG_INFINITY,
            false => 0.0,
        })
        .collect();
    let mask = Tensor::from_vec(mask, (t, t), &Device::Cpu).unwrap();
    let att = (q.matmul(&rep(k).t().unwrap()).unwrap() * scale).unwrap();
    let att = candle_nn::ops::softmax(&att.broadcast_add(&mask).unwrap(), D::Minus1).unwrap();
    att.matmul(&rep(v)).unwrap()
}

#[test]
fn causal_attention_matches_the_composed_attention() {
    // (batch, heads, kv heads, tokens, head dim): one token, GQA, MHA, odd lengths, head dims
    // that are and are not multiples of 16 (the kernel's two paths).
    for (i, &(b, nh, nkv, t, hd)) in [
        (1, 1, 1, 1, 16),
        (2, 6, 2, 17, 64),
        (1, 4, 4, 9, 12),
        (1, 3, 1, 65, 80),
        (2, 9, 3, 40, 64),
    ]
    .iter()
    .enumerate()
    {
        let s = 100 + 3 * i as u64;
        let q = randn(&[b, nh, t, hd], s);
        let k = randn(&[b, nkv, t, hd], s + 1);
        let v = randn(&[b, nkv, t, hd], s + 2);
        let scale = 1.0 / (hd as f64).sqrt();
        check(
            &format!("attention {b}x{nh}/{nkv}x{t}x{hd}"),
            |x| {
                causal_attention(&x[0], &x[1], &x[2], scale)
                    .unwrap()
                    .unwrap()
            },
            |x| composed_attention(&x[0], &x[1], &x[2], scale),
            &[q, k, v],
            2e-5,
        );
    }
}

#[test]
fn other_dtypes_are_left_to_the_composed_ops() {
    let x = randn(&[2, 3], 5).to_dtype(DType::BF16).unwrap();
    let w = randn(&[3], 6);
    assert!(rms_norm(&x, &w, 1e-5).unwrap().is_none());
    assert!(softmax_last_dim(&x).unwrap().is_none());
    // A trainable norm weight needs its own gradient, which these ops do not give.
    let wv = Var::from_tensor(&w).unwrap();
    assert!(rms_norm(&randn(&[2, 3], 7), wv.as_tensor(), 1e-5)
        .unwrap()
        .is_none());
}

#[test]
fn cross_entropy_matches_candles() {
    for (i, &(rows, vocab)) in [(1, 1), (3, 17), (37, 301), (8, 4099)].iter().enumerate() {
        let x = (randn(&[rows, vocab], 60 + i as u64) * 3.0).unwrap();
        let t: Vec<u32> = (0..rows as u32)
            .map(|r| (r * 7 + 3) % vocab as u32)
            .collect();
        let t = Tensor::from_vec(t, rows, &Device::Cpu).unwrap();
        check(
            &format!("cross-entropy {rows}x{vocab}"),
            |x| cross_entropy(&x[0], &t).unwrap().unwrap(),
            |x| candle_nn::loss::cross_entropy(&x[0], &t).unwrap(),
            &[x],
            1e-5,
        );
    }
    let x = randn(&[2, 5], 1);
    let bad = Tensor::new(&[1u32, 5], &Device::Cpu).unwrap();
    assert!(cross_entropy(&x, &bad).is_err());
}

#[test]
fn swiglu_matches_the_composed_one() {
    for (i, n) in [1usize, 17, 1000, 40_000].into_iter().enumerate() {
        let g = (randn(&[n], 80 + i as u64) * 4.0).unwrap();
        let u = randn(&[n], 90 + i as u64);
        check(
            &format!("swiglu {n}"),
            |x| swiglu(&x[0], &x[1]).unwrap().unwrap(),
            |x| (candle_nn::ops::silu(&x[0]).unwrap() * &x[1]).unwrap(),
            &[g, u],
            1e-5,
        );
    }
}
