//! LoRA recovery of a pruned model (Hu et al., 2022; the DLP paper, ICML 2025, reports that DLP
//! "integrates with parameter-efficient fine-tuning"): low-rank adapters on the seven linears of
//! every block, trained with candle's autograd and AdamW on next-token loss, while the pruned
//! weights themselves are constants, so every pruned entry stays exactly zero.
//!
//! - Adapters follow PEFT's LoRA: `y = x Wᵀ + (α / r) · (x Aᵀ) Bᵀ`, `A` Kaiming-uniform
//!   (bound `1/√in`), `B` zero, so training starts from the pruned model itself.
//! - Early stopping on held-out windows: the best adapters (lowest held-out loss) are kept, and
//!   a stop (steps, patience or cancel) returns with them installed.
//! - Saved in PEFT's layout ([`Adapters::save_peft`]); merging is optional and re-applies the
//!   mask ([`Adapters::merge`]).

pub mod memory;

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::optim::{AdamW, Optimizer, ParamsAdamW};
use color_eyre::eyre::{bail, eyre, Result, WrapErr};
use serde::{Deserialize, Serialize};

use crate::error::Setting;
use crate::model::linear::Lora;
use crate::model::{LinearKind, Llama};
use crate::rng::SplitMix64;

/// What a recovery run trains with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct LoraParams {
    /// Adapter rank r.
    pub rank: usize,
    /// PEFT's `lora_alpha`; the update is scaled by `alpha / rank`.
    pub alpha: f64,
    /// AdamW learning rate (no weight decay).
    pub lr: f64,
    /// Maximum optimizer steps.
    pub steps: usize,
    /// Training windows per step.
    pub batch: usize,
    /// Held-out loss every this many steps (and at the start).
    pub eval_every: usize,
    /// Stop after this many held-out evaluations without improvement.
    pub patience: usize,
    /// Seed of the adapters' initialisation and of the window order.
    pub seed: u64,
}

impl Default for LoraParams {
    fn default() -> Self {
        Self {
            rank: 8,
            alpha: 16.0,
            lr: 2e-4,
            steps: 60,
            batch: 4,
            eval_every: 10,
            patience: 3,
            seed: 0,
        }
    }
}

impl LoraParams {
    pub fn validate(&self) -> Result<()> {
        if self.rank == 0 || self.batch == 0 || self.eval_every == 0 || self.steps == 0 {
            return Err(crate::said!(
                "LoRA: ",
                Setting::LoraRank,
                ", ",
                Setting::LoraBatch,
                ", ",
                Setting::LoraEvalEvery,
                " and ",
                Setting::LoraSteps,
                " must be at least 1"
            )
            .into());
        }
        let positive = |v: f64| v > 0.0 && v.is_finite();
        if !positive(self.lr) || !positive(self.alpha) {
            return Err(crate::said!(
                "LoRA: ",
                Setting::LoraLr,
                " and ",
                Setting::LoraAlpha,
                " must be positive numbers"
            )
            .into());
        }
        Ok(())
    }
}

/// One linear's adapter: its HF module name and the trained `A` and `B`.
struct Adapter {
    module: String,
    block: usize,
    kind: LinearKind,
    a: Var,
    b: Var,
}

/// The adapters of every block linear of a model.
pub struct Adapters {
    pub rank: usize,
    pub alpha: f64,
    items: Vec<Adapter>,
}

impl Adapters {
    /// Fresh adapters for every block linear of `model` (f32, on its device).
    pub fn new(model: &Llama, rank: usize, alpha: f64, seed: u64) -> Result<Self> {
        let dev = &model.device;
        let mut rng = SplitMix64::new(seed);
        let mut items = Vec::new();
        for (i, blk) in model.blocks.iter().enumerate() {
            for k in LinearKind::ALL {
                let l = blk.linear(k);
                let (out, inp) = (l.out_features(), l.in_features());
                // kaiming_uniform_(a=√5) on [r, in]: bound = 1/√in.
                let bound = 1.0 / (inp as f64).sqrt();
                let a: Vec<f32> = (0..rank * inp)
                    .map(|_| {
                        let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
                        ((2.0 * u - 1.0) * bound) as f32
                    })
                    .collect();
                items.push(Adapter {
                    module: l.name.clone(),
                    block: i,
                    kind: k,
                    a: Var::from_tensor(&Tensor::from_vec(a, (rank, inp), dev)?)?,
                    b: Var::zeros((out, rank), DType::F32, dev)?,
                });
            }
        }
        Ok(Self { rank, alpha, items })
    }

