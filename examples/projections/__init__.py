"""Example custom projections (run one with `dagnats projection run MODULE:CLASS`)."""
