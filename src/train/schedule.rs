//! When to lower the learning rate and when to stop: a step decay (lr x F every E epochs) and
//! early stopping on validation loss (`--patience N`).
//!
//! Both depend only on the epoch number and on what the checkpoint records (the best
//! validation loss and its epoch), so a resumed run decides exactly as a continuous one.

use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};

/// A field that a file lacks reads as the default: constant rate, no early stopping.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Schedule {
    /// Stop once validation loss has not improved for this many epochs.
    pub patience: Option<u64>,
    /// Learning-rate factor applied every `lr_decay_every` epochs (1 = constant).
    pub lr_decay: f32,
    /// Epochs between decays (0 = never).
    pub lr_decay_every: u64,
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule { patience: None, lr_decay: 1.0, lr_decay_every: 0 }
    }
}

impl Schedule {
    pub fn check(&self) -> Result<()> {
        ensure!(self.lr_decay.is_finite() && self.lr_decay > 0.0, "--lr-decay must be > 0, got {}", self.lr_decay);
        ensure!(self.patience != Some(0), "--patience must be at least 1");
        Ok(())
    }

    /// Learning rate of 0-based `epoch`: base x decay^(epoch / every).
    pub fn lr(&self, base: f32, epoch: u64) -> f32 {
        if self.lr_decay_every == 0 || self.lr_decay == 1.0 {
            return base;
        }
        base * self.lr_decay.powi((epoch / self.lr_decay_every) as i32)
    }

    /// True when `completed` epochs are done and the best validation loss is from
    /// `best_loss_epoch`, `patience` or more epochs ago.
    pub fn patience_exhausted(&self, best_loss_epoch: u64, completed: u64) -> bool {
        self.patience.is_some_and(|p| completed > 0 && completed.saturating_sub(best_loss_epoch) >= p)
    }

    /// e.g. "lr x0.5 every 10 epochs, patience 8", or "constant lr".
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.lr_decay_every > 0 && self.lr_decay != 1.0 {
            parts.push(format!("lr x{} every {} epochs", self.lr_decay, self.lr_decay_every));
        } else {
            parts.push("constant lr".to_string());
        }
        if let Some(p) = self.patience {
            parts.push(format!("patience {p}"));
        }
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_decay() {
        let s = Schedule { lr_decay: 0.5, lr_decay_every: 10, ..Default::default() };
        assert_eq!(s.lr(1e-3, 0), 1e-3);
        assert_eq!(s.lr(1e-3, 9), 1e-3);
        assert_eq!(s.lr(1e-3, 10), 5e-4);
        assert_eq!(s.lr(1e-3, 25), 2.5e-4);
        assert_eq!(Schedule::default().lr(1e-3, 100), 1e-3);
        assert_eq!(s.describe(), "lr x0.5 every 10 epochs");
    }

    #[test]
    fn patience_counts_epochs_since_the_best_loss() {
        let s = Schedule { patience: Some(3), ..Default::default() };
        assert!(!s.patience_exhausted(0, 0));
        assert!(!s.patience_exhausted(5, 7));
        assert!(s.patience_exhausted(5, 8));
        assert!(!Schedule::default().patience_exhausted(0, 100));
        assert_eq!(s.describe(), "constant lr, patience 3");
        assert!(Schedule { patience: Some(0), ..Default::default() }.check().is_err());
    }
}