    /// Trainable parameters (A and B of every adapter).
    pub fn params(&self) -> usize {
        self.items
            .iter()
            .map(|a| a.a.elem_count() + a.b.elem_count())
            .sum()
    }

    fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    /// Put the adapters into `model`'s linears (they then take part in every forward), as
    /// constants: in f32 they share the variables' storage, so they follow every optimizer
    /// step, but no forward records a graph through them. A forward through variables keeps
    /// every intermediate of every block alive for a backward that an evaluation never runs
    /// (on the demo, 3 GB more for one held-out batch).
    pub fn install(&self, model: &mut Llama) -> Result<()> {
        self.put(model, false)
    }

    /// As [`Adapters::install`], with the variables themselves: a forward then records the graph
    /// that a backward follows to the adapters (the recomputation inside a training step).
    fn install_trainable(&self, model: &mut Llama) -> Result<()> {
        self.put(model, true)
    }

    fn put(&self, model: &mut Llama, trainable: bool) -> Result<()> {
        let dtype = model.dtype;
        let value = |v: &Var| -> Result<Tensor> {
            let t = match trainable {
                true => v.as_tensor().clone(),
                false => v.as_tensor().detach(),
            };
            Ok(t.to_dtype(dtype)?)
        };
        for ad in &self.items {
            let l = model.blocks[ad.block].linear_mut(ad.kind);
            l.lora = Some(Lora {
                a: value(&ad.a)?,
                b: value(&ad.b)?,
                scale: self.scale(),
            });
        }
        Ok(())
    }

    /// Take the adapters out of `model`.
    pub fn uninstall(model: &mut Llama) {
        for blk in &mut model.blocks {
            for l in blk.linears.iter_mut() {
                l.lora = None;
            }
        }
    }

    fn vars(&self) -> Vec<Var> {
        self.items
            .iter()
            .flat_map(|a| [a.a.clone(), a.b.clone()])
            .collect()
    }

    /// A copy of the current values (the best checkpoint so far).
    fn snapshot(&self) -> Result<Vec<(Tensor, Tensor)>> {
        self.items
            .iter()
            .map(|a| Ok((a.a.as_tensor().copy()?, a.b.as_tensor().copy()?)))
            .collect()
    }

    fn restore(&self, snap: &[(Tensor, Tensor)]) -> Result<()> {
        for (ad, (a, b)) in self.items.iter().zip(snap) {
            ad.a.set(a)?;
            ad.b.set(b)?;
        }
        Ok(())
    }

