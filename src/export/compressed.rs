//! compressed-tensors sparse checkpoints: `sparse-bitmask` (unstructured) and
//! `sparse-24-bitmask` (2:4), the two sparse formats of compressed-tensors up to 0.14 (they were
//! removed in 0.15; transformers 4.x with compressed-tensors 0.14 decompresses them on load).
//!
//! Per compressed weight `<module>.weight`, with `p = <module>`:
//! - sparse-bitmask: `p.shape` i64 `[2]` = `[rows, cols]`; `p.compressed` (weight dtype) the
//!   nonzeros in row-major order (`-0.0` counts as zero); `p.bitmask` u8 `[rows, ⌈cols/8⌉]`, bit
//!   `j` (least significant first) of byte `k` of row `r` = column `8k + j` is nonzero (numpy's
//!   `packbits(axis=-1, bitorder="little")`); `p.row_offsets` i64 `[rows]`, where each row starts.
//! - sparse-24-bitmask: `p.shape` i64 `[2, 1]`; `p.compressed` `[rows, cols/2]`, the two values
//!   kept of every group of four; `p.bitmask` as above. A group with fewer than two nonzeros
//!   flags zeros the way compressed-tensors' top-2 does (see [`flags_24`]).
//!
//! Checked byte for byte against files compressed-tensors 0.14.0.1 wrote (tests/fixtures).

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use color_eyre::eyre::{bail, eyre, Result};

/// The compressed-tensors format of a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    SparseBitmask,
    Sparse24Bitmask,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::SparseBitmask => "sparse-bitmask",
            Format::Sparse24Bitmask => "sparse-24-bitmask",
        }
    }

    pub fn structure(self) -> &'static str {
        match self {
            Format::SparseBitmask => "unstructured",
            Format::Sparse24Bitmask => "2:4",
        }
    }
}

fn rows_cols(w: &Tensor) -> Result<(usize, usize)> {
    Ok(w.dims2()?)
}

/// numpy's `packbits(axis=-1, bitorder="little")` of a `rows × cols` 0/1 mask.
fn pack_rows(mask: &[bool], rows: usize, cols: usize) -> Vec<u8> {
    let per_row = cols.div_ceil(8);
    let mut out = vec![0u8; rows * per_row];
    for r in 0..rows {
        for c in 0..cols {
            if mask[r * cols + c] {
                out[r * per_row + c / 8] |= 1 << (c % 8);
            }
        }
    }
    out
}

fn unpack_rows(packed: &[u8], rows: usize, cols: usize) -> Vec<bool> {
    let per_row = cols.div_ceil(8);
    (0..rows * cols)
        .map(|i| {
            let (r, c) = (i / cols, i % cols);
            packed[r * per_row + c / 8] >> (c % 8) & 1 == 1
        })
        .collect()
}

/// Which entries of a 2-D weight are nonzero (`-0.0` is zero).
fn nonzero(w: &Tensor) -> Result<Vec<bool>> {
    let m = w.ne(0.0)?.flatten_all()?.to_vec1::<u8>()?;
    Ok(m.into_iter().map(|x| x != 0).collect())
}

/// The values of `w` at `mask`, in row-major order, in `w`'s dtype.
fn select(w: &Tensor, mask: &[bool]) -> Result<Tensor> {
    let idx: Vec<u32> = mask
        .iter()
        .enumerate()
        .filter(|(_, &k)| k)
        .map(|(i, _)| i as u32)
        .collect();
    let n = idx.len();
    let idx = Tensor::from_vec(idx, n, w.device())?;
    Ok(w.flatten_all()?.index_select(&idx, 0)?)
}

fn i64s(v: Vec<i64>, shape: &[usize]) -> Result<Tensor> {
    Ok(Tensor::from_vec(v, shape, &Device::Cpu)?)
}

