//! The compressed-row product as a candle operation, so a sparse linear takes and returns
//! ordinary tensors (no copy of the input: the kernel reads candle's CPU buffer in place).

use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};

use super::{kernels, SparseMatrix};

/// `x @ Wᵀ` for a contiguous f32 CPU input `[n, cols]`. Its backward (the gradient of the
/// input, for LoRA training on a frozen sparse base) multiplies by `W`: in compressed rows when
/// `Wᵀ`'s are given, else by `W` made dense for that product.
pub struct SparseMatmul {
    w: Arc<SparseMatrix>,
    wt: Option<Arc<SparseMatrix>>,
}

impl SparseMatmul {
    /// Apply to `x` `[n, cols]`.
    pub fn apply(w: &Arc<SparseMatrix>, x: &Tensor) -> Result<Tensor> {
        Self::apply_with(w, None, x)
    }

    /// Apply to `x` `[n, cols]`, with `Wᵀ` in compressed rows for the backward.
    pub fn apply_with(
        w: &Arc<SparseMatrix>,
        wt: Option<&Arc<SparseMatrix>>,
        x: &Tensor,
    ) -> Result<Tensor> {
        let op = SparseMatmul {
            w: w.clone(),
            wt: wt.cloned(),
        };
        x.contiguous()?.apply_op1(op)
    }
}

/// `x Mᵀ` for a contiguous f32 CPU `x` `[n, M.cols]` and `M` in compressed rows.
fn product(m: &SparseMatrix, x: &[f32], n: usize) -> Vec<f32> {
    let mut y = vec![0f32; n * m.rows()];
    match n {
        1 => kernels::gemv(m.blocked(), x, &mut y),
        _ => kernels::gemm(m.blocked(), x, n, &mut y),
    }
    y
}

impl CustomOp1 for SparseMatmul {
    fn name(&self) -> &'static str {
        "sparse-matmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let w = &self.w;
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("sparse-matmul: input is {:?}, not f32", storage.dtype());
        };
        let (n, cols) = layout.shape().dims2()?;
        if cols != w.cols() {
            candle_core::bail!(
                "sparse-matmul: input has {cols} columns, the weight {}",
                w.cols()
            );
        }
        let Some((a, b)) = layout.contiguous_offsets() else {
            candle_core::bail!("sparse-matmul: the input is not contiguous");
        };
        let y = product(w, &data[a..b], n);
        Ok((CpuStorage::F32(y), Shape::from((n, w.rows()))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        // d(x Wᵀ)/dx = grad · W = grad · (Wᵀ)ᵀ.
        let Some(wt) = &self.wt else {
            // The dense W lives only for this product.
            let w = self.w.to_tensor(arg.device(), DType::F32)?;
            return Ok(Some(grad_res.matmul(&w)?));
        };
        let n = grad_res.dims2()?.0;
        let g = grad_res.detach().contiguous()?;
        let (gs, gl) = g.storage_and_layout();
        let (candle_core::Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) =
            (&*gs, gl.contiguous_offsets())
        else {
            candle_core::bail!("sparse-matmul: the gradient is not a contiguous f32 CPU tensor");
        };
        let dx = product(wt, &v[a..b], n);
        Ok(Some(Tensor::from_vec(dx, (n, wt.rows()), arg.device())?))
    }
}

/// `x @ Wᵀ` for one input row (`x`: `[1, cols]`) and a dense contiguous f32 CPU weight, with
/// [`kernels::dense_gemv`]; `None` where that does not apply (another device or dtype, a
/// strided weight, an input that carries gradients), and the caller uses the general matmul.
pub fn dense_gemv(w: &Tensor, x: &Tensor) -> Result<Option<Tensor>> {
    let (rows, cols) = w.dims2()?;
    let applies = x.dims() == [1, cols]
        && w.device().is_cpu()
        && x.device().is_cpu()
        && w.dtype() == DType::F32
        && x.dtype() == DType::F32
        && w.is_contiguous()
        && !x.track_op()
        && !w.track_op();
    if !applies {
        return Ok(None);
    }
    let x = x.contiguous()?;
    let (ws, wl) = w.storage_and_layout();
    let (xs, xl) = x.storage_and_layout();
    let (candle_core::Storage::Cpu(ws), candle_core::Storage::Cpu(xs)) = (&*ws, &*xs) else {
        return Ok(None);
    };
    let (Some((wa, wb)), Some((xa, xb))) = (wl.contiguous_offsets(), xl.contiguous_offsets())
    else {
        return Ok(None);
    };
    let (wv, xv) = (
        &ws.as_slice::<f32>()?[wa..wb],
        &xs.as_slice::<f32>()?[xa..xb],
    );
    let mut y = vec![0f32; rows];
    kernels::dense_gemv(wv, cols, xv, &mut y);
    Ok(Some(Tensor::from_vec(
        y,
        (1, rows),
        &candle_core::Device::Cpu,
    )?))
}