    /// PEFT's tensor names: `base_model.model.<module>.lora_{A,B}.weight`.
    pub fn peft_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        for a in &self.items {
            let cpu = |t: &Var| t.as_tensor().to_device(&Device::Cpu);
            out.push((
                format!("base_model.model.{}.lora_A.weight", a.module),
                cpu(&a.a)?,
            ));
            out.push((
                format!("base_model.model.{}.lora_B.weight", a.module),
                cpu(&a.b)?,
            ));
        }
        Ok(out)
    }

    /// PEFT's `adapter_config.json` for these adapters on `base_model` (a Hub id at
    /// `revision`, or a path).
    pub fn peft_config(&self, base_model: &str, revision: Option<&str>) -> serde_json::Value {
        serde_json::json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base_model,
            "r": self.rank,
            "lora_alpha": self.alpha,
            "lora_dropout": 0.0,
            "bias": "none",
            "fan_in_fan_out": false,
            "target_modules": LinearKind::ALL.iter()
                .map(|k| k.hf_name().rsplit('.').next().unwrap_or_default())
                .collect::<Vec<_>>(),
            "init_lora_weights": true,
            "inference_mode": true,
            "modules_to_save": null,
            "layers_to_transform": null,
            "layers_pattern": null,
            "rank_pattern": {},
            "alpha_pattern": {},
            "use_rslora": false,
            "use_dora": false,
            "revision": revision,
        })
    }

    /// Write `adapter_config.json` and `adapter_model.safetensors` into `dir` (created if
    /// missing); each file is replaced atomically, so an interrupted run leaves the previous
    /// checkpoint whole.
    pub fn save_peft(&self, dir: &Path, base_model: &str, revision: Option<&str>) -> Result<()> {
        std::fs::create_dir_all(dir)
            .wrap_err_with(|| format!("cannot create `{}`", dir.display()))?;
        let tensors: std::collections::HashMap<String, Tensor> =
            self.peft_tensors()?.into_iter().collect();
        let tmp = tempfile::Builder::new()
            .prefix(".dlpx-")
            .tempfile_in(dir)
            .wrap_err_with(|| format!("cannot write in `{}`", dir.display()))?;
        candle_core::safetensors::save(&tensors, tmp.path())?;
        crate::assets::make_shareable(tmp.path(), false)?;
        tmp.persist(dir.join("adapter_model.safetensors"))
            .map_err(|e| eyre!("cannot write the adapters in `{}`: {e}", dir.display()))?;
        crate::assets::write_atomic(
            &dir.join("adapter_config.json"),
            serde_json::to_string_pretty(&self.peft_config(base_model, revision))?.as_bytes(),
        )
    }

    /// Merge the adapters into the weights and re-apply each layer's mask:
    /// `W ← (W + (α/r)·B A) ⊙ [W ≠ 0]`, so the model stays exactly as sparse (the low-rank
    /// update of the pruned entries is dropped). The adapters are removed from the linears.
    /// One block at a time: an offloaded block is read from its file, merged, and kept (in host
    /// memory) as a pruned block is; every merged linear is held as the pruned model held it
    /// (compressed rows where they run faster), so the merged model is no second, dense copy.
    pub fn merge(&self, model: &mut Llama) -> Result<()> {
        for i in 0..model.blocks.len() {
            let mut blk = model.block(i)?.into_owned();
            for ad in self.items.iter().filter(|a| a.block == i) {
                let l = blk.linear_mut(ad.kind);
                let w = l.weight()?.to_dtype(DType::F32)?;
                let keep = w.ne(0.0)?.to_dtype(DType::F32)?;
                let (a, b) = (ad.a.as_tensor(), ad.b.as_tensor());
                let delta =
                    (b.to_device(w.device())?.matmul(&a.to_device(w.device())?)? * self.scale())?;
                let merged = ((w + delta)? * keep)?;
                l.set_weight(merged)?;
                l.lora = None;
            }
            model.store_block(i, blk)?;
        }
        Ok(())
    }
}

/// Mean next-token cross-entropy of `windows` (each its own sequence) under `model`, through
/// one graph (the reference the checkpointed gradients are tested against).
#[cfg(test)]
fn loss(model: &Llama, windows: &[Vec<u32>]) -> Result<Tensor> {
    let t = windows[0].len();
    let flat: Vec<u32> = windows.iter().flatten().copied().collect();
    let ids = Tensor::from_vec(flat, (windows.len(), t), &model.device)?;
    let logits = model.forward(&ids.narrow(1, 0, t - 1)?, 0, None)?;
    let v = logits.dim(2)?;
    let logits = logits
        .to_dtype(DType::F32)?
        .reshape(((t - 1) * windows.len(), v))?;
    let targets = ids.narrow(1, 1, t - 1)?.flatten_all()?;
    Ok(candle_nn::loss::cross_entropy(&logits, &targets)?)
}

/// Loss of one batch and the gradients of `vars` (the adapters), with gradient checkpointing per
/// decoder block: the forward keeps only each block's input and cuts the graph after every
/// block; the backward then recomputes one block at a time from its input (with the composed
/// ops that backpropagate), and carries the gradient of the hidden state down to the block
/// below. Memory holds one block's graph instead of thirty (on the demo, 10.5 GB → see the
/// README, "Quantize and recover"); the price is one more forward per step. The gradients are
/// those of [`loss`] up to summation order.
fn checkpointed_grads(
    model: &mut Llama,
    windows: &[Vec<u32>],
    adapters: &Adapters,
) -> Result<(f64, candle_core::backprop::GradStore)> {
    let vars = adapters.vars();
    let t = windows[0].len();
    let flat: Vec<u32> = windows.iter().flatten().copied().collect();
    let ids = Tensor::from_vec(flat, (windows.len(), t), &model.device)?;
    let inputs_ids = ids.narrow(1, 0, t - 1)?;
    let targets = ids.narrow(1, 1, t - 1)?.flatten_all()?;
    // Forward with the fused (inference) ops; only the blocks' inputs are kept.
    model.set_differentiable(false);
    let forward = (|| -> Result<(Vec<Tensor>, Tensor)> {
        // Offloaded, the block inputs wait in host memory and the device holds one block (read
        // from its file or host memory by `forward_block`) and one batch at a time.
        let home = model.activations_home();
        let mut x = model.embed(&inputs_ids)?.detach();
        let mut inputs = Vec::with_capacity(model.blocks.len());
        for i in 0..model.blocks.len() {
            inputs.push(x.to_device(&home)?);
            x = model.forward_block(i, &x, 0, None, None)?.detach();
        }
        Ok((inputs, x))
    })();
    model.set_differentiable(true);
    let (mut inputs, top) = forward?;
    let result = backward(model, adapters, &vars, &mut inputs, &top, &targets);
    adapters.install(model)?;
    result
}

