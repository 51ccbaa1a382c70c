//! Log-likelihood of continuations, as lm-evaluation-harness computes it for a causal model, but
//! with every context forwarded once.
//!
//! Tokenization follows the harness's `_encode_pair`: trailing whitespace of the context moves
//! to the front of the continuation, `context + continuation` and `context` are encoded with the
//! tokenizer's default special tokens, and the continuation's tokens are the whole encoding past
//! the context's length. The model sees `(context + continuation)[-(max_len + 1):][:-1]` and the
//! log-probabilities of the continuation tokens are summed.
//!
//! Speed: the choices of one example share their context. The token sequences of an example
//! are merged into a prefix tree, and trees of several examples are packed into one row of
//! about [`PACK_TOKENS`] tokens. Each token attends to its own ancestors only (a tree mask) and
//! sits at its depth (rope position), so every sequence sees exactly the keys and positions it
//! would see alone: the same numbers up to floating-point summation order, with the context
//! computed once per example and no padding.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, D};
use color_eyre::eyre::{bail, eyre, Result};
use tokenizers::Tokenizer;

use super::tasks::py_rstrip;
use crate::model::llama::{log_softmax_f32, Llama, Packing};

/// Tokens per packed row: large enough for efficient matrix products, small enough that the
/// t × t attention of a row stays a small part of its cost.
pub const PACK_TOKENS: usize = 256;

/// The harness's `tok_encode`: the tokenizer's default special tokens (a BOS where the
/// tokenizer's post-processor adds one).
pub fn tok_encode(tok: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    Ok(tok
        .encode_fast(text, true)
        .map_err(|e| eyre!("tokenizer: {e}"))?
        .get_ids()
        .to_vec())
}

/// The harness's `_encode_pair`: `(context tokens, continuation tokens)`.
pub fn encode_pair(
    tok: &Tokenizer,
    context: &str,
    continuation: &str,
) -> Result<(Vec<u32>, Vec<u32>)> {
    if context.is_empty() {
        bail!("empty context: every zero-shot request has a prompt");
    }
    let kept = py_rstrip(context);
    let (context, continuation) = (kept, format!("{}{continuation}", &context[kept.len()..]));
    let whole = tok_encode(tok, &format!("{context}{continuation}"))?;
    let ctx = tok_encode(tok, context)?;
    if whole.len() <= ctx.len() {
        bail!(
            "the tokenizer encodes context+continuation in no more tokens than the context alone \
             (context ends {:?}, continuation {:?}): the continuation's tokens cannot be split off \
             as the harness does",
            tail(context, 30),
            continuation
        );
    }
    let cont = whole[ctx.len()..].to_vec();
    Ok((ctx, cont))
}

fn tail(s: &str, n: usize) -> &str {
    let start = s
        .char_indices()
        .rev()
        .nth(n.saturating_sub(1))
        .map(|(i, _)| i)
        .unwrap_or(0);
    &s[start..]
}

/// One example's requests, tokenized: `(context, continuation)` per choice.
pub type EncodedDoc = Vec<(Vec<u32>, Vec<u32>)>;

/// One example's token sequences as a prefix tree: nodes are input tokens; a scored token is
/// read from the log-softmax at its parent node.
#[derive(Debug, Default, Clone)]
struct Tree {
    tokens: Vec<u32>,
    parent: Vec<Option<usize>>,
    depth: Vec<u32>,
    /// Per request: (node whose output predicts the token, the token).
    targets: Vec<Vec<(usize, u32)>>,
}

impl Tree {
    fn build(doc: &EncodedDoc, max_len: usize) -> Result<Tree> {
        let mut t = Tree::default();
        let mut children: HashMap<(Option<usize>, u32), usize> = HashMap::new();
        for (ctx, cont) in doc {
            if cont.len() > max_len {
                bail!(
                    "a continuation of {} tokens is longer than the model's {max_len} positions",
                    cont.len()
                );
            }
            let mut seq: Vec<u32> = ctx.iter().chain(cont).copied().collect();
            if seq.len() > max_len + 1 {
                // Left-truncate as the harness does.
                seq.drain(..seq.len() - (max_len + 1));
            }
            let first_scored = seq.len() - cont.len();
            let mut at: Option<usize> = None;
            let mut targets = Vec::with_capacity(cont.len());
            for (k, &tok) in seq.iter().enumerate() {
                if k >= first_scored {
                    // `first_scored ≥ 1`, so a scored token always has a parent node.
                    let p = at.ok_or_else(|| eyre!("scored token without context"))?;
                    targets.push((p, tok));
                }
                if k + 1 == seq.len() {
                    break; // the last token is never an input
                }
                let node = *children.entry((at, tok)).or_insert_with(|| {
                    t.tokens.push(tok);
                    t.parent.push(at);
                    t.depth.push(k as u32);
                    t.tokens.len() - 1
                });
                at = Some(node);
            }
            t.targets.push(targets);
        }
        Ok(t)
    }

