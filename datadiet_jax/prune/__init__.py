"""Data pruning: validate scores, pick the examples to keep, and add seeded label noise.

Every selector returns the kept dataset ids as a sorted i32 array; ties are broken by
example index, lower index first (see `datadiet_jax.prune.select`).
"""

from datadiet_jax.prune.errors import SelectionError
from datadiet_jax.prune.d2 import keep_d2
from datadiet_jax.prune.label_noise import (LabelNoiseRecord, corrupt_labels,
                                            corrupt_labels_with_record, load_label_noise_record,
                                            noisy_detection_precision, noisy_detection_recall,
                                            save_label_noise_record)
from datadiet_jax.prune.moderate import keep_moderate
from datadiet_jax.prune.pool import entropy_from_probs, random_from_pool, select_from_pool
from datadiet_jax.prune.select import (SELECTORS, ccs_budgets, ccs_strata,
                                       class_balanced_quotas, keep_ccs, keep_class_balanced,
                                       keep_easiest, keep_hardest, keep_max_abs, keep_min_abs,
                                       keep_offset_window, keep_random, original_random_seed,
                                       rank_ascending, rank_descending, select)
from datadiet_jax.prune.validate import (resolve_size, validate_keep_count, validate_labels,
                                         validate_scores, validate_seed)

__all__ = [
    "SELECTORS", "LabelNoiseRecord", "SelectionError", "ccs_budgets", "ccs_strata",
    "class_balanced_quotas", "corrupt_labels", "corrupt_labels_with_record",
    "entropy_from_probs", "keep_ccs", "keep_class_balanced", "keep_d2", "keep_moderate", "keep_easiest", "keep_hardest",
    "keep_max_abs", "keep_min_abs", "keep_offset_window", "keep_random",
    "load_label_noise_record", "noisy_detection_precision", "noisy_detection_recall",
    "original_random_seed", "random_from_pool", "rank_ascending", "rank_descending",
    "resolve_size", "save_label_noise_record", "select", "select_from_pool",
    "validate_keep_count", "validate_labels", "validate_scores", "validate_seed",
]