/// `x @ Wᵀ` for a contiguous f32 CPU input `[n, cols]` and a frozen dense `W` `[rows, cols]`
/// (training adapters on a frozen base). candle's own matmul backward also computes the
/// gradient of its right-hand side, frozen or not: one more product per linear and a
/// weight-sized gradient (with its zero-filled accumulator) held until the backward ends, which at
/// Llama-2-7B's shapes is most of a block's backward memory. This backward gives the input's
/// gradient only.
pub struct FrozenMatmul(pub Tensor);

impl FrozenMatmul {
    /// Where it applies (f32 on the CPU, an input that carries gradients, a weight that does
    /// not), `x @ Wᵀ`; else `None` and the caller uses the general matmul.
    pub fn apply(w: &Tensor, x: &Tensor) -> Result<Option<Tensor>> {
        let applies = x.track_op()
            && !w.track_op()
            && x.device().is_cpu()
            && w.device().is_cpu()
            && x.dtype() == DType::F32
            && w.dtype() == DType::F32
            && x.rank() == 2;
        if !applies {
            return Ok(None);
        }
        Ok(Some(x.contiguous()?.apply_op1(FrozenMatmul(w.clone()))?))
    }
}

impl CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("frozen-matmul: input is {:?}, not f32", storage.dtype());
        };
        let Some((a, b)) = layout.contiguous_offsets() else {
            candle_core::bail!("frozen-matmul: the input is not contiguous");
        };
        let x = Tensor::from_slice(&data[a..b], layout.shape(), &candle_core::Device::Cpu)?;
        let y = x.matmul(&self.0.t()?)?.contiguous()?;
        let shape = y.shape().clone();
        let (ys, yl) = y.storage_and_layout();
        let (candle_core::Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) =
            (&*ys, yl.contiguous_offsets())
        else {
            candle_core::bail!("frozen-matmul: unexpected product storage");
        };
        Ok((CpuStorage::F32(v[a..b].to_vec()), shape))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        // d(x Wᵀ)/dx = grad · W; W gets no gradient.
        Ok(Some(grad_res.matmul(&self.0)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The sparse product's input gradient is `grad · W`, through the dense `W` or through
    /// `Wᵀ` in compressed rows; odd shapes, several column blocks.
    #[test]
    fn sparse_matmul_input_gradient_with_and_without_the_transpose() {
        let dev = Device::Cpu;
        let (rows, cols, n) = (37, 131, 5);
        let w: Vec<f32> = Tensor::randn(0f32, 1.0, rows * cols, &dev)
            .unwrap()
            .to_vec1()
            .unwrap();
        let w: Vec<f32> = (w.iter().enumerate())
            .map(|(i, &v)| if i % 3 == 0 { v } else { 0.0 })
            .collect();
        let s = Arc::new(SparseMatrix::from_dense(&w, rows, cols).unwrap());
        let st = Arc::new(s.transposed().unwrap());
        assert_eq!(st.to_dense().len(), w.len());
        let wd = Tensor::from_vec(w, (rows, cols), &dev).unwrap();
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (n, cols), &dev).unwrap()).unwrap();
        let g = Tensor::randn(0f32, 1.0, (n, rows), &dev).unwrap();
        let want = g.matmul(&wd).unwrap();
        for t in [None, Some(&st)] {
            let y = SparseMatmul::apply_with(&s, t, x.as_tensor()).unwrap();
            let gs = (y * &g).unwrap().sum_all().unwrap().backward().unwrap();
            let got = gs.get(x.as_tensor()).unwrap();
            let d = (got - &want).unwrap().abs().unwrap().max_all().unwrap();
            assert!(
                d.to_scalar::<f32>().unwrap() < 1e-4,
                "transpose {}",
                t.is_some()
            );
        }
    }

    /// Values and the input's gradient equal candle's matmul; the frozen weight gets none.
    #[test]
    fn frozen_matmul_equals_matmul_and_its_input_gradient() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (5, 7), &dev).unwrap();
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, 7), &dev).unwrap()).unwrap();
        let g = Tensor::randn(0f32, 1.0, (3, 5), &dev).unwrap();
        let plain = x.as_tensor().matmul(&w.t().unwrap()).unwrap();
        let frozen = FrozenMatmul::apply(&w, x.as_tensor()).unwrap().unwrap();
        let diff = |a: &Tensor, b: &Tensor| {
            let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
            d.to_scalar::<f32>().unwrap()
        };
        assert!(diff(&plain, &frozen) < 1e-6);
        let gp = (plain * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let gf = (frozen * &g)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let (a, b) = (
            gp.get(x.as_tensor()).unwrap(),
            gf.get(x.as_tensor()).unwrap(),
        );
        assert!(diff(a, b) < 1e-5, "input gradients differ");
        assert!(diff(a, &g.matmul(&w).unwrap()) < 1e-5);
        // Not applied where nothing needs a gradient.
        assert!(FrozenMatmul::apply(&w, &w).unwrap().is_none());
    }
}