/// The backward half of [`checkpointed_grads`]: the head's loss and gradient, then each block
/// recomputed from its input with the adapters installed as variables.
fn backward(
    model: &mut Llama,
    adapters: &Adapters,
    vars: &[Var],
    inputs: &mut Vec<Tensor>,
    top: &Tensor,
    targets: &Tensor,
) -> Result<(f64, candle_core::backprop::GradStore)> {
    adapters.install_trainable(model)?;
    let (loss, top_grad) = head_loss(model, top, targets, true)?;
    let mut g = top_grad.ok_or_else(|| eyre!("LoRA: no gradient reached the last block"))?;
    let mut grads = candle_core::backprop::GradStore::default();
    for i in (0..model.blocks.len()).rev() {
        let Some(x) = inputs.pop() else { break };
        let x = Var::from_tensor(&x.to_device(&model.device)?)?;
        let y = model.forward_block(i, x.as_tensor(), 0, None, None)?;
        // d(Σ y·g)/dθ = gᵀ ∂y/∂θ: the chain rule through this block alone.
        let mut local = (y * &g)?.sum_all()?.backward()?;
        for var in vars {
            if let Some(gv) = local.remove(var.as_tensor()) {
                grads.insert(var.as_tensor(), gv);
            }
        }
        if i > 0 {
            g = local
                .remove(x.as_tensor())
                .ok_or_else(|| eyre!("LoRA: no gradient reached block {i}'s input"))?;
        }
    }
    Ok((loss, grads))
}

/// One training step's figures (see [`time_step`]).
#[derive(Debug, Clone, Copy)]
pub struct StepTime {
    pub loss: f64,
    /// The checkpointed forward, the head's loss and the recomputing backward (seconds).
    pub forward_backward_s: f64,
    /// AdamW's update of every adapter (seconds).
    pub optimizer_s: f64,
    /// Tokens the step predicted.
    pub tokens: usize,
}

/// One training step of `adapters` on `windows` as [`train`] runs it (checkpointed forward and
/// backward, then AdamW), timed.
pub fn time_step(
    model: &mut Llama,
    adapters: &Adapters,
    windows: &[Vec<u32>],
    lr: f64,
) -> Result<StepTime> {
    if windows.is_empty() || windows[0].len() < 2 {
        bail!("LoRA: need windows of at least 2 tokens");
    }
    adapters.install(model)?;
    let mut opt = AdamW::new(
        adapters.vars(),
        ParamsAdamW {
            lr,
            weight_decay: 0.0,
            ..ParamsAdamW::default()
        },
    )?;
    model.keep_transposes(true)?;
    let t = Instant::now();
    let grads = checkpointed_grads(model, windows, adapters);
    let forward_backward_s = t.elapsed().as_secs_f64();
    model.keep_transposes(false)?;
    let (loss, grads) = grads?;
    let t = Instant::now();
    opt.step(&grads)?;
    let optimizer_s = t.elapsed().as_secs_f64();
    model.set_differentiable(false);
    Ok(StepTime {
        loss,
        forward_backward_s,
        optimizer_s,
        tokens: windows.len() * (windows[0].len() - 1),
    })
}

/// Positions whose logits exist at once in [`head_loss`]: `HEAD_ROWS × vocab` f32 (50 MB on the
/// demo). The whole batch's logits (4 × 255 positions, 200 MB) and the log-softmax's and the
/// backward's copies of them were most of a training step's memory.
pub(crate) const HEAD_ROWS: usize = 256;

