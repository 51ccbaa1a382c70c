//! Sparse execution on the real demo model pruned by Wanda-DLP at p 0.7: the compressed-row
//! model and the same weights dense-with-zeros give the same logits (1e-4 relative), the same
//! perplexity (1e-5 relative) and the same greedy generations of the explorer's four default
//! prompts; the kernels give the same bits on 1 and 4 threads on every real pruned linear; the
//! pruned linears hold at most 0.40× the dense bytes.

mod common;
use candle_core::{DType, Device, Tensor};
use common::rel_diff;
use dlpx::data::{windows, DemoSplit, TextSource};
use dlpx::eval::generate::{generate, GenParams};
use dlpx::eval::perplexity::perplexity;
use dlpx::model::{self, LoadedModel, ModelSource};
use dlpx::prune::pipeline::{plan, prune_preview, Mode, PruneParams};
use dlpx::prune::stats::calibrate;
use dlpx::sparse::kernels::{gemm_with, gemv_with, Isa};
use dlpx::sparse::SparseMode;

fn protocol_windows(m: &LoadedModel, split: DemoSplit, n: usize) -> Vec<Vec<u32>> {
    let text = TextSource::Demo(split).load(&mut |_| {}).unwrap();
    windows(&m.encode(&text).unwrap(), 256, n, "demo").unwrap()
}

#[test]
fn demo_at_70_percent_runs_the_same_sparse_and_dense() {
    let mut m = model::load(&ModelSource::Demo, &Device::Cpu, DType::F32, &mut |_| {}).unwrap();
    m.llama.set_sparse(SparseMode::Off).unwrap();
    let dense_bytes = m.llama.linear_bytes();
    let calib = protocol_windows(&m, DemoSplit::Calib, 32);
    let eval = protocol_windows(&m, DemoSplit::Eval, 8);
    let cal = calibrate(&m.llama, &calib, 5.0, false, &mut |_| true).unwrap();
    let p = PruneParams {
        mode: Mode::Preview,
        ..PruneParams::default()
    };
    let pl = plan(&m.llama, &cal, &p).unwrap();
    prune_preview(&mut m.llama, &cal, &pl, &p).unwrap();
    assert_eq!(m.llama.sparse_linears(), 0, "off keeps every linear dense");
    let zeros = m.llama.clone();
    let mut sparse = m.llama.clone();
    sparse.set_sparse(SparseMode::Auto).unwrap();
    // DLP at p 0.7 spreads the blocks over 0.55..0.85: auto runs all 210 linears sparse.
    assert_eq!(sparse.sparse_linears(), 7 * sparse.blocks.len());
    let ratio = sparse.linear_bytes() as f64 / dense_bytes as f64;
    assert!(
        ratio <= 0.40,
        "sparse linears hold {ratio:.3}× the dense bytes"
    );

    // Logits of two full windows (the gemm path).
    let ids = Tensor::new(eval[..2].to_vec(), &Device::Cpu).unwrap();
    let a = zeros.forward(&ids, 0, None).unwrap();
    let b = sparse.forward(&ids, 0, None).unwrap();
    let rel = rel_diff(&a, &b);
    assert!(rel < 1e-4, "logits differ by {rel:e} relative");

    // Perplexity over 8 windows.
    let pa = perplexity(&zeros, &eval, &mut |_, _| true).unwrap();
    let pb = perplexity(&sparse, &eval, &mut |_, _| true).unwrap();
    assert_eq!(pa.tokens, pb.tokens);
    let rel = (pa.ppl - pb.ppl).abs() / pa.ppl;
    assert!(rel < 1e-5, "perplexity {} vs {}: {rel:e}", pa.ppl, pb.ppl);

    // Greedy generations (the gemv path, KV-cached) of the four default prompts.
    let params = GenParams {
        max_new_tokens: 24,
        ..GenParams::default()
    };
    for prompt in dlpx::app::DEFAULT_PROMPTS {
        let run = |llama: &dlpx::model::Llama| {
            let view = LoadedModel {
                llama: llama.clone(),
                ..m.clone()
            };
            generate(&view, prompt, &params, &mut |_| true).unwrap()
        };
        let (ga, gb) = (run(&zeros), run(&sparse));
        assert!(!ga.tokens.is_empty(), "{prompt}: no tokens");
        assert_eq!(ga.tokens, gb.tokens, "{prompt}: greedy tokens differ");
    }

    // Every real pruned linear: the same bits on 1 and 4 threads, one input and a tile.
    let run = |threads: usize, f: &(dyn Fn() -> Vec<f32> + Sync)| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(f)
    };
    for blk in sparse.blocks.iter().step_by(7) {
        for l in &blk.linears {
            let s = l.sparse().expect("sparse linear");
            let cols = s.cols();
            let x: Vec<f32> = (0..70 * cols)
                .map(|i| ((i % 91) as f32 - 45.0) / 30.0)
                .collect();
            let gemv = || {
                let mut y = vec![0f32; s.rows()];
                gemv_with(Isa::detect(), s.blocked(), &x[..cols], &mut y);
                y
            };
            let gemm = || {
                let mut y = vec![0f32; 70 * s.rows()];
                gemm_with(Isa::detect(), s.blocked(), &x, 70, &mut y);
                y
            };
            assert_eq!(run(1, &gemv), run(4, &gemv), "{}: gemv", l.name);
            assert_eq!(run(1, &gemm), run(4, &gemm), "{}: gemm", l.name);
        }
    }
}