/// The sparse-bitmask tensors of weight `w` of module `p`.
pub fn compress_bitmask(p: &str, w: &Tensor) -> Result<Vec<(String, Tensor)>> {
    let w = w.to_device(&Device::Cpu)?;
    let (rows, cols) = rows_cols(&w)?;
    let mask = nonzero(&w)?;
    let mut offsets = Vec::with_capacity(rows);
    let mut at = 0i64;
    for r in 0..rows {
        offsets.push(at);
        at += mask[r * cols..(r + 1) * cols]
            .iter()
            .filter(|&&k| k)
            .count() as i64;
    }
    let packed = pack_rows(&mask, rows, cols);
    Ok(vec![
        (
            format!("{p}.shape"),
            i64s(vec![rows as i64, cols as i64], &[2])?,
        ),
        (format!("{p}.compressed"), select(&w, &mask)?),
        (
            format!("{p}.bitmask"),
            Tensor::from_vec(packed, (rows, cols.div_ceil(8)), &Device::Cpu)?,
        ),
        (format!("{p}.row_offsets"), i64s(offsets, &[rows])?),
    ])
}

/// The two positions of a group of four that compressed-tensors keeps: the nonzeros, and for a
/// group with fewer than two the zeros its top-2 picks (measured with torch 2.10 on the CPU:
/// none → 2, 3; only 0 → 0, 2; only 1 → 1, 3; only 2 or only 3 → 2, 3). `None`: more than two
/// nonzeros, not 2:4.
pub fn flags_24(nz: [bool; 4]) -> Option<[usize; 2]> {
    let on: Vec<usize> = (0..4).filter(|&i| nz[i]).collect();
    match on.as_slice() {
        [a, b] => Some([*a, *b]),
        [] => Some([2, 3]),
        [0] => Some([0, 2]),
        [1] => Some([1, 3]),
        [2] | [3] => Some([2, 3]),
        _ => None,
    }
}

/// The sparse-24-bitmask tensors of weight `w` of module `p`; `None` when `w` is not 2:4 (a
/// group with more than two nonzeros, or columns not a multiple of 4).
pub fn compress_24(p: &str, w: &Tensor) -> Result<Option<Vec<(String, Tensor)>>> {
    let w = w.to_device(&Device::Cpu)?;
    let (rows, cols) = rows_cols(&w)?;
    if cols % 4 != 0 {
        return Ok(None);
    }
    let nz = nonzero(&w)?;
    let mut mask = vec![false; nz.len()];
    for g in 0..nz.len() / 4 {
        let Some(f) = flags_24([nz[4 * g], nz[4 * g + 1], nz[4 * g + 2], nz[4 * g + 3]]) else {
            return Ok(None);
        };
        for i in f {
            mask[4 * g + i] = true;
        }
    }
    let values = select(&w, &mask)?.reshape((rows, cols / 2))?;
    let packed = pack_rows(&mask, rows, cols);
    Ok(Some(vec![
        (
            format!("{p}.shape"),
            i64s(vec![rows as i64, cols as i64], &[2, 1])?,
        ),
        (format!("{p}.compressed"), values),
        (
            format!("{p}.bitmask"),
            Tensor::from_vec(packed, (rows, cols.div_ceil(8)), &Device::Cpu)?,
        ),
    ]))
}

