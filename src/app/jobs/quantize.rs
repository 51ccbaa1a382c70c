//! Key Q: quantize the applied model in q8_0, q4_k and q4_0 and measure each (the formats
//! llama.cpp runs; README, "Quantization").

use color_eyre::eyre::Result;

use super::{BackgroundJob, Worker};
use crate::app::{Job, Msg, Stage, State, Tone};
use crate::model::quant::QuantFormat;

/// Quantize applied entry `id`, the pruned model the worker holds.
pub struct Quantize {
    pub id: usize,
}

impl BackgroundJob for Quantize {
    const STAGE: Stage = Stage::QuantizedEval;

    fn request(s: &mut State) -> Option<Self> {
        let Some(id) = s.held_entry() else {
            s.say("apply first (a): Q quantizes the applied model", Tone::Info);
            return None;
        };
        s.say(
            format!("#{id}: quantizing q8_0, q4_k, q4_0 and measuring each… (Esc cancels)"),
            Tone::Info,
        );
        Some(Quantize { id })
    }

    fn into_job(self) -> Job {
        Job::Quantize { id: self.id }
    }

    fn run(&self, w: &mut Worker<'_>) -> Result<()> {
        let id = self.id;
        let m = w.held.model(id)?;
        for format in [QuantFormat::Q8_0, QuantFormat::Q4K, QuantFormat::Q4_0] {
            let (q, _) = w.x.quantize(&m.llama, format, w.obs)?;
            if let Some(p) = w.x.perplexity(&q, Stage::QuantizedEval, w.obs)? {
                (w.send)(Msg::Quantized {
                    id,
                    format,
                    ppl: p.ppl,
                });
            }
        }
        Ok(())
    }

    fn on_reply(s: &mut State, m: Msg) {
        let Msg::Quantized { id, format, ppl } = m else {
            return;
        };
        if let Some(h) = s.history.iter_mut().find(|h| h.id == id) {
            h.quantized.retain(|q| q.0 != format);
            h.quantized.push((format, ppl));
            let pruned = h
                .ppl
                .map(|p| format!(" ({:+.1} % vs pruned)", 100.0 * (ppl / p - 1.0)));
            s.say(
                format!(
                    "#{id} + {}: perplexity {ppl:.2}{}",
                    format.name(),
                    pruned.unwrap_or_default()
                ),
                Tone::Info,
            );
        }
    }
}