    fn len(&self) -> usize {
        self.tokens.len()
    }
}

/// Several trees in one row.
struct Pack {
    /// (example index, its first node's offset in the row)
    docs: Vec<(usize, usize)>,
    len: usize,
}

/// First-fit of the trees (largest first) into rows of [`PACK_TOKENS`]; a larger tree has a row
/// of its own. Deterministic: depends only on the trees' sizes and order.
fn pack(trees: &[Tree]) -> Vec<Pack> {
    let mut order: Vec<usize> = (0..trees.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(trees[i].len()), i));
    let mut packs: Vec<Pack> = Vec::new();
    for i in order {
        let n = trees[i].len();
        match packs.iter_mut().find(|p| p.len + n <= PACK_TOKENS) {
            Some(p) => {
                p.docs.push((i, p.len));
                p.len += n;
            }
            None => packs.push(Pack {
                docs: vec![(i, 0)],
                len: n,
            }),
        }
    }
    packs
}

/// Packs forwarded together as one batch (rows padded to the longest): the linears then see
/// `ROWS × PACK_TOKENS` rows at once, as a perplexity batch does.
const ROWS: usize = 8;

/// A batch of packs: input ids `[b, t]`, positions and tree masks (a padding token sees only
/// itself, so no softmax row is empty).
fn batch_inputs(
    trees: &[Tree],
    packs: &[Pack],
    dtype: DType,
    dev: &Device,
) -> Result<(Tensor, Packing)> {
    let b = packs.len();
    let t = packs.iter().map(|p| p.len).max().unwrap_or(1);
    let mut ids = vec![0u32; b * t];
    let mut pos = vec![0u32; b * t];
    let mut mask = vec![f32::NEG_INFINITY; b * t * t];
    for (r, p) in packs.iter().enumerate() {
        let (ids, pos) = (&mut ids[r * t..], &mut pos[r * t..]);
        let mask = &mut mask[r * t * t..(r + 1) * t * t];
        for &(d, off) in &p.docs {
            let tree = &trees[d];
            for n in 0..tree.len() {
                ids[off + n] = tree.tokens[n];
                pos[off + n] = tree.depth[n];
                let row = (off + n) * t;
                let mut a = Some(n);
                while let Some(j) = a {
                    mask[row + off + j] = 0.0;
                    a = tree.parent[j];
                }
            }
        }
        for i in p.len..t {
            mask[i * t + i] = 0.0;
        }
    }
    let ids = Tensor::from_vec(ids, (b, t), dev)?;
    let packing = Packing {
        positions: Tensor::from_vec(pos, (b, t), dev)?,
        mask: Tensor::from_vec(mask, (b, 1, t, t), dev)?.to_dtype(dtype)?,
    };
    Ok((ids, packing))
}

/// Host memory for the hidden states of one group of batches, which go through the blocks
/// together (so an offloaded model reads each block once per group).
const GROUP_BYTES: usize = 64 << 20;

/// Rows of the head's log-softmax computed at once (`n × vocab` f32).
const HEAD_ROWS: usize = 64;

/// Sizes of a scoring run, for progress and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Work {
    /// Requests (choices) scored.
    pub requests: usize,
    /// Tokens the model ran on (each shared context once).
    pub tokens: usize,
    /// Tokens the harness's one-request-at-a-time forwards would run on (context repeated).
    pub unshared_tokens: usize,
}

