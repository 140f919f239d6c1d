"""Statistics, Ray-free and torch-free: pure functions of numbers and arrays.

* ``paired``: comparing trained models over seeds and test images (t-tests, the image bootstrap, McNemar, Holm,
  verdicts, minimum detectable effects); its names are re-exported here (``from ablations import stats as S``).
* ``sequential``: the anytime-valid procedures of ``--until-decided`` (mixture e-process, repeated t-tests), the
  comparisons a plan holds, and their settings (``Settings``).
* ``simulation``: their error rates and seed counts under simulated studies (``python -m ablations.bench --only
  sequential``).
"""
from ablations.stats.paired import (  # noqa: F401
                     ALPHA,
                     INCONCLUSIVE,
                     MIN_SEEDS,
                     NEEDS_SEEDS,
                     UNTESTED,
                     Bootstrap,
                     both_sources,
                     class_group_bootstrap,
                     class_group_values,
                     family_verdicts,
                     finite,
                     fmt_p,
                     fmt_pm,
                     holm,
                     mcnemar_exact,
                     mean_ci,
                     min_detectable_effect,
                     paired_bootstrap,
                     paired_diff_ci,
                     pooled_sd,
                     seed_image_test,
                     t_interval,
                     t_p,
                     t_test,
                     t_test_power,
                     tost,
                     verdict,
)