/// Mean cross-entropy of the final hidden states `top` (`[b, t, hidden]`) against `targets`
/// (`[b·t]`), through the final norm and the head, a few positions at a time; with `grad`, also
/// the gradient of that mean with respect to `top`.
fn head_loss(
    model: &Llama,
    top: &Tensor,
    targets: &Tensor,
    grad: bool,
) -> Result<(f64, Option<Tensor>)> {
    let (b, t, d) = top.dims3()?;
    let n = b * t;
    let flat = top.reshape((n, d))?;
    let mut sum = 0f64;
    let mut grads = Vec::new();
    for start in (0..n).step_by(HEAD_ROWS) {
        let rows = HEAD_ROWS.min(n - start);
        let x = flat.narrow(0, start, rows)?.reshape((1, rows, d))?;
        let var = match grad {
            true => Some(Var::from_tensor(&x)?),
            false => None,
        };
        let input = var.as_ref().map_or(&x, |v| v.as_tensor());
        let logits = model.head(input)?.to_dtype(DType::F32)?;
        let v = logits.dim(2)?;
        let (logits, tgt) = (logits.reshape((rows, v))?, targets.narrow(0, start, rows)?);
        let part = match crate::model::train_ops::cross_entropy(&logits, &tgt)? {
            Some(l) => l,
            None => candle_nn::loss::cross_entropy(&logits, &tgt)?,
        };
        // This part's share of the batch mean.
        let part = (part * (rows as f64 / n as f64))?;
        sum += part.to_scalar::<f32>()? as f64;
        if let Some(var) = var {
            let mut gs = part.backward()?;
            let g = gs
                .remove(var.as_tensor())
                .ok_or_else(|| eyre!("LoRA: no gradient reached the head's input"))?;
            grads.push(g.reshape((rows, d))?);
        }
    }
    let g = match grad {
        true => Some(Tensor::cat(&grads, 0)?.reshape((b, t, d))?),
        false => None,
    };
    Ok((sum, g))
}

/// Held-out loss, in batches, without the composed (slow) ops.
fn heldout_loss(model: &mut Llama, heldout: &[Vec<u32>], batch: usize) -> Result<f64> {
    model.set_differentiable(false);
    let result = (|| -> Result<f64> {
        let mut sum = 0.0;
        for c in heldout.chunks(batch) {
            let t = c[0].len();
            let flat: Vec<u32> = c.iter().flatten().copied().collect();
            let ids = Tensor::from_vec(flat, (c.len(), t), &model.device)?;
            let top = model.hidden(&ids.narrow(1, 0, t - 1)?)?;
            let targets = ids.narrow(1, 1, t - 1)?.flatten_all()?;
            sum += head_loss(model, &top, &targets, false)?.0 * c.len() as f64;
        }
        Ok(sum / heldout.len() as f64)
    })();
    model.set_differentiable(true);
    result
}

/// One report of training progress.
#[derive(Debug, Clone, Copy)]
pub struct TrainStep {
    pub step: usize,
    pub steps: usize,
    /// Training loss of this step's batch.
    pub loss: f64,
    /// Held-out loss, when evaluated at this step.
    pub heldout: Option<f64>,
    pub tokens_per_s: f64,
}

/// Why training stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Stop {
    /// The step budget ran out.
    Steps,
    /// `patience` held-out evaluations without improvement.
    EarlyStop,
    /// Cancelled (the best checkpoint so far is kept).
    Cancelled,
}

/// What a recovery run did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Trained {
    pub steps_run: usize,
    /// Step of the kept adapters (0: none improved on the pruned model; adapters are then zero
    /// in effect).
    pub best_step: usize,
    /// Held-out loss (step, loss), from step 0 (the pruned model).
    pub heldout: Vec<(usize, f64)>,
    /// Training loss per step.
    pub train_loss: Vec<f64>,
    pub tokens: usize,
    pub seconds: f64,
    pub stop: Stop,
    /// Seconds of each training step alone (checkpointed forward and backward, AdamW), without
    /// the held-out evaluations that `seconds` also counts.
    #[serde(default)]
    pub step_seconds: Vec<f64>,
    /// The held-out evaluations' forward rate in this run (tokens/s): the same model, batch and
    /// window length as a training step, forward only.
    #[serde(default)]
    pub forward_tokens_per_s: f64,
}

impl Trained {
    /// Training tokens per second of step time, at the median step (a machine shared with
    /// other work slows some steps).
    pub fn train_tokens_per_s(&self) -> f64 {
        let mut t = self.step_seconds.clone();
        if t.is_empty() {
            return 0.0;
        }
        t.sort_by(f64::total_cmp);
        let median = t[t.len() / 2];
        self.tokens as f64 / t.len() as f64 / median.max(1e-9)
    }

