//! Per-layer exit statistics of a generation run (the paper's Figure 2).

/// Fraction of generated tokens exiting at each layer, accumulated over a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExitStats {
    /// `counts[l - 1]` = tokens that exited at layer l.
    pub counts: Vec<u64>,
}

impl ExitStats {
    /// Empty statistics for `num_layers` layers.
    pub fn new(num_layers: usize) -> Self {
        Self {
            counts: vec![0; num_layers],
        }
    }

    /// Adds one generation's exit layers.
    pub fn add(&mut self, exit_layers: &[u32]) {
        for &l in exit_layers {
            let i = (l as usize).saturating_sub(1);
            if i >= self.counts.len() {
                self.counts.resize(i + 1, 0);
            }
            self.counts[i] += 1;
        }
    }

    /// Total tokens counted.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Fraction per layer (sums to 1 when any token was counted).
    pub fn fractions(&self) -> Vec<f64> {
        let t = self.total().max(1) as f64;
        self.counts.iter().map(|&c| c as f64 / t).collect()
    }

    /// Mean exit layer.
    pub fn mean_layer(&self) -> f64 {
        let t = self.total().max(1) as f64;
        self.counts
            .iter()
            .enumerate()
            .map(|(i, &c)| (i + 1) as f64 * c as f64)
            .sum::<f64>()
            / t
    }
}

impl std::fmt::Display for ExitStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .fractions()
            .iter()
            .enumerate()
            .map(|(i, p)| format!("L{}: {:.1}%", i + 1, 100.0 * p))
            .collect();
        write!(
            f,
            "{} tokens, mean exit layer {:.2} ({})",
            self.total(),
            self.mean_layer(),
            parts.join(", ")
        )
    }
}