/// Summed log-likelihood of every request of every example, in input order.
/// `progress(requests done, requests total, tokens done)` may return `false` to cancel.
pub fn loglikelihoods(
    model: &Llama,
    docs: &[EncodedDoc],
    max_len: usize,
    progress: &mut dyn FnMut(usize, usize, usize) -> bool,
) -> Result<(Vec<Vec<f64>>, Work)> {
    let trees: Vec<Tree> = docs
        .iter()
        .map(|d| Tree::build(d, max_len))
        .collect::<Result<_>>()?;
    let rope_max = model.rope_positions();
    if let Some(d) = trees.iter().flat_map(|t| &t.depth).max() {
        if *d as usize >= rope_max {
            bail!("a request needs position {d}; the model's rope table has {rope_max}");
        }
    }
    let work = Work {
        requests: docs.iter().map(Vec::len).sum(),
        tokens: trees.iter().map(Tree::len).sum(),
        unshared_tokens: docs
            .iter()
            .flatten()
            .map(|(c, k)| (c.len() + k.len() - 1).min(max_len))
            .sum(),
    };
    let packs = pack(&trees);
    let batches: Vec<&[Pack]> = packs.chunks(ROWS).collect();
    let mut out: Vec<Vec<f64>> = trees.iter().map(|t| vec![0.0; t.targets.len()]).collect();
    let batch_bytes = ROWS * PACK_TOKENS * model.config.hidden_size * model.dtype.size_in_bytes();
    let group = (GROUP_BYTES / batch_bytes.max(1)).max(1);
    let home = model.activations_home();
    let (mut req_done, mut tok_done) = (0usize, 0usize);
    for g in batches.chunks(group) {
        let mut inputs = Vec::with_capacity(g.len());
        let mut xs = Vec::with_capacity(g.len());
        for packs in g {
            let (ids, packing) = batch_inputs(&trees, packs, model.dtype, &model.device)?;
            xs.push(model.embed(&ids)?.to_device(&home)?);
            inputs.push(packing);
        }
        // Progress inside a group: its share of requests and tokens by blocks done.
        let (g_req, g_tok) = g.iter().flat_map(|b| b.iter()).fold((0, 0), |(r, t), p| {
            let reqs: usize = p.docs.iter().map(|&(d, _)| trees[d].targets.len()).sum();
            (r + reqs, t + p.len)
        });
        let n = model.blocks.len();
        for b in 0..n {
            let blk = model.block(b)?;
            for (x, packing) in xs.iter_mut().zip(&inputs) {
                let y = model.forward_block_packed(&blk, &x.to_device(&model.device)?, packing)?;
                *x = y.to_device(&home)?;
            }
            let part = |v: usize| v * (b + 1) / (n + 1);
            crate::error::check(progress(
                req_done + part(g_req),
                work.requests,
                tok_done + part(g_tok),
            ))?;
        }
        for (packs, x) in g.iter().zip(&xs) {
            score_batch(model, &trees, packs, x, &mut out)?;
            for p in packs.iter() {
                req_done += p
                    .docs
                    .iter()
                    .map(|&(d, _)| trees[d].targets.len())
                    .sum::<usize>();
                tok_done += p.len;
            }
        }
        crate::error::check(progress(req_done, work.requests, tok_done))?;
    }
    Ok((out, work))
}