/// Dense weights from a checkpoint's tensors: every `p.compressed` (with its `p.shape` and
/// `p.bitmask`) becomes `p.weight`; other tensors pass through.
pub fn decompress(mut t: HashMap<String, Tensor>) -> Result<HashMap<String, Tensor>> {
    let prefixes: Vec<String> = t
        .keys()
        .filter_map(|k| k.strip_suffix(".compressed").map(String::from))
        .collect();
    for p in prefixes {
        let take = |t: &mut HashMap<String, Tensor>, s: &str| {
            t.remove(&format!("{p}.{s}"))
                .ok_or_else(|| eyre!("compressed weight `{p}` has no `{p}.{s}`"))
        };
        let values = take(&mut t, "compressed")?;
        let shape = take(&mut t, "shape")?.flatten_all()?.to_vec1::<i64>()?;
        let bitmask = take(&mut t, "bitmask")?.flatten_all()?.to_vec1::<u8>()?;
        t.remove(&format!("{p}.row_offsets"));
        let [rows, cols] = shape[..] else {
            bail!("`{p}.shape` is {shape:?}, not [rows, cols]");
        };
        let (rows, cols) = (usize::try_from(rows)?, usize::try_from(cols)?);
        if bitmask.len() != rows * cols.div_ceil(8) {
            bail!(
                "`{p}.bitmask` has {} bytes for a {rows}×{cols} weight",
                bitmask.len()
            );
        }
        let mask = unpack_rows(&bitmask, rows, cols);
        let values = values.flatten_all()?;
        if values.elem_count() != mask.iter().filter(|&&k| k).count() {
            bail!("`{p}.compressed` does not match the number of set bits of `{p}.bitmask`");
        }
        // Scatter: position i takes the next value where the mask is set, else zero.
        let mut src = Vec::with_capacity(mask.len());
        let mut next = 0u32;
        let mut keep = Vec::with_capacity(mask.len());
        for &k in &mask {
            src.push(if k { next } else { 0 });
            keep.push(u8::from(k));
            next += u32::from(k);
        }
        let dtype = values.dtype();
        let src = Tensor::from_vec(src, mask.len(), &Device::Cpu)?;
        let keep = Tensor::from_vec(keep, mask.len(), &Device::Cpu)?;
        let gathered = if values.elem_count() == 0 {
            Tensor::zeros(mask.len(), dtype, &Device::Cpu)?
        } else {
            values.index_select(&src, 0)?
        };
        let zeros = Tensor::zeros(mask.len(), dtype, &Device::Cpu)?;
        let dense = keep.where_cond(&gathered, &zeros)?.reshape((rows, cols))?;
        t.insert(format!("{p}.weight"), dense);
    }
    Ok(t)
}

/// Bytes of a tensor's data.
pub fn data_bytes(t: &Tensor) -> usize {
    t.elem_count() * t.dtype().size_in_bytes()
}

/// A dtype compressed-tensors writes values in (its `compressed` tensors keep the weight dtype).
pub fn check_dtype(d: DType) -> Result<()> {
    match d {
        DType::F32 | DType::BF16 | DType::F16 => Ok(()),
        other => bail!("weights in {other:?} cannot be written as compressed-tensors"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_is_little_endian_per_row() {
        // Row 0 of compressed-tensors' own example: columns 0,1,4,7,9,13,14,16,17,19 set.
        let bits = [1, 1, 0, 0, 1, 0, 0, 1, 0, 1, 0, 0, 0, 1, 1, 0, 1, 1, 0, 1];
        let mask: Vec<bool> = bits.iter().map(|&b| b == 1).collect();
        assert_eq!(pack_rows(&mask, 1, 20), vec![0x93, 0x62, 0x0b]);
        assert_eq!(unpack_rows(&[0x93, 0x62, 0x0b], 1, 20), mask);
    }

    #[test]
    fn round_trip_keeps_every_value() {
        let v: Vec<f32> = (0..48)
            .map(|i| if i % 3 == 0 { 0.0 } else { i as f32 - 20.0 })
            .collect();
        let w = Tensor::from_vec(v, (4, 12), &Device::Cpu).unwrap();
        let t: HashMap<String, Tensor> = compress_bitmask("m", &w).unwrap().into_iter().collect();
        let back = decompress(t).unwrap();
        assert_eq!(
            back["m.weight"].to_vec2::<f32>().unwrap(),
            w.to_vec2::<f32>().unwrap()
        );
        // Not 2:4: three nonzeros in a group of four.
        assert!(compress_24("m", &w).unwrap().is_none());
    }
}
