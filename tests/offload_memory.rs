//! `--offload` keeps memory bounded: a random-weight model with Llama-2-7B's layer shape
//! (hidden 4096, FFN 11008, 32 heads) but three blocks calibrates with its block weights left in
//! the memory-mapped safetensors file, and the process's own peak RSS (`VmHWM`) stays under
//! weights file + the preflight estimate (embeddings, one block, activations, workspace) + a
//! stated slack. The same model loaded resident is then measured above that bound, so the bound
//! tells the two apart.
//!
//! In its own test binary so that no other test's allocations share the process.

use candle_core::{DType, Device};
use dlpx::model::{self, ModelSource, Placement};
use dlpx::prune::mask::Metric;
use dlpx::prune::memory::Estimate;
use dlpx::prune::stats::calibrate;

mod common;

use common::write_shaped_folder;

const BLOCKS: usize = 3;
/// Room for the allocator's slack, the tokenizer, rope tables and the test harness.
const SLACK: u64 = 256 << 20;

/// `VmRSS` / `VmHWM` of this process in bytes.
fn status_bytes(key: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with(key)).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

#[test]
fn offloaded_7b_shaped_blocks_calibrate_under_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let (folder, file_bytes, vocab) = write_shaped_folder(dir.path(), BLOCKS);

    let (n, t) = (4usize, 256usize);
    let windows: Vec<Vec<u32>> = (0..n)
        .map(|w| (0..t).map(|i| ((w * 31 + i * 7) % vocab) as u32).collect())
        .collect();
    let before = status_bytes("VmRSS:");
    let m = model::load_placed(
        &ModelSource::Folder(folder.clone()),
        &Device::Cpu,
        DType::F32,
        Placement::Offload,
        &mut |_| {},
    )
    .unwrap();
    let est = Estimate::new(&m.llama.config, 4, n, t, Metric::Wanda, true);
    let t0 = std::time::Instant::now();
    let cal = calibrate(&m.llama, &windows, 5.0, false, &mut |p| {
        eprintln!("block {} at {:.1}s", p.block, t0.elapsed().as_secs_f64());
        true
    })
    .unwrap();
    let peak = status_bytes("VmHWM:");
    drop(m);

    // The statistics are real: every block has positive scores over all its weights and a
    // finite outlier ratio; the spectra were not asked for, so none were computed.
    assert_eq!(cal.blocks.len(), BLOCKS);
    assert_eq!(cal.owl.len(), BLOCKS);
    assert!(cal.esd.is_empty(), "spectra computed without being asked");
    for (b, owl) in cal.blocks.iter().zip(&cal.owl) {
        assert!(b.median > 0.0 && b.mean >= b.median as f64, "{b:?}");
        assert_eq!(b.numel, 202_375_168, "{b:?}");
        assert!(owl.is_finite() && (0.0..=100.0).contains(owl), "{owl}");
    }
    let one_block = 202_375_168u64 * 4;
    assert!(est.weights >= one_block && est.weights < one_block + (16 << 20));
    let bound = before + file_bytes + est.total + SLACK;
    let mib = |b: u64| b >> 20;
    eprintln!(
        "peak RSS {} MiB = start {} + {} MiB; bound {} MiB (file {} + estimate {} + slack {})",
        mib(peak),
        mib(before),
        mib(peak - before),
        mib(bound),
        mib(file_bytes),
        mib(est.total),
        mib(SLACK)
    );
    assert!(
        peak <= bound,
        "peak RSS {} MiB above the bound {} MiB",
        mib(peak),
        mib(bound)
    );

    // Resident: all three blocks in memory (and the mapped file while loading) go past it.
    let m = model::load_placed(
        &ModelSource::Folder(folder),
        &Device::Cpu,
        DType::F32,
        Placement::Resident,
        &mut |_| {},
    )
    .unwrap();
    let again = calibrate(&m.llama, &windows, 5.0, false, &mut |_| true).unwrap();
    assert_eq!(again.blocks, cal.blocks, "offload changes no statistic");
    let resident = status_bytes("VmHWM:");
    eprintln!("resident peak RSS {} MiB", mib(resident));
    assert!(
        resident > bound,
        "the bound does not tell resident from offloaded"
    );
}