/// Sum the log-probabilities of every target in a batch from its final hidden states `x`
/// `[b, t, hidden]`.
fn score_batch(
    model: &Llama,
    trees: &[Tree],
    packs: &[Pack],
    x: &Tensor,
    out: &mut [Vec<f64>],
) -> Result<()> {
    let (b, t, hidden) = x.dims3()?;
    // (example, request, row in the flattened batch, token)
    let mut targets: Vec<(usize, usize, u32, u32)> = Vec::new();
    for (r, p) in packs.iter().enumerate() {
        for &(d, off) in &p.docs {
            for (q, ts) in trees[d].targets.iter().enumerate() {
                for &(node, tok) in ts {
                    targets.push((d, q, (r * t + off + node) as u32, tok));
                }
            }
        }
    }
    let x = x.to_device(&model.device)?.reshape((b * t, hidden))?;
    for chunk in targets.chunks(HEAD_ROWS) {
        let rows: Vec<u32> = chunk.iter().map(|t| t.2).collect();
        let toks: Vec<u32> = chunk.iter().map(|t| t.3).collect();
        let n = rows.len();
        let h = x
            .index_select(&Tensor::from_vec(rows, n, &model.device)?, 0)?
            .unsqueeze(0)?;
        let lsm = log_softmax_f32(&model.head(&h)?)?.squeeze(0)?;
        let picked = lsm
            .gather(&Tensor::from_vec(toks, (n, 1), &model.device)?, D::Minus1)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        for (t, lp) in chunk.iter().zip(picked) {
            out[t.0][t.1] += lp as f64;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_shares_the_context_and_drops_last_inputs() {
        let doc: EncodedDoc = vec![(vec![1, 2, 3], vec![4, 5]), (vec![1, 2, 3], vec![6])];
        let t = Tree::build(&doc, 100).unwrap();
        // Nodes: 1 2 3 4 (5 and 6 are only targets).
        assert_eq!(t.tokens, vec![1, 2, 3, 4]);
        assert_eq!(t.depth, vec![0, 1, 2, 3]);
        assert_eq!(t.parent, vec![None, Some(0), Some(1), Some(2)]);
        assert_eq!(t.targets, vec![vec![(2, 4), (3, 5)], vec![(2, 6)]]);
    }

    #[test]
    fn tree_left_truncates_like_the_harness() {
        // max_len 3: the model sees (ctx+cont)[-4:][:-1].
        let doc: EncodedDoc = vec![(vec![1, 2, 3, 4], vec![5, 6])];
        let t = Tree::build(&doc, 3).unwrap();
        assert_eq!(t.tokens, vec![3, 4, 5]);
        assert_eq!(t.depth, vec![0, 1, 2]);
        assert_eq!(t.targets, vec![vec![(1, 5), (2, 6)]]);
        assert!(Tree::build(&vec![(vec![1], vec![2, 3, 4, 5])], 3).is_err());
    }

    #[test]
    fn packing_is_first_fit_and_keeps_every_tree() {
        let tree = |n: usize| Tree {
            tokens: vec![0; n],
            parent: vec![None; n],
            depth: vec![0; n],
            targets: vec![],
        };
        // PACK_TOKENS is 256.
        let trees = vec![tree(150), tree(150), tree(100), tree(350), tree(5)];
        let packs = pack(&trees);
        let mut seen: Vec<usize> = packs
            .iter()
            .flat_map(|p| p.docs.iter().map(|d| d.0))
            .collect();
        seen.sort();
        assert_eq!(seen, vec![0, 1, 2, 3, 4]);
        assert_eq!(packs[0].docs, vec![(3, 0)]);
        assert_eq!(packs[1].docs, vec![(0, 0), (2, 150), (4, 250)]);
        assert_eq!(packs[2].docs, vec![(1, 0)]);
        assert!(packs.iter().skip(1).all(|p| p.len <= PACK_TOKENS));
    }

    #[test]
    fn tree_mask_sees_ancestors_only() {
        let doc: EncodedDoc = vec![(vec![1, 2], vec![3, 9]), (vec![1, 2], vec![4, 9])];
        let trees = vec![
            Tree::build(&doc, 100).unwrap(),
            Tree::build(&doc, 100).unwrap(),
        ];
        let p = Pack {
            docs: vec![(0, 0), (1, 4)],
            len: 8,
        };
        let short = Pack {
            docs: vec![(0, 0)],
            len: 4,
        };
        let (ids, packing) = batch_inputs(&trees, &[p, short], DType::F32, &Device::Cpu).unwrap();
        let ids = ids.to_vec2::<u32>().unwrap();
        assert_eq!(ids[0], vec![1, 2, 3, 4, 1, 2, 3, 4]);
        assert_eq!(ids[1][..4], [1, 2, 3, 4]);
        assert_eq!(
            packing.positions.to_vec2::<u32>().unwrap()[0],
            vec![0, 1, 2, 2, 0, 1, 2, 2]
        );
        let m = packing.mask.squeeze(1).unwrap().to_vec3::<f32>().unwrap();
        let sees =
            |r: usize, i: usize| -> Vec<usize> { (0..8).filter(|&j| m[r][i][j] == 0.0).collect() };
        assert_eq!(sees(0, 2), vec![0, 1, 2]);
        assert_eq!(sees(0, 3), vec![0, 1, 3]);
        assert_eq!(sees(0, 7), vec![4, 5, 7]);
        // Padding of the shorter row sees itself only.
        assert_eq!(sees(1, 3), vec![0, 1, 3]);
        assert_eq!(sees(1, 6), vec![6]);
    }
}
