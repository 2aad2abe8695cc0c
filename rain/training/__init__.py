"""Training RAIN: prepared clip datasets, the two training stages, consistency distillation, evaluation."""
