"""Errors that training raises (a leaf module: no imports, so every module can use them)."""


class TrainingError(ValueError):
  """A bad config value, an unusable workdir or a checkpoint that cannot be resumed."""


class DivergedError(FloatingPointError):
  """Training failed in a way the automatic rollbacks did not cure; training stopped."""


class NonFiniteLossError(DivergedError):
  """The loss or the gradient stayed NaN or infinite through config.max_rollbacks rollbacks."""


class CollapseError(DivergedError):
  """Validation PSNR kept collapsing through config.max_rollbacks rollbacks."""
