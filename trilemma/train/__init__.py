"""Training: shared pieces (:mod:`.common`), the single-optimiser loop (:mod:`.loop`), and one
trainer per model family (:mod:`.diffusion`, …)."""