    /// Training throughput over the same run's forward throughput (0 when not measured).
    pub fn throughput_ratio(&self) -> f64 {
        match self.forward_tokens_per_s > 0.0 {
            true => self.train_tokens_per_s() / self.forward_tokens_per_s,
            false => 0.0,
        }
    }
}

/// Train `adapters` (installed into `model` here) on `train` with early stopping on `heldout`.
/// `progress` may return `false` to cancel; `on_best` runs whenever the held-out loss improves
/// (to save a checkpoint). Returns with the best adapters installed.
pub fn train(
    model: &mut Llama,
    adapters: &Adapters,
    train: &[Vec<u32>],
    heldout: &[Vec<u32>],
    p: &LoraParams,
    progress: &mut dyn FnMut(&TrainStep) -> bool,
    on_best: &mut dyn FnMut(&Adapters) -> Result<()>,
) -> Result<Trained> {
    p.validate()?;
    if train.is_empty() || heldout.is_empty() || train[0].len() < 2 {
        bail!("LoRA: need training and held-out windows of at least 2 tokens");
    }
    adapters.install(model)?;
    let vars = adapters.vars();
    let mut opt = AdamW::new(
        vars.clone(),
        ParamsAdamW {
            lr: p.lr,
            weight_decay: 0.0,
            ..ParamsAdamW::default()
        },
    )?;
    let started = Instant::now();
    let t = train[0].len();
    let mut order: Vec<usize> = (0..train.len()).collect();
    let mut rng = SplitMix64::new(p.seed ^ 0xA5A5);
    let mut out = Trained {
        steps_run: 0,
        best_step: 0,
        heldout: vec![],
        train_loss: vec![],
        tokens: 0,
        seconds: 0.0,
        stop: Stop::Steps,
        step_seconds: vec![],
        forward_tokens_per_s: 0.0,
    };
    // The held-out forward's time and tokens, for the run's forward rate.
    let (mut fwd_s, mut fwd_tokens) = (0f64, 0usize);
    let mut timed_heldout = |model: &mut Llama| -> Result<f64> {
        let t0 = Instant::now();
        let l = heldout_loss(model, heldout, p.batch)?;
        fwd_s += t0.elapsed().as_secs_f64();
        fwd_tokens += heldout.len() * heldout[0].len();
        Ok(l)
    };
    let mut best = timed_heldout(model)?;
    out.heldout.push((0, best));
    // Sparse linears multiply by W in compressed rows in the backward too (held until the end
    // of training: about a third of the dense linears' bytes at 70 % zeros).
    model.keep_transposes(true)?;
    let mut best_snap = adapters.snapshot()?;
    let mut since_best = 0;
    let mut cursor = train.len();
    model.set_differentiable(true);
    let result = (|| -> Result<()> {
        for step in 1..=p.steps {
            let mut batch = Vec::with_capacity(p.batch);
            while batch.len() < p.batch.min(train.len()) {
                if cursor == train.len() {
                    // A fresh seeded shuffle every pass over the windows.
                    for i in (1..order.len()).rev() {
                        order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
                    }
                    cursor = 0;
                }
                batch.push(train[order[cursor]].clone());
                cursor += 1;
            }
            let t0 = Instant::now();
            let (lv, grads) = checkpointed_grads(model, &batch, adapters)?;
            opt.step(&grads)?;
            // The installed copies follow the variables only in f32; re-install otherwise.
            if model.dtype != DType::F32 {
                adapters.install(model)?;
            }
            out.step_seconds.push(t0.elapsed().as_secs_f64());
            out.train_loss.push(lv);
            out.steps_run = step;
            out.tokens += batch.len() * t;
            let mut h = None;
            if step % p.eval_every == 0 || step == p.steps {
                let hl = timed_heldout(model)?;
                out.heldout.push((step, hl));
                h = Some(hl);
                if hl < best {
                    best = hl;
                    out.best_step = step;
                    best_snap = adapters.snapshot()?;
                    since_best = 0;
                    on_best(adapters)?;
                } else {
                    since_best += 1;
                }
            }
            let go = progress(&TrainStep {
                step,
                steps: p.steps,
                loss: lv,
                heldout: h,
                tokens_per_s: out.tokens as f64 / started.elapsed().as_secs_f64(),
            });
            if !go {
                out.stop = Stop::Cancelled;
                return Ok(());
            }
            if since_best >= p.patience {
                out.stop = Stop::EarlyStop;
                return Ok(());
            }
        }
        Ok(())
    })();
    model.set_differentiable(false);
    model.keep_transposes(false)?;
    out.forward_tokens_per_s = fwd_tokens as f64 / fwd_s.max(1e-9);
    result?;
    adapters.restore(&best_snap)?;
    adapters.install(model)?;
    out.seconds = started.elapsed().as_secs_f64();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::synthetic::{random_model, random_windows};

    fn tiny() -> Llama {
        let cfg = crate::model::LlamaConfig::from_hf_json(
            r#"{"model_type":"llama","hidden_size":32,"intermediate_size":48,"num_hidden_layers":2,
                "num_attention_heads":4,"num_key_value_heads":2,"vocab_size":64,"rms_norm_eps":1e-5,
                "max_position_embeddings":64}"#,
        )
        .unwrap();
        let mut m = random_model(&cfg, 2, 64, 3, &Device::Cpu, DType::F32).unwrap();
        // Prune half of every linear by magnitude.
        for blk in &mut m.blocks {
            for l in blk.linears.iter_mut() {
                let w = l
                    .weight()
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                let abs: Vec<f32> = w.iter().map(|x| x.abs()).collect();
                let mask = crate::prune::mask::per_row(&abs, l.in_features(), 0.5);
                let dims = vec![l.out_features(), l.in_features()];
                l.set_mask(Tensor::from_vec(mask, dims, &Device::Cpu).unwrap())
                    .unwrap();
            }
        }
        m
    }

    fn weights(m: &Llama) -> Vec<Vec<f32>> {
        m.blocks
            .iter()
            .flat_map(|b| b.linears.iter())
            .map(|l| {
                l.weight()
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
            })
            .collect()
    }

    #[test]
    fn composed_ops_give_the_fused_forward() {
        let mut m = tiny();
        let ids = Tensor::new(&[[1u32, 5, 9, 13, 2, 7]], &Device::Cpu).unwrap();
        let fused = m.forward(&ids, 0, None).unwrap();
        m.set_differentiable(true);
        let composed = m.forward(&ids, 0, None).unwrap();
        let d = (fused - composed)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-5, "{d}");
    }

    /// Checkpointing recomputes each block from its input; the gradients must be those of one
    /// backward through the whole model (up to summation order).
    #[test]
    fn checkpointed_gradients_equal_the_whole_graph_ones() {
        let mut m = tiny();
        let batch = random_windows(3, 12, 64, 4);
        let ad = Adapters::new(&m, 4, 8.0, 2).unwrap();
        // Non-zero B, so that A's gradients are non-zero too.
        for (i, a) in ad.items.iter().enumerate() {
            let b = a.b.as_tensor();
            let r = Tensor::randn(0f32, 0.1, b.dims(), &Device::Cpu).unwrap();
            a.b.set(&(r + i as f64 * 1e-3).unwrap()).unwrap();
        }
        ad.install_trainable(&mut m).unwrap();
        let vars = ad.vars();
        m.set_differentiable(true);
        let whole_loss = loss(&m, &batch).unwrap();
        let whole = whole_loss.backward().unwrap();
        let (l, ck) = checkpointed_grads(&mut m, &batch, &ad).unwrap();
        let lw = whole_loss.to_scalar::<f32>().unwrap() as f64;
        assert!((l - lw).abs() < 1e-5 * lw.abs(), "loss {l} vs {lw}");
        for v in &vars {
            let a = whole.get(v.as_tensor()).unwrap();
            let b = ck.get(v.as_tensor()).unwrap();
            let scale = a
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
            let d = d.to_scalar::<f32>().unwrap();
            assert!(scale > 0.0, "a zero gradient tests nothing");
            assert!(d <= 1e-4 * scale, "gradient differs by {d} (scale {scale})");
        }
    }

    /// Installed for evaluation, the adapters are constants: a forward records no graph (one
    /// through the variables keeps every block's intermediates alive, 3 GB on the demo), yet
    /// they follow the variables' updates.
    #[test]
    fn installed_adapters_record_no_graph_and_follow_updates() {
        let mut m = tiny();
        let ids = Tensor::new(&[[1u32, 5, 9, 13, 2, 7]], &Device::Cpu).unwrap();
        let ad = Adapters::new(&m, 4, 8.0, 2).unwrap();
        ad.install(&mut m).unwrap();
        // The final hidden states (the head's fused norm records nothing, so the logits would
        // not show a graph that lives until the head).
        assert!(
            !m.hidden(&ids).unwrap().track_op(),
            "an evaluation forward recorded a graph"
        );
        let before = m.forward(&ids, 0, None).unwrap();
        for a in &ad.items {
            let b = a.b.as_tensor();
            a.b.set(&Tensor::ones(b.dims(), DType::F32, &Device::Cpu).unwrap())
                .unwrap();
        }
        let after = m.forward(&ids, 0, None).unwrap();
        let d = (after - &before).unwrap().abs().unwrap().max_all().unwrap();
        assert!(
            d.to_scalar::<f32>().unwrap() > 1e-3,
            "the update is not in effect"
        );
        ad.install_trainable(&mut m).unwrap();
        assert!(m.hidden(&ids).unwrap().track_op());
    }

    #[test]
    fn lora_lowers_the_loss_and_keeps_every_pruned_zero() {
        let mut m = tiny();
        // Every pruned linear in compressed rows: trained through the sparse product's
        // backward, and merged back into compressed rows (no dense copy of the base).
        m.set_sparse(crate::sparse::SparseMode::On).unwrap();
        assert_eq!(m.sparse_linears(), 14);
        let sparse_bytes = m.linear_bytes();
        let before = weights(&m);
        let batch = random_windows(4, 16, 64, 9);
        let ad = Adapters::new(&m, 4, 8.0, 1).unwrap();
        let p = LoraParams {
            rank: 4,
            alpha: 8.0,
            lr: 1e-2,
            steps: 30,
            batch: 4,
            eval_every: 5,
            patience: 10,
            seed: 0,
        };
        let mut saves = 0;
        let r = train(&mut m, &ad, &batch, &batch, &p, &mut |_| true, &mut |_| {
            saves += 1;
            Ok(())
        })
        .unwrap();
        let (first, last) = (r.heldout[0].1, r.heldout.last().unwrap().1);
        assert!(last < first - 0.1, "held-out loss {first} → {last}");
        assert!(r.train_loss.last().unwrap() < &r.train_loss[0]);
        assert!(saves > 0 && r.best_step > 0);
        assert_eq!(weights(&m), before, "the pruned weights are constants");
        // The adapters are in effect (the installed model is the best checkpoint).
        let now = loss(&m, &batch).unwrap().to_scalar::<f32>().unwrap() as f64;
        let best = r.heldout.iter().map(|h| h.1).fold(f64::MAX, f64::min);
        assert!((now - best).abs() < 1e-4, "{now} vs best {best}");
        // Merged and re-masked: the same zeros, other weights changed.
        ad.merge(&mut m).unwrap();
        assert_eq!(m.sparse_linears(), 14, "merged into dense weights");
        assert_eq!(m.linear_bytes(), sparse_bytes);
        let merged = weights(&m);
        for (b, a) in before.iter().flatten().zip(merged.iter().flatten()) {
            assert_eq!(*b == 0.0, *a == 0.0);
        }
        assert_ne!(merged, before);
    }

    #[test]
    fn peft_layout_names_and_shapes() {
        let m = tiny();
        let ad = Adapters::new(&m, 4, 8.0, 1).unwrap();
        let t = ad.peft_tensors().unwrap();
        assert_eq!(t.len(), 2 * 7 * 2);
        let find = |n: &str| &t.iter().find(|(k, _)| k == n).unwrap().1;
        assert_eq!(
            find("base_model.model.model.layers.1.mlp.down_proj.lora_A.weight").dims(),
            &[4, 48]
        );
        assert_eq!(
            find("base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight").dims(),
            &[16, 4]
        );
        let c = ad.peft_config("pruned", None);
        assert_eq!(c["r"], 4);
        assert_eq!(c["peft_type"], "LORA");
        assert_eq!(
            c["target_modules"],
            serde_json::json!([
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
                "gate_proj",
                "up_proj",
                "down_proj"
            ])
        );
        let dir = tempfile::tempdir().unwrap();
        ad.save_peft(dir.path(), "pruned", None).unwrap();
        let back = candle_core::safetensors::load(
            dir.path().join("adapter_model.safetensors"),
            &Device::Cpu,
        )
        .unwrap();
        assert_eq!(back.len(), 28);
    }
}
