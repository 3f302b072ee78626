"""hpcm-tune: hyperparameter search for HPCM (ICCV 2025) trained with a hierarchical balanced R-D optimizer.

Layers, from the inside out (Ray only at the edge):
  models/      HPCM (g_a, g_s, h_a, h_s, generalized-Gaussian entropy model, 11-step hierarchical context)
  objectives   standard / balanced / hierarchical R-D losses, returned as named task losses
  weighting/   standard, FAMO (2 tasks), hierarchical FAMO (5 tasks)
  schedules    gamma schedules (fixed, linear, cosine, adaptive, hierarchical)
  engine       one training run (data, eval, codec, checkpoints); never imports Ray
  sweep/       the Ray Tune launcher behind tune.py
  analysis/    tables, BD-rate, RD curves behind analyze.py
"""

__version__ = "0.1.0"
